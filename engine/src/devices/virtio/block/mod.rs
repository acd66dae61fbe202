//! virtio-blk (virtio 1.x §5.2) over virtio-mmio: a raw image, requests
//! served by a device thread through io_uring.

pub mod disk;
pub mod request;
mod worker;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::*;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{Event, MmioTransport, TransportState, VirtioBackend};
use super::{setup_err, F_INDIRECT_DESC, F_VERSION_1};
use crate::devices::{open_record, record, BusAction, Device, DeviceError, DeviceRecord};
use crate::memory::Ram;
pub use disk::{DiskImage, DiskSpec};

use request::Limits;
use worker::{Inner, Shared, Worker};

/// virtio device type of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (SEG_MAX): the queue size less header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors one discard or write-zeroes range may cover.
const MAX_RANGE_SECTORS: u32 = u32::MAX / 512;
/// How long a pause or a reset waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Layout version of [`BlockState`].
const RECORD_VERSION: u32 = 1;

/// What a disk I/O error does, shared by every disk of a VM and its
/// replicator (`docs/disk-replication.md`, "The primary's disk fails").
#[derive(Default)]
pub struct IoFailover {
    /// A shadow holds a committed state: hand the VM over to it instead
    /// of showing the guest the error.
    enabled: std::sync::atomic::AtomicBool,
    /// The first error that called for a handover.
    failure: Mutex<Option<String>>,
    /// Rung when a failure calls for a handover.
    doorbell: crate::runner::LateDoorbell,
}

impl IoFailover {
    /// Has `bell` rung whenever an error calls for a handover (once).
    pub fn set_doorbell(&self, bell: crate::runner::Doorbell) {
        self.doorbell.connect(bell);
    }

    /// Whether an I/O error hands the VM over (set by the replicator).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// The failure that calls for a handover, if one happened.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reports an I/O error: true if it is to be handed over (the request
    /// must then never complete), false if the guest gets `IOERR`.
    pub fn report(&self, why: &str) -> bool {
        if !self.enabled.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| why.to_owned());
        self.doorbell.ring();
        true
    }
}

/// What the guest sees of the disk, fixed when the device is built.
pub struct BlockConfig {
    features: u64,
    config: [u8; 60],
    limits: Limits,
    /// The GET_ID string (NUL padded).
    id: [u8; request::ID_LEN as usize],
    sectors: u64,
    read_only: bool,
}

impl BlockConfig {
    fn new(disk: &DiskImage, serial: &str) -> BlockConfig {
        let mut features = F_VERSION_1
            | F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_DISCARD
            | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        // struct virtio_blk_config (§5.2.4), little-endian.
        let mut c = [0u8; 60];
        let mut put = |at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
        put(0, &disk.sectors().to_le_bytes()); // capacity
        put(12, &SEG_MAX.to_le_bytes()); // seg_max
        put(20, &512u32.to_le_bytes()); // blk_size
        put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &8u32.to_le_bytes()); // discard_sector_alignment (4 KiB)
        put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        let mut id = [0u8; request::ID_LEN as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        BlockConfig {
            features,
            config: c,
            limits: Limits {
                seg_max: SEG_MAX,
                max_ranges: 1,
            },
            id,
            sectors: disk.sectors(),
            read_only: disk.read_only,
        }
    }
}

impl VirtioBackend for BlockConfig {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| self.config.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
}

/// The record of a virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Registers and queues.
    pub transport: TransportState,
    /// The capacity the guest saw, in sectors.
    pub sectors: u64,
    /// Whether the guest saw a read-only disk.
    pub read_only: bool,
}

/// A virtio-blk device on virtio-mmio (`virtio-blk.N`).
pub struct Block {
    id: String,
    cfg: Arc<BlockConfig>,
    shared: Arc<Shared>,
    notify: EventFd,
    ctl: EventFd,
    irq: EventFd,
    ram: Arc<Ram>,
    failover: Arc<IoFailover>,
    thread: Option<JoinHandle<()>>,
}

impl Block {
    /// A device serving `disk`, raising `irq` (an irqfd), woken by `notify`
    /// (the QueueNotify ioeventfd). `serial` is the GET_ID string: it must
    /// be the same on a primary and its shadows.
    pub fn new(
        id: &str,
        disk: Arc<DiskImage>,
        serial: &str,
        ram: Arc<Ram>,
        irq: EventFd,
        notify: EventFd,
        failover: Arc<IoFailover>,
    ) -> Result<Block, DeviceError> {
        let cfg = Arc::new(BlockConfig::new(&disk, serial));
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                transport: MmioTransport::new(&*cfg, &[QUEUE_SIZE]),
                paused: false,
                stop: false,
                inflight: 0,
                generation: 0,
                errors: 0,
                halted: false,
            }),
            idle: Condvar::new(),
        });
        let ctl = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err(id))?;
        let worker = Worker {
            shared: shared.clone(),
            cfg: cfg.clone(),
            disk,
            ram: ram.clone(),
            notify: notify.try_clone().map_err(setup_err(id))?,
            ctl: ctl.try_clone().map_err(setup_err(id))?,
            irq: irq.try_clone().map_err(setup_err(id))?,
            name: id.to_owned(),
            failover: failover.clone(),
        };
        let thread =
            crate::cpu::spawn_accounted(id, move || worker.run()).map_err(setup_err(id))?;
        Ok(Block {
            id: id.to_owned(),
            cfg,
            shared,
            notify,
            ctl,
            irq,
            ram,
            failover,
            thread: Some(thread),
        })
    }

    fn kick(&self) {
        if let Err(e) = self.ctl.write(1) {
            tracing::warn!("{}: waking the device thread: {e}", self.id);
        }
    }

    /// Requests completed with an error so far.
    pub fn errors(&self) -> u64 {
        self.shared.lock().errors
    }

    /// Waits (up to the drain timeout) until no request is in flight.
    fn drain<'a>(
        &'a self,
        inner: std::sync::MutexGuard<'a, Inner>,
    ) -> (std::sync::MutexGuard<'a, Inner>, bool) {
        let (g, t) = self
            .shared
            .idle
            .wait_timeout_while(inner, DRAIN_TIMEOUT, |i| i.inflight > 0)
            .unwrap_or_else(|e| e.into_inner());
        (g, !t.timed_out())
    }
}

impl Device for Block {
    fn id(&self) -> &str {
        &self.id
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.shared.lock().transport.read(&*self.cfg, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        let mut inner = self.shared.lock();
        match inner.transport.write(offset, data) {
            Event::None => {}
            Event::Activate => {
                if !inner.transport.queues[0].is_valid(&self.ram.mem) {
                    tracing::warn!("{}: driver set DRIVER_OK with an invalid queue", self.id);
                    inner.transport.fail();
                    // Tell the driver (a configuration-change interrupt, §2.1.2).
                    if let Err(e) = self.irq.write(1) {
                        tracing::warn!("{}: raising the interrupt: {e}", self.id);
                    }
                }
                drop(inner);
                self.kick();
            }
            Event::Reset => {
                inner.generation += 1;
                self.kick();
                let (_inner, drained) = self.drain(inner);
                if !drained {
                    tracing::error!("{}: reset with requests still in flight", self.id);
                }
            }
            Event::Notify(_) => {
                drop(inner);
                if let Err(e) = self.notify.write(1) {
                    tracing::warn!("{}: queue notify: {e}", self.id);
                }
            }
        }
        BusAction::Continue
    }

    fn save(&self) -> DeviceRecord {
        let inner = self.shared.lock();
        debug_assert_eq!(inner.inflight, 0, "saved with requests in flight");
        record(
            &self.id,
            RECORD_VERSION,
            &BlockState {
                transport: inner.transport.state(),
                sectors: self.cfg.sectors,
                read_only: self.cfg.read_only,
            },
        )
    }

    fn restore(&mut self, rec: &DeviceRecord) -> Result<(), DeviceError> {
        let st: BlockState = open_record(&self.id, RECORD_VERSION, rec)?;
        if (st.sectors, st.read_only) != (self.cfg.sectors, self.cfg.read_only) {
            return Err(DeviceError::BadRecord {
                id: self.id.clone(),
                msg: format!(
                    "the record is of a {} disk of {} sectors; this one is {} with {} sectors",
                    if st.read_only {
                        "read-only"
                    } else {
                        "writable"
                    },
                    st.sectors,
                    if self.cfg.read_only {
                        "read-only"
                    } else {
                        "writable"
                    },
                    self.cfg.sectors
                ),
            });
        }
        let mut inner = self.shared.lock();
        inner.transport.set_state(&self.id, &st.transport)?;
        inner.generation += 1;
        let pending = inner.transport.interrupt_status != 0;
        drop(inner);
        if pending {
            // The edge that raised it may have been lost with the old VM (a
            // capture can fall between the interrupt and its delivery): raise
            // it again; a spurious one is harmless to a virtio driver.
            if let Err(e) = self.irq.write(1) {
                tracing::warn!("{}: re-raising the interrupt: {e}", self.id);
            }
        }
        // Requests the guest posted before the capture but the device had
        // not popped yet: their notification belonged to the old device.
        self.kick();
        Ok(())
    }

    fn quiesce(&mut self) -> Result<(), DeviceError> {
        if let Some(why) = self.failover.failure() {
            // Nothing after the failure may be captured: the shadow takes
            // over from the last commit instead.
            return Err(DeviceError::Quiesce {
                id: self.id.clone(),
                msg: format!("the disk failed ({why}); the VM is being handed over"),
            });
        }
        let mut inner = self.shared.lock();
        inner.paused = true;
        self.kick();
        let (mut inner, drained) = self.drain(inner);
        if let Some(why) = self.failover.failure() {
            // A request failed while draining: it is held, unanswered, and
            // must not be captured as popped.
            inner.paused = true;
            return Err(DeviceError::Quiesce {
                id: self.id.clone(),
                msg: format!("the disk failed ({why}); the VM is being handed over"),
            });
        }
        if drained {
            return Ok(());
        }
        inner.paused = false;
        Err(DeviceError::Quiesce {
            id: self.id.clone(),
            msg: format!(
                "{} requests still in flight after {DRAIN_TIMEOUT:?}",
                inner.inflight
            ),
        })
    }

    fn wake(&mut self) {
        let mut inner = self.shared.lock();
        inner.paused = inner.halted;
        drop(inner);
        self.kick();
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
