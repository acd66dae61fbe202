//! virtio-net (virtio 1.x §5.1) over virtio-mmio, backed by a TAP, with
//! transmitted frames held behind a [`NetGate`] until their epoch commits
//! (`docs/network.md`).
//!
//! Queue 0 receives, queue 1 transmits. A device thread serves both: it
//! waits in `epoll` on the two QueueNotify ioeventfds, the TAP and a
//! control eventfd. Every guest-memory access happens under the device's
//! lock, so a capture (which takes it) never sees a half-processed chain.

pub mod chain;
pub mod gate;
pub mod tap;
mod worker;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_net::*;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{Event, MmioTransport, TransportState, VirtioBackend};
use super::{setup_err, F_INDIRECT_DESC, F_VERSION_1};
use crate::devices::{open_record, record, BusAction, Device, DeviceError, DeviceRecord};
use crate::memory::Ram;
pub use gate::{EpochFrames, Frame, GateLimits, GateStats, NetGate};
pub use tap::Tap;

use worker::{Inner, Shared, Worker};

/// virtio device type of a network device.
pub const DEVICE_TYPE: u32 = 1;
/// Queue size offered (both queues).
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RXQ: usize = 0;
/// The transmit queue.
pub const TXQ: usize = 1;
/// The control queue (VIRTIO_NET_F_CTRL_VQ; used for GUEST_ANNOUNCE acks).
pub const CTRLQ: usize = 2;
/// Size of the control queue.
pub const CTRL_QUEUE_SIZE: u16 = 64;
/// Layout version of [`NetState`].
const RECORD_VERSION: u32 = 1;

/// `--net tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The TAP interface.
    pub tap: String,
    /// The guest's MAC; derived from the VM id and the NIC's index when absent.
    pub mac: Option<[u8; 6]>,
}

impl FromStr for NetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<NetSpec, String> {
        let mut tap = None;
        let mut mac = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", v)) if !v.is_empty() => tap = Some(v.to_owned()),
                Some(("mac", v)) => mac = Some(parse_mac(v)?),
                _ => {
                    return Err(format!(
                        "unknown option {part:?} in --net {s:?} (expected tap=NAME[,mac=52:54:00:12:34:56])"
                    ))
                }
            }
        }
        let tap = tap.ok_or_else(|| format!("--net {s:?} names no tap=NAME"))?;
        Ok(NetSpec { tap, mac })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast addresses.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("MAC {s:?} is not six hex bytes like 52:54:00:12:34:56");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// The MAC of NIC `index` of VM `vm_id` when none is given: locally
/// administered (0x52 first), the rest from a hash of the id, so a primary
/// and its spares, given the same id, agree.
pub fn derive_mac(vm_id: &str, index: usize) -> [u8; 6] {
    let mut h = blake3::Hasher::new();
    h.update(b"hotspare-mac\0");
    h.update(vm_id.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    let d = h.finalize();
    let b = d.as_bytes();
    [0x52, b[0], b[1], b[2], b[3], b[4]]
}

/// Formats a MAC.
pub fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the guest sees of the NIC: features and the configuration space.
pub struct NetConfig {
    features: u64,
    /// struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
    config: Mutex<[u8; 12]>,
}

impl NetConfig {
    fn new(mac: [u8; 6], offloads: bool) -> NetConfig {
        let mut features = F_VERSION_1
            | F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            // The TAP takes partial checksums and GSO frames from the guest.
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            // After a takeover the guest is asked to announce itself.
            | 1 << VIRTIO_NET_F_CTRL_VQ
            | 1 << VIRTIO_NET_F_GUEST_ANNOUNCE;
        if offloads {
            // And gives them to the guest once TUNSETOFFLOAD enables them.
            features |= 1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6;
        }
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        NetConfig {
            features,
            config: Mutex::new(c),
        }
    }

    fn mac(&self) -> [u8; 6] {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        c[..6].try_into().expect("6 bytes")
    }

    fn set_mac(&self, mac: [u8; 6]) {
        self.config.lock().unwrap_or_else(|e| e.into_inner())[..6].copy_from_slice(&mac);
    }

    /// Sets or clears VIRTIO_NET_S_ANNOUNCE in the status field.
    pub(crate) fn set_announce(&self, on: bool) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = u16::from_le_bytes([c[6], c[7]]);
        if on {
            st |= VIRTIO_NET_S_ANNOUNCE as u16;
        } else {
            st &= !(VIRTIO_NET_S_ANNOUNCE as u16);
        }
        c[6..8].copy_from_slice(&st.to_le_bytes());
    }

    /// The status field.
    pub fn status(&self) -> u16 {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        u16::from_le_bytes([c[6], c[7]])
    }
}

impl VirtioBackend for NetConfig {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| c.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
}

/// The TUN_F_* receive offloads the guest's features ask of the TAP.
pub fn tun_offloads(acked: u64) -> u32 {
    let has = |f: u32| acked & (1u64 << f) != 0;
    let mut t = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        t |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            t |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            t |= libc::TUN_F_TSO6;
        }
    }
    t
}

/// The record of a virtio-net device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Registers and queues.
    pub transport: TransportState,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// Frames the guest has transmitted (the gate's position): a shadow's
    /// committed frames end here.
    pub tx_pos: u64,
    /// A frame read from the TAP that no receive buffer could take yet.
    pub rx_pending: Option<Vec<u8>>,
    /// The guest's IPv4 address, learned from the ARP frames it sent (for
    /// the gratuitous ARP a takeover sends).
    pub ipv4: Option<[u8; 4]>,
}

/// The frame number a NIC's record continues from (`None` if the record
/// is not a readable virtio-net record).
pub fn record_tx_pos(rec: &DeviceRecord) -> Option<u64> {
    open_record::<NetState>(&rec.id, RECORD_VERSION, rec)
        .ok()
        .map(|s| s.tx_pos)
}

/// A virtio-net device on virtio-mmio (`virtio-net.N`).
pub struct Net {
    id: String,
    cfg: Arc<NetConfig>,
    shared: Arc<Shared>,
    gate: Arc<Mutex<NetGate>>,
    tap: Arc<Tap>,
    notify: [EventFd; 3],
    ctl: EventFd,
    irq: EventFd,
    ram: Arc<Ram>,
    thread: Option<JoinHandle<()>>,
}

impl Net {
    /// A device on `tap` with `mac`, raising `irq` (an irqfd), woken by
    /// `notify` (the QueueNotify ioeventfds of queues 0, 1 and 2).
    pub fn new(
        id: &str,
        tap: Arc<Tap>,
        mac: [u8; 6],
        limits: GateLimits,
        ram: Arc<Ram>,
        irq: EventFd,
        notify: [EventFd; 3],
    ) -> Result<Net, DeviceError> {
        let cfg = Arc::new(NetConfig::new(mac, tap.can_offload()));
        let ctl = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err(id))?;
        let mut g = NetGate::new(tap.clone(), limits);
        g.set_mac(mac);
        g.set_wake(ctl.try_clone().map_err(setup_err(id))?);
        let gate = Arc::new(Mutex::new(g));
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                transport: MmioTransport::new(&*cfg, &[QUEUE_SIZE, QUEUE_SIZE, CTRL_QUEUE_SIZE]),
                paused: false,
                stop: false,
                rx_pending: None,
                tap_readable: true,
                tap_gone: false,
                counters: worker::Counters::default(),
            }),
        });
        let worker = Worker {
            shared: shared.clone(),
            gate: gate.clone(),
            tap: tap.clone(),
            ram: ram.clone(),
            notify: [
                notify[0].try_clone().map_err(setup_err(id))?,
                notify[1].try_clone().map_err(setup_err(id))?,
                notify[2].try_clone().map_err(setup_err(id))?,
            ],
            cfg: cfg.clone(),
            ctl: ctl.try_clone().map_err(setup_err(id))?,
            irq: irq.try_clone().map_err(setup_err(id))?,
            name: id.to_owned(),
        };
        let announcer = {
            let (shared, cfg, irq) = (
                shared.clone(),
                cfg.clone(),
                irq.try_clone().map_err(setup_err(id))?,
            );
            let name = id.to_owned();
            Arc::new(move || {
                let mut inner = shared.lock();
                let acked = inner.transport.acked_features();
                if !inner.transport.active() || acked & (1 << VIRTIO_NET_F_GUEST_ANNOUNCE) == 0 {
                    return false;
                }
                cfg.set_announce(true);
                inner.transport.config_changed();
                drop(inner);
                if let Err(e) = irq.write(1) {
                    tracing::warn!("{name}: raising the configuration interrupt: {e}");
                }
                true
            }) as gate::Announcer
        };
        gate.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_guest_announcer(announcer);
        let poll = worker.poller().map_err(setup_err(id))?;
        let thread =
            crate::cpu::spawn_accounted(id, move || worker.run(poll)).map_err(setup_err(id))?;
        Ok(Net {
            id: id.to_owned(),
            cfg,
            shared,
            gate,
            tap,
            notify,
            ctl,
            irq,
            ram,
            thread: Some(thread),
        })
    }

    /// The output-commit gate of this NIC.
    pub fn gate(&self) -> Arc<Mutex<NetGate>> {
        self.gate.clone()
    }

    /// The guest's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.cfg.mac()
    }

    /// Counters of the device (frames, refused chains).
    pub fn counters(&self) -> worker::Counters {
        self.shared.lock().counters
    }

    fn kick(&self) {
        if let Err(e) = self.ctl.write(1) {
            tracing::warn!("{}: waking the device thread: {e}", self.id);
        }
    }

    fn apply_offloads(&self, acked: u64) {
        if let Err(e) = self.tap.set_offload(tun_offloads(acked)) {
            tracing::warn!("{}: {e}", self.id);
        }
    }
}

impl Device for Net {
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
                // A queue the driver did not set up (the control queue of a
                // driver without CTRL_VQ) is unused, not invalid.
                let valid = inner.transport.queues.iter().all(|q| {
                    !virtio_queue::QueueT::ready(q)
                        || virtio_queue::QueueT::is_valid(q, &self.ram.mem)
                });
                if !valid {
                    tracing::warn!("{}: driver set DRIVER_OK with an invalid queue", self.id);
                    inner.transport.fail();
                    if let Err(e) = self.irq.write(1) {
                        tracing::warn!("{}: raising the interrupt: {e}", self.id);
                    }
                }
                let acked = inner.transport.acked_features();
                drop(inner);
                self.apply_offloads(acked);
                self.kick();
            }
            Event::Reset => {
                // Nothing is in flight outside the lock: the queues are reset.
                inner.rx_pending = None;
                self.cfg.set_announce(false);
                drop(inner);
                self.apply_offloads(0);
            }
            Event::Notify(q) => {
                drop(inner);
                if let Some(n) = self.notify.get(q as usize) {
                    if let Err(e) = n.write(1) {
                        tracing::warn!("{}: queue notify: {e}", self.id);
                    }
                }
            }
        }
        BusAction::Continue
    }

    fn save(&self) -> DeviceRecord {
        let inner = self.shared.lock();
        let (tx_pos, ipv4) = {
            let g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            (g.position(), g.ipv4())
        };
        record(
            &self.id,
            RECORD_VERSION,
            &NetState {
                transport: inner.transport.state(),
                mac: self.cfg.mac(),
                tx_pos,
                rx_pending: inner.rx_pending.clone(),
                ipv4,
            },
        )
    }

    fn restore(&mut self, rec: &DeviceRecord) -> Result<(), DeviceError> {
        let st: NetState = open_record(&self.id, RECORD_VERSION, rec)?;
        let bad = |msg: String| DeviceError::BadRecord {
            id: self.id.clone(),
            msg,
        };
        if st.mac[0] & 1 != 0 {
            return Err(bad(format!("MAC {} is multicast", mac_string(&st.mac))));
        }
        if let Some(p) = &st.rx_pending {
            if p.len() <= tap::VNET_HDR_LEN || p.len() > tap::VNET_HDR_LEN + chain::MAX_FRAME {
                return Err(bad(format!("a pending frame of {} bytes", p.len())));
            }
        }
        if st.tx_pos > u64::MAX / 2 {
            return Err(bad(format!("frame number {} is beyond any run", st.tx_pos)));
        }
        let mut inner = self.shared.lock();
        inner.transport.set_state(&self.id, &st.transport)?;
        inner.rx_pending = st.rx_pending;
        inner.tap_readable = true;
        let acked = inner.transport.acked_features();
        let pending = inner.transport.interrupt_status != 0;
        drop(inner);
        self.cfg.set_mac(st.mac);
        {
            let mut g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            g.reset_position(st.tx_pos);
            g.set_mac(st.mac);
            g.set_ipv4(st.ipv4);
        }
        self.apply_offloads(acked);
        if pending {
            // As virtio-blk: the edge may have been lost with the old VM.
            if let Err(e) = self.irq.write(1) {
                tracing::warn!("{}: re-raising the interrupt: {e}", self.id);
            }
        }
        self.kick();
        Ok(())
    }

    fn quiesce(&mut self) -> Result<(), DeviceError> {
        // The worker touches guest memory only under the lock, and a paused
        // device takes nothing new: once we hold the lock, it is quiet.
        self.shared.lock().paused = true;
        Ok(())
    }

    fn wake(&mut self) {
        self.shared.lock().paused = false;
        self.kick();
    }
}

impl Drop for Net {
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
