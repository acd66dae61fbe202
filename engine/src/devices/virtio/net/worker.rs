//! The virtio-net device thread: takes frames off the transmit queue into
//! the gate, and delivers frames read from the TAP into receive buffers.
//!
//! It blocks in `epoll` on the two QueueNotify ioeventfds, the TAP (edge
//! triggered: `tap_readable` remembers an edge it could not act on) and a
//! control eventfd (pause, wake, stop, restore, a gate with room again).
//! Everything it does to guest memory and the queues happens under
//! [`Shared`]'s lock, and a paused device does nothing, so a capture that
//! holds the lock sees no half-done work.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_net::*;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::{self, Seg, MAX_FRAME};
use super::gate::NetGate;
use super::tap::{Tap, VNET_HDR_LEN};
use super::{NetConfig, CTRLQ, RXQ, TXQ};
use crate::devices::virtio::MmioTransport;
use crate::memory::Ram;

const TAG_RX: u64 = 0;
const TAG_TX: u64 = 1;
const TAG_CTRLQ: u64 = 4;
const TAG_TAP: u64 = 2;
const TAG_CTL: u64 = 3;
/// Refused chains logged one by one before only every 1000th is.
const LOG_FIRST: u64 = 10;

/// What the device has done (for stats, logs and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames taken off the transmit queue into the gate.
    pub tx_frames: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames from the TAP no receive buffer could hold (dropped).
    pub rx_dropped: u64,
    /// Descriptor chains refused (completed with length 0).
    pub bad_chains: u64,
    /// Transmitted frames refused for their header (offloads the driver
    /// did not negotiate).
    pub bad_headers: u64,
}

/// State shared by the bus side (vCPU threads) and the device thread.
pub struct Inner {
    /// Registers and queues.
    pub transport: MmioTransport,
    /// A capture is under way: touch nothing.
    pub paused: bool,
    /// The device is being dropped.
    pub stop: bool,
    /// A frame read from the TAP that waits for a receive buffer.
    pub rx_pending: Option<Vec<u8>>,
    /// The TAP may have frames to read.
    pub tap_readable: bool,
    /// Reading the TAP failed for good (it was deleted).
    pub tap_gone: bool,
    /// What the device has done.
    pub counters: Counters,
}

/// [`Inner`] behind its lock.
pub struct Shared {
    /// The state.
    pub inner: Mutex<Inner>,
}

impl Shared {
    /// Locks the state (a panic elsewhere does not stop the device).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The device thread.
pub struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) gate: Arc<Mutex<NetGate>>,
    pub(super) tap: Arc<Tap>,
    pub(super) ram: Arc<Ram>,
    pub(super) notify: [EventFd; 3],
    pub(super) cfg: Arc<NetConfig>,
    pub(super) ctl: EventFd,
    pub(super) irq: EventFd,
    pub(super) name: String,
}

fn segs_of<M>(chain: virtio_queue::DescriptorChain<M>) -> (u16, Vec<Seg>)
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let segs = chain
        .map(|d| Seg {
            addr: d.addr().0,
            len: d.len(),
            write: d.is_write_only(),
        })
        .collect();
    (head, segs)
}

impl Worker {
    /// The epoll set the thread waits on.
    pub fn poller(&self) -> std::io::Result<Epoll> {
        use std::os::fd::AsRawFd;
        let ep = Epoll::new()?;
        let add = |fd: i32, tag: u64, set: EventSet| {
            ep.ctl(ControlOperation::Add, fd, EpollEvent::new(set, tag))
        };
        add(self.notify[RXQ].as_raw_fd(), TAG_RX, EventSet::IN)?;
        add(self.notify[TXQ].as_raw_fd(), TAG_TX, EventSet::IN)?;
        add(self.notify[CTRLQ].as_raw_fd(), TAG_CTRLQ, EventSet::IN)?;
        add(
            self.tap.raw_fd(),
            TAG_TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )?;
        add(self.ctl.as_raw_fd(), TAG_CTL, EventSet::IN)?;
        Ok(ep)
    }

    /// Runs until the device is dropped.
    pub fn run(self, ep: Epoll) {
        let mut events = vec![EpollEvent::default(); 8];
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
        loop {
            let n = match ep.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!("{}: epoll failed ({e}); the device fails", self.name);
                    self.shared.lock().transport.fail();
                    let _ = self.irq.write(1);
                    return;
                }
            };
            let mut tap_edge = false;
            for ev in &events[..n] {
                match ev.data() {
                    TAG_RX => drop(self.notify[RXQ].read()),
                    TAG_TX => drop(self.notify[TXQ].read()),
                    TAG_CTRLQ => drop(self.notify[CTRLQ].read()),
                    TAG_TAP => tap_edge = true,
                    _ => drop(self.ctl.read()),
                }
            }
            let shared = self.shared.clone();
            let mut inner = shared.lock();
            inner.tap_readable |= tap_edge;
            if inner.stop {
                return;
            }
            if inner.paused {
                continue;
            }
            if !inner.transport.active() {
                // No driver (or a shadow's device before its takeover):
                // what arrives now is for nobody, and would reach the guest
                // stale later. Drain it.
                self.drain_tap(&mut inner, &mut buf);
                continue;
            }
            let mut interrupt = self.tx(&mut inner);
            interrupt |= self.rx(&mut inner, &mut buf);
            interrupt |= self.ctrl(&mut inner);
            if interrupt {
                inner.transport.interrupt_status |= VIRTIO_MMIO_INT_VRING;
                if let Err(e) = self.irq.write(1) {
                    tracing::warn!("{}: raising the interrupt: {e}", self.name);
                }
            }
        }
    }

    fn drain_tap(&self, inner: &mut Inner, buf: &mut [u8]) {
        while inner.tap_readable && !inner.tap_gone {
            match self.tap.read_frame(buf) {
                Ok(0) => inner.tap_gone = true,
                Ok(_) => inner.counters.rx_dropped += 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => inner.tap_readable = false,
            }
        }
    }

    fn inside(&self) -> impl Fn(u64, u32) -> bool + '_ {
        |a, l| self.ram.mem.get_slice(GuestAddress(a), l as usize).is_ok()
    }

    fn refused(&self, inner: &mut Inner, what: &str) {
        inner.counters.bad_chains += 1;
        let n = inner.counters.bad_chains;
        if n <= LOG_FIRST || n.is_multiple_of(1000) {
            tracing::warn!("{}: {what} (refused chains so far: {n})", self.name);
        }
    }

    fn used(&self, inner: &mut Inner, q: usize, head: u16, len: u32) -> bool {
        let mem = &self.ram.mem;
        let queue = &mut inner.transport.queues[q];
        if let Err(e) = queue.add_used(mem, head, len) {
            tracing::error!(
                "{}: used ring of queue {q}: {e}; the device fails",
                self.name
            );
            inner.transport.fail();
            return true;
        }
        queue.needs_notification(mem).unwrap_or(true)
    }

    /// Whether a transmit header asks only for offloads the driver negotiated.
    fn header_ok(acked: u64, hdr: &[u8]) -> bool {
        let has = |f: u32| acked & (1u64 << f) != 0;
        let flags = u32::from(hdr[0]);
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(VIRTIO_NET_F_CSUM) {
            return false;
        }
        match u32::from(hdr[1]) {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        }
    }

    /// Moves transmitted frames into the gate until the queue is empty or
    /// the gate is full; every chain completes at once.
    fn tx(&self, inner: &mut Inner) -> bool {
        let ram = self.ram.clone();
        let mem = &ram.mem;
        let acked = inner.transport.acked_features();
        let mut interrupt = false;
        loop {
            if !inner.transport.active() {
                // The device failed (NEEDS_RESET): take nothing more.
                break;
            }
            if self.gate.lock().unwrap_or_else(|e| e.into_inner()).full() {
                // The guest's ring fills and it waits, as on a busy NIC; a
                // commit that drains the gate kicks this thread.
                break;
            }
            let Some(c) = inner.transport.queues[TXQ].pop_descriptor_chain(mem) else {
                break;
            };
            let (head, segs) = segs_of(c);
            match chain::tx_len(&segs, self.inside()) {
                Ok(len) => {
                    let mut frame = vec![0u8; len];
                    let mut at = 0;
                    let mut ok = true;
                    for s in &segs {
                        let end = at + s.len as usize;
                        ok &= mem
                            .read_slice(&mut frame[at..end], GuestAddress(s.addr))
                            .is_ok();
                        at = end;
                    }
                    if !ok {
                        self.refused(inner, "a transmit buffer could not be read");
                    } else if !Self::header_ok(acked, &frame[..VNET_HDR_LEN]) {
                        inner.counters.bad_headers += 1;
                        self.refused(
                            inner,
                            "a transmitted frame asks for an offload the driver did not negotiate; dropped",
                        );
                    } else {
                        inner.counters.tx_frames += 1;
                        self.gate
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .emit(frame.into());
                    }
                }
                Err(bad) => self.refused(inner, &format!("transmit chain {head}: {bad}; dropped")),
            }
            interrupt |= self.used(inner, TXQ, head, 0);
        }
        interrupt
    }

    /// Serves the control queue (§5.1.6.5): `{class, command}`, data, and
    /// an ack byte. Only ANNOUNCE_ACK is a command this device knows (it
    /// clears VIRTIO_NET_S_ANNOUNCE); anything else is answered with
    /// VIRTIO_NET_ERR. A chain with no header or no ack byte is refused.
    fn ctrl(&self, inner: &mut Inner) -> bool {
        if inner.transport.acked_features() & (1u64 << VIRTIO_NET_F_CTRL_VQ) == 0 {
            return false;
        }
        let ram = self.ram.clone();
        let mem = &ram.mem;
        let mut interrupt = false;
        while let Some(c) = inner.transport.queues[CTRLQ].pop_descriptor_chain(mem) {
            let (head, segs) = segs_of(c);
            // No layout is assumed (§2.7.4): the header is the first two
            // readable bytes wherever they lie, the ack the last writable.
            let mut hdr = Vec::with_capacity(2);
            for s in segs.iter().filter(|s| !s.write) {
                let n = (2 - hdr.len()).min(s.len as usize);
                let mut b = vec![0u8; n];
                if n == 0 || mem.read_slice(&mut b, GuestAddress(s.addr)).is_err() {
                    break;
                }
                hdr.extend_from_slice(&b);
            }
            let ack = segs
                .iter()
                .rev()
                .find(|s| s.write && s.len >= 1)
                .map(|s| s.addr + u64::from(s.len) - 1);
            let (Some(ack), 2) = (ack, hdr.len()) else {
                self.refused(
                    inner,
                    &format!("control chain {head} has no header or no ack byte"),
                );
                interrupt |= self.used(inner, CTRLQ, head, 0);
                continue;
            };
            let answer = if u32::from(hdr[0]) == VIRTIO_NET_CTRL_ANNOUNCE
                && u32::from(hdr[1]) == VIRTIO_NET_CTRL_ANNOUNCE_ACK
            {
                self.cfg.set_announce(false);
                // The configuration changed: a new generation (§2.5.1), no
                // interrupt (the driver asked for it).
                inner.transport.bump_config_generation();
                VIRTIO_NET_OK
            } else {
                VIRTIO_NET_ERR
            };
            let _ = mem.write_slice(&[answer as u8], GuestAddress(ack));
            interrupt |= self.used(inner, CTRLQ, head, 1);
        }
        interrupt
    }

    /// Delivers frames from the TAP (and a pending one) until the TAP is
    /// empty or the guest has no receive buffer.
    fn rx(&self, inner: &mut Inner, buf: &mut [u8]) -> bool {
        let mut interrupt = false;
        loop {
            let n = if let Some(p) = inner.rx_pending.take() {
                buf[..p.len()].copy_from_slice(&p);
                p.len()
            } else {
                if !inner.tap_readable || inner.tap_gone {
                    break;
                }
                match self.tap.read_frame(buf) {
                    Ok(n) if n > VNET_HDR_LEN => n,
                    Ok(0) => {
                        // End of file: the other side is gone (a TAP never
                        // says this; a socket's peer closing does). Reading
                        // on would spin.
                        tracing::error!(
                            "{}: TAP {:?} reached its end; the NIC receives nothing more",
                            self.name,
                            self.tap.name
                        );
                        inner.tap_gone = true;
                        break;
                    }
                    Ok(_) => continue, // a runt: nothing to deliver
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        inner.tap_readable = false;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(
                            "{}: reading TAP {:?} failed ({e}); the NIC receives nothing more",
                            self.name,
                            self.tap.name
                        );
                        inner.tap_gone = true;
                        break;
                    }
                }
            };
            match self.deliver(inner, &mut buf[..n]) {
                Some(irq) => interrupt |= irq,
                None => {
                    inner.rx_pending = Some(buf[..n].to_vec());
                    break;
                }
            }
        }
        interrupt
    }

    /// Writes one frame into receive buffers: `None` if the guest has not
    /// posted enough (the queue is left as it was), else whether to
    /// interrupt.
    fn deliver(&self, inner: &mut Inner, frame: &mut [u8]) -> Option<bool> {
        let ram = self.ram.clone();
        let mem = &ram.mem;
        let mrg = inner.transport.acked_features() & (1u64 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut interrupt = false;
        let mut chains: Vec<(u16, Vec<Seg>, usize)> = Vec::new();
        let mut room = 0usize;
        while room < frame.len() {
            let Some(c) = inner.transport.queues[RXQ].pop_descriptor_chain(mem) else {
                // Not enough buffers yet: put back what was taken.
                for _ in &chains {
                    inner.transport.queues[RXQ].go_to_previous_position();
                }
                return None;
            };
            let (head, segs) = segs_of(c);
            match chain::rx_room(&segs, self.inside()) {
                Ok(r) if !mrg && r < frame.len() => {
                    // Without mergeable buffers one buffer must hold it all.
                    inner.counters.rx_dropped += 1;
                    self.refused(
                        inner,
                        &format!(
                            "receive buffer {head} of {r} bytes cannot hold a {}-byte frame; the frame is dropped",
                            frame.len()
                        ),
                    );
                    interrupt |= self.used(inner, RXQ, head, 0);
                    return Some(interrupt);
                }
                Ok(r) => {
                    room += r;
                    chains.push((head, segs, r));
                }
                Err(bad) => {
                    // The frame is dropped; every buffer taken for it goes
                    // back to the driver empty.
                    inner.counters.rx_dropped += 1;
                    self.refused(
                        inner,
                        &format!("receive chain {head}: {bad}; a frame is dropped"),
                    );
                    for (h, _, _) in &chains {
                        interrupt |= self.used(inner, RXQ, *h, 0);
                    }
                    interrupt |= self.used(inner, RXQ, head, 0);
                    return Some(interrupt);
                }
            }
        }
        // virtio_net_hdr_v1.num_buffers (1 without MRG_RXBUF).
        frame[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut at = 0usize;
        let mut lens = Vec::with_capacity(chains.len());
        for (_, segs, _) in &chains {
            let start = at;
            for s in segs {
                if at == frame.len() {
                    break;
                }
                let n = (s.len as usize).min(frame.len() - at);
                // Checked inside guest memory by rx_room.
                let _ = mem.write_slice(&frame[at..at + n], GuestAddress(s.addr));
                at += n;
            }
            lens.push((at - start) as u32);
        }
        // The used elements of all but the last buffer are written first,
        // and the used index moves once, with the last: a driver never sees
        // part of a merged packet (virtio-queue's add_used publishes each).
        let q = &mut inner.transport.queues[RXQ];
        let (ring, size, next) = (q.used_ring(), q.size().max(1), q.next_used());
        for (i, ((head, _, _), len)) in chains.iter().zip(&lens).enumerate().rev().skip(1) {
            let slot = u64::from(next.wrapping_add(i as u16) % size);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(*head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let _ = mem.write_slice(&elem, GuestAddress(ring + 4 + slot * 8));
        }
        q.set_next_used(next.wrapping_add(chains.len() as u16 - 1));
        let (last, _, _) = chains.last().expect("at least one chain holds the frame");
        interrupt |= self.used(inner, RXQ, *last, *lens.last().expect("one per chain"));
        inner.counters.rx_frames += 1;
        Some(interrupt)
    }
}
