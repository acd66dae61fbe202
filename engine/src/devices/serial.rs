//! COM1: a 16550A-compatible 8250 UART from vm-superio at port 0x3f8, IRQ 4.
//!
//! The interrupt line is an eventfd registered with KVM as an irqfd on GSI 4,
//! so the in-kernel PIC/IOAPIC deliver it. The register state (including LCR
//! with DLAB and the divisor) is captured in every checkpoint: a capture can
//! fall between a guest's DLAB write and its divisor write.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::ConsoleSink;
use crate::error::{EngineError, Result};

/// I/O port base of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const COM1_LEN: u16 = 8;
/// The ISA IRQ (and GSI) of COM1.
pub const COM1_GSI: u32 = 4;

/// Raises the UART interrupt through an irqfd.
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART.
pub type Uart = Serial<IrqFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>;

/// Serializable mirror of vm-superio's `SerialState`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR (bit 7 = DLAB).
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Creates the UART, fresh or from a saved state.
pub fn new_uart(irq: EventFd, sink: ConsoleSink, state: Option<&UartState>) -> Result<Uart> {
    let trigger = IrqFdTrigger(irq);
    match state {
        None => Ok(Serial::new(trigger, sink)),
        Some(s) => Serial::from_state(&s.into(), trigger, vm_superio::serial::NoEvents, sink)
            .map_err(|e| EngineError::Device {
                device: "serial",
                msg: format!("restoring state: {e:?}"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::test_util::SharedBuf as Buf;

    fn uart(buf: &Buf, state: Option<&UartState>) -> Uart {
        let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        new_uart(efd, ConsoleSink::new(Box::new(buf.clone()), 0), state).unwrap()
    }

    #[test]
    fn dlab_state_survives_save_and_restore() {
        let buf = Buf::default();
        let mut u = uart(&buf, None);
        u.write(3, 0x80).unwrap(); // LCR: DLAB on
        let saved = UartState::from(u.state());
        let mut r = uart(&buf, Some(&saved));
        // With DLAB restored, offset 0 is the divisor latch, not THR.
        r.write(0, 0x01).unwrap();
        assert!(
            buf.0.lock().unwrap().is_empty(),
            "divisor write leaked to the console"
        );
        r.write(3, 0x03).unwrap(); // DLAB off, 8N1
        r.write(0, b'A').unwrap();
        assert_eq!(&*buf.0.lock().unwrap(), b"A");
        assert_eq!(UartState::from(r.state()).baud_divisor_low, 1);
    }
}
