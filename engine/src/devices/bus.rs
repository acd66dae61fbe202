//! An address bus: non-overlapping ranges, each routed to one device.
//!
//! The ranges are fixed once the VM is built, so a lookup is a binary
//! search with no lock but the device's own.

use std::sync::{Arc, Mutex};

use super::{BusAction, Device, DeviceError};

/// A shared device, as buses and the manager hold it.
pub type SharedDevice = Arc<Mutex<dyn Device>>;

struct Range {
    base: u64,
    len: u64,
    id: String,
    dev: SharedDevice,
}

/// Ranges of an address space (ports or guest-physical MMIO) and their devices.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    /// Routes `[base, base + len)` to `dev`; refuses an empty or overlapping range.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), DeviceError> {
        let id = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id()
            .to_owned();
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlap = self
            .ranges
            .iter()
            .find(|r| end.is_none() || (base < r.base + r.len && r.base < base + len));
        if let Some(r) = overlap {
            return Err(DeviceError::Overlap {
                id,
                base,
                len,
                other: r.id.clone(),
            });
        }
        if end.is_none() {
            return Err(DeviceError::Overlap {
                id,
                base,
                len,
                other: "the end of the address space (or an empty range)".into(),
            });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, id, dev });
        Ok(())
    }

    /// The device decoding `addr`, and the offset of `addr` in its range.
    pub fn find(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let i = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (addr - r.base < r.len).then_some((&r.dev, addr - r.base))
    }

    /// A write of `data` at `addr`; unclaimed addresses ignore it.
    pub fn write(&self, addr: u64, data: &[u8]) -> BusAction {
        match self.find(addr) {
            Some((dev, off)) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(off, data),
            None => BusAction::Continue,
        }
    }

    /// A read into `data` at `addr`; unclaimed addresses read all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((dev, off)) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(off, data),
            None => data.fill(0xff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DeviceRecord;

    struct Probe(String, Vec<(u64, Vec<u8>)>);
    impl Device for Probe {
        fn id(&self) -> &str {
            &self.0
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
            self.1.push((offset, data.to_vec()));
            BusAction::Continue
        }
        fn save(&self) -> DeviceRecord {
            crate::devices::record(&self.0, 1, &())
        }
        fn restore(&mut self, _: &DeviceRecord) -> Result<(), DeviceError> {
            Ok(())
        }
    }

    fn probe(id: &str) -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe(id.into(), Vec::new())))
    }

    #[test]
    fn lookups_route_by_range_and_offset() {
        let mut bus = Bus::default();
        let (a, b) = (probe("a"), probe("b"));
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        bus.insert(0x10, 8, b.clone()).unwrap();
        let mut d = [0u8; 2];
        bus.read(0x105, &mut d);
        assert_eq!(d, [5, 5]);
        bus.read(0x17, &mut d);
        assert_eq!(d, [7, 7]);
        for unclaimed in [0, 0xf, 0x18, 0xff, 0x110, u64::MAX] {
            bus.read(unclaimed, &mut d);
            assert_eq!(d, [0xff, 0xff], "{unclaimed:#x}");
        }
        bus.write(0x10f, &[9]);
        assert_eq!(a.lock().unwrap().1, vec![(0xf, vec![9])]);
        assert!(b.lock().unwrap().1.is_empty());
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused_naming_both_devices() {
        let mut bus = Bus::default();
        bus.insert(0x100, 0x10, probe("a")).unwrap();
        for (base, len) in [(0xf8, 0x9), (0x10f, 1), (0x0, 0x1000), (0x104, 2)] {
            let e = bus.insert(base, len, probe("c")).unwrap_err().to_string();
            assert!(e.contains("\"c\"") && e.contains("\"a\""), "{e}");
        }
        assert!(bus.insert(0x200, 0, probe("z")).is_err());
        assert!(bus.insert(u64::MAX, 2, probe("z")).is_err());
        bus.insert(0xf8, 8, probe("d")).unwrap();
        bus.insert(0x110, 8, probe("e")).unwrap();
    }
}
