//! Network output commit: the frames a guest transmits wait for the epoch
//! that produced them (`docs/network.md`).
//!
//! Frames are numbered from the VM's first (`pos` counts them, and the
//! device record carries it). While the VM is protected a transmitted frame
//! is held; the capture of epoch `e` seals the frames so far as `e`'s and
//! takes a copy of them for the shadow (`take_epoch`); the commit of `e`
//! writes them to the TAP. The held frames are bounded: when the bound is
//! reached the device stops taking frames off the guest's TX ring (the
//! guest sees a busy NIC) until a commit drains them. No frame is dropped
//! by the gate.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::tap::Tap;
use crate::devices::OutputCommit;

/// One frame, vnet header included.
pub type Frame = Arc<[u8]>;

/// Asks the guest's driver to announce itself (VIRTIO_NET_S_ANNOUNCE and a
/// configuration interrupt); false if it did not negotiate GUEST_ANNOUNCE.
/// It takes the device's lock: call it without holding the gate's.
pub type Announcer = Arc<dyn Fn() -> bool + Send + Sync>;

/// How much transmitted output may be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateLimits {
    /// Held bytes (headers included).
    pub bytes: usize,
    /// Held frames.
    pub frames: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            bytes: 4 << 20,
            frames: 2048,
        }
    }
}

/// Counters of a gate (reported in stats and by tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Frames written to the TAP.
    pub sent: u64,
    /// Frames the TAP refused (the host dropped them, as a wire would).
    pub write_errors: u64,
    /// Times the bound stopped the device taking TX frames.
    pub full: u64,
    /// Most bytes held at once.
    pub max_held_bytes: usize,
    /// Most frames held at once.
    pub max_held_frames: usize,
}

/// The frames one epoch transmitted: `frames[0]` is frame number `start`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochFrames {
    /// Number of the first frame.
    pub start: u64,
    /// The frames, vnet header included.
    pub frames: Vec<Frame>,
}

/// The gate of one NIC.
pub struct NetGate {
    tap: Arc<Tap>,
    holding: bool,
    /// Frames transmitted so far (the number of the next one).
    pos: u64,
    /// Held frames, numbered from `released`.
    held: VecDeque<Frame>,
    released: u64,
    held_bytes: usize,
    /// (epoch, frame number its output ends at).
    seals: VecDeque<(u64, u64)>,
    /// Frames of the running epoch (while holding), for the shadow.
    epoch: Vec<Frame>,
    limits: GateLimits,
    /// Wakes the device thread when a full gate drains.
    wake: Option<EventFd>,
    was_full: bool,
    stats: GateStats,
    /// The last TAP error logged (they are logged once per kind).
    last_error: Option<std::io::ErrorKind>,
    /// The guest's MAC (for announcements).
    mac: [u8; 6],
    /// The guest's IPv4 address, from the ARP frames it sent.
    ipv4: Option<[u8; 4]>,
    guest_announcer: Option<Announcer>,
}

impl NetGate {
    /// A gate writing to `tap`, passing frames straight through until
    /// told to hold.
    pub fn new(tap: Arc<Tap>, limits: GateLimits) -> NetGate {
        NetGate {
            tap,
            holding: false,
            pos: 0,
            held: VecDeque::new(),
            released: 0,
            held_bytes: 0,
            seals: VecDeque::new(),
            epoch: Vec::new(),
            limits,
            wake: None,
            was_full: false,
            stats: GateStats::default(),
            last_error: None,
            mac: [0; 6],
            ipv4: None,
            guest_announcer: None,
        }
    }

    /// The eventfd to signal when a full gate has room again.
    pub fn set_wake(&mut self, wake: EventFd) {
        self.wake = Some(wake);
    }

    /// The guest's MAC, for [`NetGate::announce`] (set by the device).
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.mac = mac;
    }

    /// Sets the device's guest announcer.
    pub fn set_guest_announcer(&mut self, a: Announcer) {
        self.guest_announcer = Some(a);
    }

    /// The device's guest announcer (call it after releasing this gate).
    pub fn guest_announcer(&self) -> Option<Announcer> {
        self.guest_announcer.clone()
    }

    /// The guest's IPv4 address, if it sent an ARP frame.
    pub fn ipv4(&self) -> Option<[u8; 4]> {
        self.ipv4
    }

    /// Sets the learned IPv4 address (a restored device).
    pub fn set_ipv4(&mut self, ip: Option<[u8; 4]>) {
        self.ipv4 = ip;
    }

    /// Announces the guest's MAC on the TAP so switches learn its new
    /// port: a RARP broadcast, as QEMU's announce-self sends after a
    /// migration, and, when the guest's IPv4 address is known, a
    /// gratuitous ARP, so hosts that cached the address update too. Not
    /// held: it says where the guest is, not what it did.
    pub fn announce(&mut self) {
        let f = rarp(self.mac);
        self.send(&f);
        if let Some(ip) = self.ipv4 {
            let f = garp(self.mac, ip);
            self.send(&f);
        }
    }

    /// Learns the guest's IPv4 address from an ARP frame it sends from its
    /// own MAC.
    fn learn(&mut self, frame: &[u8]) {
        let e = &frame[super::tap::VNET_HDR_LEN..];
        if e.len() >= 42
            && e[12..14] == [0x08, 0x06]
            && e[14..22] == [0, 1, 0x08, 0x00, 6, 4, 0, e[21]]
            && e[22..28] == self.mac
        {
            let ip: [u8; 4] = e[28..32].try_into().expect("4 bytes");
            if ip != [0; 4] {
                self.ipv4 = Some(ip);
            }
        }
    }

    /// Frames transmitted so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Frames up to this number have been written to the TAP (or passed
    /// through unheld).
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Counters.
    pub fn stats(&self) -> GateStats {
        self.stats
    }

    /// The bounds.
    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    /// Whether the device must stop taking TX frames. Counted once per
    /// time the gate fills.
    pub fn full(&mut self) -> bool {
        let full = self.holding
            && (self.held_bytes >= self.limits.bytes || self.held.len() >= self.limits.frames);
        if full && !self.was_full {
            self.stats.full += 1;
        }
        self.was_full |= full;
        full
    }

    /// Whether frames wait to be released (for output-triggered epochs).
    pub fn has_pending(&self) -> bool {
        !self.held.is_empty()
    }

    /// A frame the guest transmitted.
    pub fn emit(&mut self, frame: Frame) {
        self.pos += 1;
        self.learn(&frame);
        if !self.holding {
            self.released = self.pos;
            self.send(&frame);
            return;
        }
        self.held_bytes += frame.len();
        self.epoch.push(frame.clone());
        self.held.push_back(frame);
        self.stats.max_held_bytes = self.stats.max_held_bytes.max(self.held_bytes);
        self.stats.max_held_frames = self.stats.max_held_frames.max(self.held.len());
    }

    /// The frames of the epoch being captured (called in the pause, before
    /// the seal), numbered.
    pub fn take_epoch(&mut self) -> EpochFrames {
        let frames = std::mem::take(&mut self.epoch);
        EpochFrames {
            start: self.pos - frames.len() as u64,
            frames,
        }
    }

    /// Continues at frame number `pos` (a restored device), with nothing held.
    pub fn reset_position(&mut self, pos: u64) {
        self.pos = pos;
        self.released = pos;
        self.held.clear();
        self.held_bytes = 0;
        self.seals.clear();
        self.epoch.clear();
        self.was_full = false;
    }

    /// Writes committed frames a takeover releases (the old primary may
    /// not have): straight to the TAP, in order.
    pub fn send_committed<F: AsRef<[u8]>>(&mut self, frames: &[F]) {
        for f in frames {
            self.send(f.as_ref());
        }
    }

    fn send(&mut self, frame: &[u8]) {
        match self.tap.write_frame(frame) {
            Ok(()) => self.stats.sent += 1,
            Err(e) => {
                self.stats.write_errors += 1;
                if self.last_error != Some(e.kind()) {
                    self.last_error = Some(e.kind());
                    tracing::warn!(
                        "TAP {:?}: a frame of {} bytes was not sent: {e} (further errors of this kind are counted, not logged)",
                        self.tap.name,
                        frame.len()
                    );
                }
            }
        }
    }

    fn release_to(&mut self, upto: u64) {
        let n = upto
            .saturating_sub(self.released)
            .min(self.held.len() as u64) as usize;
        for _ in 0..n {
            let f = self.held.pop_front().expect("counted");
            self.held_bytes -= f.len();
            self.send(&f);
        }
        self.released += n as u64;
        if self.was_full
            && self.held_bytes < self.limits.bytes
            && self.held.len() < self.limits.frames
        {
            self.was_full = false;
            if let Some(w) = &self.wake {
                if let Err(e) = w.write(1) {
                    tracing::warn!("TAP {:?}: waking the device: {e}", self.tap.name);
                }
            }
        }
    }
}

/// A RARP "reverse request" from `mac` for itself, broadcast, with a zero
/// vnet header in front (the form QEMU's announce-self uses).
pub fn rarp(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; super::tap::VNET_HDR_LEN + 60];
    let e = &mut f[super::tap::VNET_HDR_LEN..];
    e[..6].fill(0xff);
    e[6..12].copy_from_slice(&mac);
    e[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
    e[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    e[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    e[18] = 6;
    e[19] = 4;
    e[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    e[22..28].copy_from_slice(&mac);
    e[32..38].copy_from_slice(&mac);
    f
}

/// A gratuitous ARP: a broadcast request from `mac` for its own `ip`,
/// with a zero vnet header in front.
pub fn garp(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; super::tap::VNET_HDR_LEN + 60];
    let e = &mut f[super::tap::VNET_HDR_LEN..];
    e[..6].fill(0xff);
    e[6..12].copy_from_slice(&mac);
    e[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    e[14..16].copy_from_slice(&1u16.to_be_bytes());
    e[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    e[18] = 6;
    e[19] = 4;
    e[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    e[22..28].copy_from_slice(&mac);
    e[28..32].copy_from_slice(&ip);
    e[38..42].copy_from_slice(&ip);
    f
}

impl OutputCommit for NetGate {
    fn seal(&mut self, seq: u64) {
        if !self.holding {
            // Unheld frames are sent at once: nothing to release later
            // (and no seal list growing while the VM is unprotected).
            return;
        }
        let pos = self.pos;
        match self.seals.back_mut() {
            Some((s, end)) if *s == seq => *end = pos,
            _ => self.seals.push_back((seq, pos)),
        }
    }

    fn release(&mut self, seq: u64) {
        let mut upto = None;
        while let Some(&(s, end)) = self.seals.front() {
            if s > seq {
                break;
            }
            upto = Some(end);
            self.seals.pop_front();
        }
        if let Some(u) = upto {
            self.release_to(u);
        }
    }

    fn set_holding(&mut self, hold: bool) {
        if !hold {
            let pos = self.pos;
            self.release_to(pos);
            self.seals.clear();
            self.epoch.clear();
        }
        self.holding = hold;
    }

    fn holding(&self) -> bool {
        self.holding
    }
}
