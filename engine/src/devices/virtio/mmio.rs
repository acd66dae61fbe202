//! The virtio-mmio transport, version 2 (virtio 1.x §4.2.2), as a register
//! state machine with no I/O: the device that embeds it acts on the
//! [`Event`]s its writes return. Legacy version 1 is not offered.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueState, QueueT};

use super::{status, QueueRecord, F_VERSION_1};
use crate::devices::DeviceError;

/// "virt" in little-endian ASCII.
const MAGIC: u32 = 0x7472_6976;
/// The transport version offered: 2 (virtio 1.x). Never 1 (legacy).
const VERSION: u32 = 2;
/// Our vendor id: "HS" (hotspare).
const VENDOR_ID: u32 = 0x0000_5348;

/// What the device type behind the transport provides.
pub trait VirtioBackend {
    /// The virtio device type (2 = block).
    fn device_type(&self) -> u32;
    /// The feature bits offered; must include VIRTIO_F_VERSION_1.
    fn device_features(&self) -> u64;
    /// A read of the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
}

/// What a register write asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing beyond the register change.
    None,
    /// The driver set DRIVER_OK: start serving the queues.
    Activate,
    /// The driver wrote 0 to Status: stop, drop all state.
    Reset,
    /// QueueNotify for queue `n` (when no ioeventfd caught it).
    Notify(u32),
}

/// The transport registers and the virtqueues.
pub struct MmioTransport {
    device_type: u32,
    device_features: u64,
    /// Device status (§2.1).
    pub status: u32,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    /// InterruptStatus: bit 0 used buffer, bit 1 configuration change.
    pub interrupt_status: u32,
    config_generation: u32,
    /// The virtqueues.
    pub queues: Vec<Queue>,
}

/// The transport's part of a device record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Device status.
    pub status: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every virtqueue.
    pub queues: Vec<QueueRecord>,
}

impl MmioTransport {
    /// A reset transport for `backend` with queues of the given maximum sizes.
    pub fn new(backend: &dyn VirtioBackend, queue_max: &[u16]) -> MmioTransport {
        debug_assert!(backend.device_features() & F_VERSION_1 != 0);
        MmioTransport {
            device_type: backend.device_type(),
            device_features: backend.device_features(),
            status: 0,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            queues: queue_max
                .iter()
                .map(|&m| Queue::new(m).expect("queue sizes are powers of two"))
                .collect(),
        }
    }

    /// Whether the driver set DRIVER_OK (and the device did not fail).
    pub fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Features both sides agreed on.
    pub fn acked_features(&self) -> u64 {
        self.driver_features & self.device_features
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The device changed its configuration space: ConfigGeneration moves
    /// and a configuration-change interrupt is due (the caller raises it).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
    }

    /// The configuration space changed at the driver's request: a new
    /// ConfigGeneration, no interrupt.
    pub fn bump_config_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// Marks the device broken (DEVICE_NEEDS_RESET) and raises a
    /// configuration-change interrupt, as §2.1.2 asks.
    pub fn fail(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
    }

    /// A guest read of `data.len()` bytes at `offset`.
    pub fn read(&self, backend: &dyn VirtioBackend, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            backend.read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        // Registers are 32 bits wide and read with 32-bit accesses only.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let sel_queue = self.queues.get(self.queue_sel as usize);
        let v: u32 = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => sel_queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => sel_queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: length -1 says "none" (§4.2.2.1).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            VIRTIO_MMIO_SHM_BASE_LOW | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write at `offset`; the device acts on the returned event.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Event {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // Block configuration is read-only for the driver.
            return Event::None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                "virtio-mmio: {}-byte write to register {offset:#x} ignored",
                data.len()
            );
            return Event::None;
        };
        if !offset.is_multiple_of(4) {
            return Event::None;
        }
        let v = u32::from_le_bytes(bytes);
        // Queue registers may change only while the queue is not live.
        let queue_setup = self.status & status::DRIVER_OK == 0;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 =>
            {
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if queue_setup => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if queue_setup => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if queue_setup => {
                self.set_addr(|q, l, h| q.set_desc_table_address(l, h), Some(v), None)
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_setup => {
                self.set_addr(|q, l, h| q.set_desc_table_address(l, h), None, Some(v))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue_setup => {
                self.set_addr(|q, l, h| q.set_avail_ring_address(l, h), Some(v), None)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_setup => {
                self.set_addr(|q, l, h| q.set_avail_ring_address(l, h), None, Some(v))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if queue_setup => {
                self.set_addr(|q, l, h| q.set_used_ring_address(l, h), Some(v), None)
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if queue_setup => {
                self.set_addr(|q, l, h| q.set_used_ring_address(l, h), None, Some(v))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => return Event::Notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !v,
            VIRTIO_MMIO_STATUS => return self.set_status(v),
            _ => {}
        }
        Event::None
    }

    fn set_addr(
        &mut self,
        f: impl FnOnce(&mut Queue, Option<u32>, Option<u32>),
        l: Option<u32>,
        h: Option<u32>,
    ) {
        if let Some(q) = self.queue() {
            f(q, l, h);
        }
    }

    fn set_status(&mut self, v: u32) -> Event {
        if v == 0 {
            self.reset();
            return Event::Reset;
        }
        let was_ok = self.status & status::DRIVER_OK != 0;
        let mut v = v;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            // The driver may accept only what was offered, and a 1.x device
            // needs VERSION_1; otherwise FEATURES_OK does not stick and the
            // driver sees the refusal when it reads Status back (§3.1.1).
            let unknown = self.driver_features & !self.device_features;
            if unknown != 0 || self.driver_features & F_VERSION_1 == 0 {
                tracing::warn!(
                    "virtio-mmio: driver features {:#x} refused (offered {:#x})",
                    self.driver_features,
                    self.device_features
                );
                v &= !status::FEATURES_OK;
            }
        }
        if v & status::DRIVER_OK != 0
            && self.status & status::FEATURES_OK == 0
            && v & status::FEATURES_OK == 0
        {
            // DRIVER_OK before FEATURES_OK is a driver bug: fail the device.
            self.status = v & !status::DRIVER_OK;
            self.fail();
            return Event::None;
        }
        self.status = v;
        if !was_ok && v & status::DRIVER_OK != 0 {
            Event::Activate
        } else {
            Event::None
        }
    }

    /// The transport's record.
    pub fn state(&self) -> TransportState {
        TransportState {
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Loads a record; refuses one whose queues do not match this device's
    /// or do not form valid queues. `id` names the device in errors.
    pub fn set_state(&mut self, id: &str, st: &TransportState) -> Result<(), DeviceError> {
        let bad = |msg: String| DeviceError::BadRecord {
            id: id.to_owned(),
            msg,
        };
        if st.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queues recorded, the device has {}",
                st.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(st.queues.len());
        for (i, (rec, q)) in st.queues.iter().zip(&self.queues).enumerate() {
            if rec.max_size != q.max_size() {
                return Err(bad(format!(
                    "queue {i} has maximum size {} recorded, the device offers {}",
                    rec.max_size,
                    q.max_size()
                )));
            }
            queues.push(
                Queue::try_from(QueueState::from(*rec))
                    .map_err(|e| bad(format!("queue {i}: {e}")))?,
            );
        }
        if st.driver_features & !self.device_features != 0 {
            return Err(bad(format!(
                "driver features {:#x} were never offered ({:#x})",
                st.driver_features, self.device_features
            )));
        }
        self.status = st.status;
        self.driver_features = st.driver_features;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.queue_sel = st.queue_sel;
        self.interrupt_status = st.interrupt_status;
        self.config_generation = st.config_generation;
        self.queues = queues;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy;
    impl VirtioBackend for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn device_features(&self) -> u64 {
            F_VERSION_1 | 1 << 9
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
    }

    fn rd(t: &MmioTransport, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(&Dummy, u64::from(off), &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u32, v: u32) -> Event {
        t.write(u64::from(off), &v.to_le_bytes())
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        wr(t, VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        rd(t, VIRTIO_MMIO_STATUS)
    }

    #[test]
    fn identity_registers_are_version_2() {
        let t = MmioTransport::new(&Dummy, &[256]);
        assert_eq!(rd(&t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_ID), 2);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        let mut t = t;
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            rd(&t, VIRTIO_MMIO_DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no queue 1");
        let mut b = [0u8; 2];
        t.read(&Dummy, 0x104, &mut b);
        assert_eq!(b, [4, 4], "config space reads go to the device");
    }

    #[test]
    fn features_ok_sticks_only_for_offered_features_with_version_1() {
        let mut t = MmioTransport::new(&Dummy, &[16]);
        assert_eq!(
            negotiate(&mut t, 1 << 9) & status::FEATURES_OK,
            0,
            "no VERSION_1"
        );
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(
            negotiate(&mut t, F_VERSION_1 | 1 << 3) & status::FEATURES_OK,
            0,
            "bit 3 never offered"
        );
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_ne!(
            negotiate(&mut t, F_VERSION_1 | 1 << 9) & status::FEATURES_OK,
            0
        );
        assert_eq!(t.acked_features(), F_VERSION_1 | 1 << 9);
    }

    #[test]
    fn driver_ok_activates_and_zero_resets() {
        let mut t = MmioTransport::new(&Dummy, &[16]);
        negotiate(&mut t, F_VERSION_1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_READY), 1);
        let all = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, all), Event::Activate);
        assert!(t.active());
        assert_eq!(t.queues[0].size(), 8);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_1000);
        // Live queues cannot be moved.
        wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x2000);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000_1000);
        assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0), Event::Notify(0));
        t.interrupt_status = 3;
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, 0), Event::Reset);
        assert!(!t.active());
        assert!(!t.queues[0].ready());
        assert_eq!(rd(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_fails_the_device() {
        let mut t = MmioTransport::new(&Dummy, &[16]);
        wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        let e = wr(
            &mut t,
            VIRTIO_MMIO_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(e, Event::None);
        assert!(!t.active());
        assert_ne!(rd(&t, VIRTIO_MMIO_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn records_round_trip_and_bad_queues_are_refused() {
        let mut t = MmioTransport::new(&Dummy, &[16]);
        negotiate(&mut t, F_VERSION_1);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        let st = t.state();
        let mut u = MmioTransport::new(&Dummy, &[16]);
        u.set_state("x", &st).unwrap();
        assert_eq!(u.state(), st);
        let mut bad = st.clone();
        bad.queues[0].size = 3; // not a power of two
        assert!(u
            .set_state("x", &bad)
            .unwrap_err()
            .to_string()
            .contains("queue 0"));
        let mut bad = st.clone();
        bad.queues.push(QueueRecord::default());
        assert!(u
            .set_state("x", &bad)
            .unwrap_err()
            .to_string()
            .contains("2 queues"));
        let mut bad = st;
        bad.driver_features |= 1 << 40;
        assert!(u
            .set_state("x", &bad)
            .unwrap_err()
            .to_string()
            .contains("never offered"));
    }
}
