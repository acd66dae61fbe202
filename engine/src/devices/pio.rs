//! The port-I/O bus: COM1, the debug-exit port and the i8042 reset line.
//!
//! Ports the in-kernel irqchip and PIT handle (PIC 0x20/0xa0, PIT 0x40-0x43,
//! ELCR) never reach us. Unclaimed ports read as all ones and ignore writes,
//! as on a PC with nothing decoding them.

use super::serial::{Uart, COM1_BASE, COM1_LEN};

/// ISA debug-exit port: a byte written here ends the run with that status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// i8042 command port; writing 0xfe pulses the CPU reset line.
pub const I8042_CMD_PORT: u16 = 0x64;

/// What the vCPU loop must do after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusAction {
    /// Keep running.
    Continue,
    /// The guest asked to exit with this status.
    Exit(u8),
    /// The guest asked for a reset (treated as a power-off).
    Reset,
}

/// All port-I/O devices.
pub struct PioBus {
    /// COM1.
    pub uart: Uart,
}

impl PioBus {
    /// Handles `out`: `data` holds `data.len() / size` accesses of `size`
    /// bytes to the same port (`rep outs` repeats the port). A wide access
    /// to 8-bit registers is split as an ISA bus does: byte i goes to
    /// `port + i`.
    pub fn write(&mut self, port: u16, data: &[u8], size: usize) -> BusAction {
        for access in data.chunks(size.max(1)) {
            for (i, &b) in access.iter().enumerate() {
                let action = self.write_byte(port.wrapping_add(i as u16), b);
                if action != BusAction::Continue {
                    return action;
                }
            }
        }
        BusAction::Continue
    }

    fn write_byte(&mut self, port: u16, b: u8) -> BusAction {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                if let Err(e) = self.uart.write((p - COM1_BASE) as u8, b) {
                    tracing::warn!("serial write failed: {e:?}");
                }
                BusAction::Continue
            }
            DEBUG_EXIT_PORT => BusAction::Exit(b),
            I8042_CMD_PORT if b == 0xfe => BusAction::Reset,
            _ => BusAction::Continue,
        }
    }

    /// Handles `in`, with the same access layout as [`PioBus::write`].
    pub fn read(&mut self, port: u16, data: &mut [u8], size: usize) {
        for access in data.chunks_mut(size.max(1)) {
            for (i, b) in access.iter_mut().enumerate() {
                *b = self.read_byte(port.wrapping_add(i as u16));
            }
        }
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                self.uart.read((p - COM1_BASE) as u8)
            }
            I8042_CMD_PORT => 0, // status: nothing pending
            _ => 0xff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console::ConsoleSink;
    use crate::devices::serial::new_uart;
    use vmm_sys_util::eventfd::EventFd;

    use crate::devices::test_util::SharedBuf as Buf;

    fn bus(buf: &Buf) -> PioBus {
        let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        PioBus {
            uart: new_uart(efd, ConsoleSink::new(Box::new(buf.clone()), 0), None).unwrap(),
        }
    }

    #[test]
    fn rep_outsb_writes_every_byte_to_the_same_port() {
        let buf = Buf::default();
        let mut b = bus(&buf);
        assert_eq!(b.write(COM1_BASE, b"hello", 1), BusAction::Continue);
        assert_eq!(&*buf.0.lock().unwrap(), b"hello");
    }

    #[test]
    fn a_word_access_is_split_across_consecutive_ports() {
        let buf = Buf::default();
        let mut b = bus(&buf);
        // out dx, ax at COM1+3 (LCR) and COM1+4 (MCR): 0x80 sets DLAB.
        b.write(COM1_BASE + 3, &[0x80, 0x03], 2);
        let mut lcr_mcr = [0u8; 2];
        b.read(COM1_BASE + 3, &mut lcr_mcr, 2);
        assert_eq!(lcr_mcr, [0x80, 0x03]);
        // With DLAB set, THR writes go to the divisor, not the console.
        b.write(COM1_BASE, b"x", 1);
        assert!(buf.0.lock().unwrap().is_empty());
    }

    #[test]
    fn debug_exit_and_unclaimed_ports() {
        let buf = Buf::default();
        let mut b = bus(&buf);
        assert_eq!(b.write(DEBUG_EXIT_PORT, &[7], 1), BusAction::Exit(7));
        assert_eq!(b.write(I8042_CMD_PORT, &[0xfe], 1), BusAction::Reset);
        let mut d = [0u8; 4];
        b.read(0x1234, &mut d, 4);
        assert_eq!(d, [0xff; 4]);
    }
}
