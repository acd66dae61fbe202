//! COM1: a 16550A-compatible 8250 UART from vm-superio at port 0x3f8, IRQ 4,
//! as the `serial.com1` device.
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
use super::{open_record, record, BusAction, Device, DeviceError, DeviceRecord};

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

/// COM1 as a [`Device`]: the UART, its interrupt line and its console.
pub struct SerialDevice {
    id: String,
    uart: Uart,
    irq: EventFd,
    sink: ConsoleSink,
}

/// The record layout version of [`UartState`].
const RECORD_VERSION: u32 = 1;

impl SerialDevice {
    /// A fresh UART raising `irq` and writing to `sink`.
    pub fn new(id: &str, irq: EventFd, sink: ConsoleSink) -> Result<SerialDevice, DeviceError> {
        let trigger = IrqFdTrigger(irq.try_clone().map_err(|e| DeviceError::Setup {
            id: id.to_owned(),
            msg: format!("eventfd: {e}"),
        })?);
        Ok(SerialDevice {
            id: id.to_owned(),
            uart: Serial::new(trigger, sink.clone()),
            irq,
            sink,
        })
    }
}

impl Device for SerialDevice {
    fn id(&self) -> &str {
        &self.id
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.uart.read(offset.wrapping_add(i as u64) as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        for (i, &b) in data.iter().enumerate() {
            if let Err(e) = self.uart.write(offset.wrapping_add(i as u64) as u8, b) {
                tracing::warn!("{}: write failed: {e:?}", self.id);
            }
        }
        BusAction::Continue
    }

    fn save(&self) -> DeviceRecord {
        record(
            &self.id,
            RECORD_VERSION,
            &UartState::from(self.uart.state()),
        )
    }

    fn restore(&mut self, rec: &DeviceRecord) -> Result<(), DeviceError> {
        let st: UartState = open_record(&self.id, RECORD_VERSION, rec)?;
        let err = |msg: String| DeviceError::BadRecord {
            id: self.id.clone(),
            msg,
        };
        let irq = self
            .irq
            .try_clone()
            .map_err(|e| err(format!("eventfd: {e}")))?;
        self.uart = Serial::from_state(
            &(&st).into(),
            IrqFdTrigger(irq),
            vm_superio::serial::NoEvents,
            self.sink.clone(),
        )
        .map_err(|e| err(format!("{e:?}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::conformance::device_conformance_tests;
    use crate::devices::test_util::SharedBuf as Buf;

    fn uart(buf: &Buf) -> SerialDevice {
        let efd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        SerialDevice::new(
            "serial.com1",
            efd,
            ConsoleSink::new(Box::new(buf.clone()), 0),
        )
        .unwrap()
    }

    device_conformance_tests!(
        conformance,
        uart(&Buf::default()),
        |d: &mut SerialDevice| {
            d.write(3, &[0x80]); // DLAB on
            d.write(0, &[0x0c]); // divisor low
            d.write(7, &[0x5a]); // scratch
        }
    );

    #[test]
    fn dlab_state_survives_save_and_restore() {
        let buf = Buf::default();
        let mut u = uart(&buf);
        u.write(3, &[0x80]); // LCR: DLAB on
        let saved = u.save();
        let mut r = uart(&buf);
        r.restore(&saved).unwrap();
        // With DLAB restored, offset 0 is the divisor latch, not THR.
        r.write(0, &[0x01]);
        assert!(
            buf.0.lock().unwrap().is_empty(),
            "divisor write leaked to the console"
        );
        r.write(3, &[0x03]); // DLAB off, 8N1
        r.write(0, b"A");
        assert_eq!(&*buf.0.lock().unwrap(), b"A");
        assert_eq!(UartState::from(r.uart.state()).baud_divisor_low, 1);
    }
}
