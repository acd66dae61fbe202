//! virtio devices over the virtio-mmio transport, version 2 (virtio 1.x,
//! §4.2.2). Split virtqueues come from the rust-vmm `virtio-queue` crate;
//! its `QueueState` has no serde, so [`QueueRecord`] mirrors it in device
//! records.

pub mod block;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_util;

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

pub use mmio::{MmioTransport, VirtioBackend};

/// VIRTIO_F_VERSION_1: the device speaks virtio 1.x (no legacy interface).
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_INDIRECT_DESC: indirect descriptor tables.
pub const F_INDIRECT_DESC: u64 = 1 << 28;

/// Maps an I/O error while building device `id` (eventfds, threads).
pub(crate) fn setup_err(id: &str) -> impl Fn(std::io::Error) -> crate::devices::DeviceError + '_ {
    move |e| crate::devices::DeviceError::Setup {
        id: id.to_owned(),
        msg: e.to_string(),
    }
}

/// Device status bits (§2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and the device is live.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Serializable mirror of `virtio_queue::QueueState`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next available-ring index the device reads.
    pub next_avail: u16,
    /// Next used-ring index the device writes.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
}

impl From<QueueState> for QueueRecord {
    fn from(s: QueueState) -> Self {
        QueueRecord {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueRecord> for QueueState {
    fn from(r: QueueRecord) -> Self {
        QueueState {
            max_size: r.max_size,
            next_avail: r.next_avail,
            next_used: r.next_used,
            event_idx_enabled: r.event_idx_enabled,
            size: r.size,
            ready: r.ready,
            desc_table: r.desc_table,
            avail_ring: r.avail_ring,
            used_ring: r.used_ring,
        }
    }
}
