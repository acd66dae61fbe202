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
    /// Handles `out`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> BusAction {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                if let Some(&b) = data.first() {
                    if let Err(e) = self.uart.write((p - COM1_BASE) as u8, b) {
                        tracing::warn!("serial write failed: {e:?}");
                    }
                }
                BusAction::Continue
            }
            DEBUG_EXIT_PORT => BusAction::Exit(data.first().copied().unwrap_or(0)),
            I8042_CMD_PORT if data.first() == Some(&0xfe) => BusAction::Reset,
            _ => BusAction::Continue,
        }
    }

    /// Handles `in`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    *b = self.uart.read((p - COM1_BASE) as u8);
                }
            }
            I8042_CMD_PORT => data.fill(0), // status: nothing pending
            _ => data.fill(0xff),
        }
    }
}
