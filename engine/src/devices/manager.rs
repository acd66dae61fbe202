//! The device manager: buses, address and IRQ allocation, and saving and
//! restoring every device as a list of records.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, SharedDevice};
use super::console::{ConsoleSink, OutputGate};
use super::output::OutputCommit;
use super::platform::{DebugExit, DEBUG_EXIT_PORT, I8042, I8042_CMD_PORT};
pub use super::serial::COM1_GSI;
use super::serial::{SerialDevice, COM1_BASE, COM1_LEN};
use super::{BusAction, DeviceError, DeviceRecord};
use crate::error::{EngineError, Result};

/// Start of the MMIO device windows: in the 32-bit gap below 4 GiB, above
/// the largest RAM below the gap (3 GiB), below the IOAPIC and LAPIC.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one device window (a page, so a guest can map each one alone).
pub const MMIO_WINDOW: u64 = 0x1000;
/// Most MMIO device windows.
pub const MAX_MMIO_DEVICES: u64 = 64;
/// GSIs handed to MMIO devices: the IOAPIC's pins above the legacy ones in use.
const MMIO_IRQS: std::ops::RangeInclusive<u32> = 5..=23;

/// An MMIO window and the IRQ line a device was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest-physical base of the window.
    pub base: u64,
    /// Window size.
    pub len: u64,
    /// GSI of the device's interrupt.
    pub irq: u32,
}

/// Every emulated device of a VM.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    /// In creation order: the order records are saved in.
    devices: Vec<SharedDevice>,
    outputs: Vec<Arc<Mutex<dyn OutputCommit>>>,
    console: Arc<Mutex<OutputGate>>,
    mmio_slots: Vec<MmioSlot>,
    cmdline: Vec<String>,
}

fn err(e: DeviceError) -> EngineError {
    EngineError::Devices(e)
}

impl DeviceManager {
    /// The platform devices: COM1 (writing to `console`, raising `com1_irq`,
    /// which the caller registers as an irqfd on [`COM1_GSI`]), the
    /// debug-exit port and the i8042 reset line.
    pub fn new(com1_irq: EventFd, console: Box<dyn Write + Send>) -> Result<DeviceManager> {
        let sink = ConsoleSink::new(console, 0);
        let gate = sink.gate();
        let mut dm = DeviceManager {
            pio: Bus::default(),
            mmio: Bus::default(),
            devices: Vec::new(),
            outputs: vec![gate.clone() as Arc<Mutex<dyn OutputCommit>>],
            console: gate,
            mmio_slots: Vec::new(),
            cmdline: Vec::new(),
        };
        let com1 = SerialDevice::new("serial.com1", com1_irq, sink).map_err(err)?;
        dm.add_pio(COM1_BASE, COM1_LEN, Arc::new(Mutex::new(com1)))?;
        dm.add_pio(DEBUG_EXIT_PORT, 1, Arc::new(Mutex::new(DebugExit)))?;
        dm.add_pio(I8042_CMD_PORT, 1, Arc::new(Mutex::new(I8042)))?;
        Ok(dm)
    }

    fn add(&mut self, dev: SharedDevice) -> Result<()> {
        let id = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id()
            .to_owned();
        checkpoint::devices::check_id(&id)?;
        if self
            .devices
            .iter()
            .any(|d| d.lock().unwrap_or_else(|e| e.into_inner()).id() == id)
        {
            return Err(err(DeviceError::Setup {
                id,
                msg: "a device with this id exists already".into(),
            }));
        }
        self.devices.push(dev);
        Ok(())
    }

    /// Adds a port-I/O device at `[base, base + len)`.
    pub fn add_pio(&mut self, base: u16, len: u16, dev: SharedDevice) -> Result<()> {
        self.pio
            .insert(u64::from(base), u64::from(len), dev.clone())
            .map_err(err)?;
        self.add(dev)
    }

    /// Allocates the next MMIO window and IRQ line for device `id`.
    pub fn allocate_mmio(&mut self, id: &str) -> Result<MmioSlot> {
        let i = self.mmio_slots.len() as u64;
        let irq = MMIO_IRQS.clone().nth(i as usize);
        let (true, Some(irq)) = (i < MAX_MMIO_DEVICES, irq) else {
            return Err(err(DeviceError::NoRoom {
                id: id.to_owned(),
                what: format!(
                    "{} MMIO devices use every window and IRQ line",
                    self.mmio_slots.len()
                ),
            }));
        };
        let slot = MmioSlot {
            base: MMIO_BASE + i * MMIO_WINDOW,
            len: MMIO_WINDOW,
            irq,
        };
        self.mmio_slots.push(slot);
        Ok(slot)
    }

    /// Adds an MMIO device in `slot` (from [`allocate_mmio`](Self::allocate_mmio))
    /// and announces it on the kernel command line as Linux's virtio-mmio
    /// driver reads it: `virtio_mmio.device=<size>@<base>:<irq>`.
    pub fn add_virtio_mmio(&mut self, slot: MmioSlot, dev: SharedDevice) -> Result<()> {
        self.mmio
            .insert(slot.base, slot.len, dev.clone())
            .map_err(err)?;
        self.add(dev)?;
        self.cmdline.push(format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            slot.len / 1024,
            slot.base,
            slot.irq
        ));
        Ok(())
    }

    /// Adds an output-commit gate that acks release.
    pub fn add_output(&mut self, out: Arc<Mutex<dyn OutputCommit>>) {
        self.outputs.push(out);
    }

    /// What the devices add to the kernel command line (space separated).
    pub fn cmdline(&self) -> String {
        self.cmdline.join(" ")
    }

    /// The console's output gate.
    pub fn console(&self) -> &Arc<Mutex<OutputGate>> {
        &self.console
    }

    /// Every output-commit gate (the console's first).
    pub fn outputs(&self) -> &[Arc<Mutex<dyn OutputCommit>>] {
        &self.outputs
    }

    /// Seals every gate's output as epoch `seq`'s (in the pause).
    pub fn seal_outputs(&self, seq: u64) {
        for o in &self.outputs {
            o.lock().unwrap_or_else(|e| e.into_inner()).seal(seq);
        }
    }

    /// Releases every gate's output up to epoch `seq`.
    pub fn release_outputs(&self, seq: u64) {
        for o in &self.outputs {
            o.lock().unwrap_or_else(|e| e.into_inner()).release(seq);
        }
    }

    /// Whether any gate holds its output.
    pub fn holding_outputs(&self) -> bool {
        self.outputs
            .iter()
            .any(|o| o.lock().unwrap_or_else(|e| e.into_inner()).holding())
    }

    /// Starts or stops holding output on every gate.
    pub fn hold_outputs(&self, hold: bool) {
        for o in &self.outputs {
            o.lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_holding(hold);
        }
    }

    /// A guest `out`: `data` holds `data.len() / size` accesses of `size`
    /// bytes to the same port (`rep outs` repeats the port). A wide access
    /// to 8-bit registers is split as an ISA bus does: byte i goes to
    /// `port + i`.
    pub fn pio_write(&self, port: u16, data: &[u8], size: usize) -> BusAction {
        for access in data.chunks(size.max(1)) {
            for (i, b) in access.iter().enumerate() {
                let p = u64::from(port.wrapping_add(i as u16));
                let action = self.pio.write(p, std::slice::from_ref(b));
                if action != BusAction::Continue {
                    return action;
                }
            }
        }
        BusAction::Continue
    }

    /// A guest `in`, with the same access layout as [`pio_write`](Self::pio_write).
    pub fn pio_read(&self, port: u16, data: &mut [u8], size: usize) {
        for access in data.chunks_mut(size.max(1)) {
            for (i, b) in access.iter_mut().enumerate() {
                let p = u64::from(port.wrapping_add(i as u16));
                self.pio.read(p, std::slice::from_mut(b));
            }
        }
    }

    /// A guest MMIO write (one access).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> BusAction {
        self.mmio.write(addr, data)
    }

    /// A guest MMIO read (one access).
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data)
    }

    /// Every device's record, in creation order. Call on a paused VM only
    /// (`PauseGuard::capture_devices`).
    pub fn save(&self) -> Vec<DeviceRecord> {
        self.devices
            .iter()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).save())
            .collect()
    }

    /// Restores every device from `records`. Refuses, before touching any
    /// device, a record for a device this VM lacks and a device without a
    /// record; a record a device then refuses stops the restore with an
    /// error naming it (the VM must not be started then).
    pub fn restore(&self, records: &[DeviceRecord]) -> std::result::Result<(), DeviceError> {
        let ids: Vec<String> = self
            .devices
            .iter()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).id().to_owned())
            .collect();
        if let Some(r) = records.iter().find(|r| !ids.contains(&r.id)) {
            return Err(DeviceError::UnknownDevice { id: r.id.clone() });
        }
        let mut ordered = Vec::with_capacity(ids.len());
        for id in &ids {
            let rec = records
                .iter()
                .find(|r| &r.id == id)
                .ok_or_else(|| DeviceError::MissingRecord { id: id.clone() })?;
            ordered.push(rec);
        }
        for (dev, rec) in self.devices.iter().zip(ordered) {
            dev.lock().unwrap_or_else(|e| e.into_inner()).restore(rec)?;
        }
        Ok(())
    }

    /// Quiesces every device (after the vCPUs parked). If one cannot be,
    /// the ones already quiesced are woken again and the error returned.
    pub fn quiesce(&self) -> std::result::Result<(), DeviceError> {
        for (i, d) in self.devices.iter().enumerate() {
            if let Err(e) = d.lock().unwrap_or_else(|e| e.into_inner()).quiesce() {
                for d in &self.devices[..i] {
                    d.lock().unwrap_or_else(|e| e.into_inner()).wake();
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Wakes every device (the pause ends).
    pub fn wake(&self) {
        for d in &self.devices {
            d.lock().unwrap_or_else(|e| e.into_inner()).wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_util::SharedBuf;

    fn manager(buf: &SharedBuf) -> DeviceManager {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        DeviceManager::new(irq, Box::new(buf.clone())).unwrap()
    }

    #[test]
    fn port_accesses_reach_the_platform_devices() {
        let buf = SharedBuf::default();
        let dm = manager(&buf);
        assert_eq!(dm.pio_write(COM1_BASE, b"hello", 1), BusAction::Continue);
        assert_eq!(&*buf.0.lock().unwrap(), b"hello");
        // out dx, ax at COM1+3 (LCR) and COM1+4 (MCR): 0x80 sets DLAB.
        dm.pio_write(COM1_BASE + 3, &[0x80, 0x03], 2);
        let mut lcr_mcr = [0u8; 2];
        dm.pio_read(COM1_BASE + 3, &mut lcr_mcr, 2);
        assert_eq!(lcr_mcr, [0x80, 0x03]);
        assert_eq!(dm.pio_write(DEBUG_EXIT_PORT, &[7], 1), BusAction::Exit(7));
        assert_eq!(dm.pio_write(I8042_CMD_PORT, &[0xfe], 1), BusAction::Reset);
        let mut d = [0u8; 4];
        dm.pio_read(0x1234, &mut d, 4);
        assert_eq!(d, [0xff; 4]);
        dm.mmio_read(MMIO_BASE, &mut d);
        assert_eq!(d, [0xff; 4], "no MMIO device yet");
    }

    #[test]
    fn records_restore_by_id_and_foreign_or_missing_ones_are_refused() {
        let buf = SharedBuf::default();
        let a = manager(&buf);
        a.pio_write(COM1_BASE + 7, &[0x42], 1); // scratch register
        let saved = a.save();
        let ids: Vec<_> = saved.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["serial.com1", "platform.debug-exit", "platform.i8042"]
        );
        let b = manager(&buf);
        let mut reversed = saved.clone();
        reversed.reverse();
        b.restore(&reversed).unwrap();
        assert_eq!(b.save(), saved);

        let mut extra = saved.clone();
        extra.push(checkpoint::DeviceRecord {
            id: "virtio-blk.0".into(),
            version: 1,
            data: vec![],
        });
        let e = b.restore(&extra).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"virtio-blk.0\", which this VM does not have"),
            "{e}"
        );
        let e = b.restore(&saved[1..]).unwrap_err();
        assert!(
            e.to_string()
                .contains("no record for device \"serial.com1\""),
            "{e}"
        );
        let c = manager(&buf);
        assert!(c.restore(&saved[1..]).is_err());
        assert_ne!(c.save(), saved, "a refused restore touched a device");
    }

    #[test]
    fn mmio_windows_and_irqs_are_allocated_until_they_run_out() {
        let buf = SharedBuf::default();
        let mut dm = manager(&buf);
        let a = dm.allocate_mmio("a").unwrap();
        let b = dm.allocate_mmio("b").unwrap();
        assert_eq!((a.base, a.irq), (MMIO_BASE, 5));
        assert_eq!((b.base, b.irq), (MMIO_BASE + MMIO_WINDOW, 6));
        let mut n = 2;
        let e = loop {
            match dm.allocate_mmio("x") {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(n, 19, "GSIs 5..=23");
        assert!(e.to_string().contains("no room for device \"x\""), "{e}");
    }
}
