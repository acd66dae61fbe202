//! The primary: checkpoints the running VM every interval and streams the
//! epochs to the shadow; releases console output when its epoch is acked.
//!
//! Threads: the supervisor calls [`Replicator::tick`] (pause, capture,
//! resume, encode, hand over); a sender thread writes epoch frames; an ack
//! thread reads acks and releases held output; a heartbeat thread runs its
//! own connection so heartbeats never queue behind page traffic.
//!
//! The guest runs speculatively ahead: epoch e+1 executes while e is sent
//! and acknowledged (up to `max_outstanding` epochs in flight).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checkpoint::dirty::{DirtyLedger, Harvest};
use checkpoint::format::Header;
use checkpoint::pages::Compression;
use crossbeam::channel;
use transport::{Channel, FramedConn, HandshakeParams, Psk, TransportError};

use super::arbitration::{Arbitration, FenceConfig};
use super::fencing::{FenceAction, FenceInput};
use super::link::{self, Body, Link, LinkShared, Outgoing};
use super::policy::EpochPolicy;
pub use super::stats::{percentile, stats_json, summary, EpochFigures, ReplicationStats};
use super::wire::{self, EpochEnd, FenceInfo};
use super::Timing;
use crate::capture;
use crate::devices::DeviceManager;
use crate::error::{EngineError, Result};
use crate::memory::PAGE_SIZE;
use crate::runner::Periodic;
use crate::vm::{PauseGuard, Vm};

/// How a protected VM replicates.
pub struct PrimaryConfig {
    /// The standby's address.
    pub shadow: String,
    /// The pre-shared key.
    pub psk: Psk,
    /// Epoch interval.
    pub interval: Duration,
    /// Longest interval the epoch policy may stretch to while the shadow
    /// falls behind (see `policy.rs`).
    pub max_interval: Duration,
    /// Heartbeats and timeouts.
    pub timing: Timing,
    /// Page compression.
    pub compression: Compression,
    /// Bytes of the XOR-delta cache of pages sent before (0: no deltas).
    pub delta_cache_bytes: u64,
    /// Epochs in flight before the next one waits.
    pub max_outstanding: usize,
    /// Time between reconnection attempts while unprotected.
    pub retry: Duration,
    /// This primary's term.
    pub term: u64,
    /// Test mode: hash all guest memory at every epoch for the shadow to compare.
    pub verify_memory: bool,
    /// How long to wait for the shadow before starting the guest unprotected.
    pub wait_shadow: Duration,
    /// The arbiter that fences this primary (`None`: `--arbiter none`).
    pub fencing: Option<FenceConfig>,
}

/// Page and container buffers kept for reuse between captures and sends.
pub const PAGE_POOL: usize = 4;

/// Epochs in flight (sent, not yet acknowledged) by default.
pub const MAX_OUTSTANDING: usize = 2;

/// The replication loop of a protected VM.
pub struct Replicator {
    cfg: PrimaryConfig,
    ledger: DirtyLedger,
    link: Option<Link>,
    next_epoch: Instant,
    next_connect: Instant,
    /// When this replicator was made (the origin of `EpochFigures::at`).
    created: Instant,
    /// While an epoch is due but waits for an ack: when to tick again.
    stall_poll: Option<Instant>,
    /// The epoch interval in force.
    policy: EpochPolicy,
    seq: u64,
    need_full: bool,
    pending: VecDeque<(u64, Harvest)>,
    /// The next epoch is the first committed one after a sync: start holding output.
    first_commit: bool,
    /// The shadow has committed an epoch of the current sync: a failure of
    /// the primary's disk can be handed over to it.
    shadow_committed: bool,
    devices: Arc<DeviceManager>,
    /// Page buffers the sender thread hands back once an epoch is encoded.
    pool: (channel::Sender<Vec<u8>>, channel::Receiver<Vec<u8>>),
    /// Figures so far.
    pub stats: ReplicationStats,
    announced_unprotected: bool,
    /// The fence and its arbiter (`None`: `--arbiter none`).
    fence: Option<Arbitration>,
    /// What the shadow of the current sync needs to claim the VM.
    fence_info: Option<FenceInfo>,
    /// What the fence said last, for the supervisor's thread to act on.
    fence_action: Option<FenceAction>,
}

fn terr(e: TransportError) -> EngineError {
    EngineError::Transport(e)
}

#[path = "primary_sync.rs"]
mod sync;

impl Replicator {
    /// A replicator for `vm` (not connected yet: the first tick connects).
    pub fn new(vm: &Vm, cfg: PrimaryConfig) -> Replicator {
        let mut cfg = cfg;
        let fence = cfg.fencing.take().map(|f| Arbitration::new(f, cfg.term));
        let policy = EpochPolicy::new(cfg.interval, cfg.max_interval);
        Replicator {
            cfg,
            ledger: DirtyLedger::new(&vm.ledger_regions()),
            link: None,
            next_epoch: Instant::now(),
            next_connect: Instant::now(),
            created: Instant::now(),
            stall_poll: None,
            policy,
            seq: 0,
            need_full: true,
            pending: VecDeque::new(),
            first_commit: false,
            shadow_committed: false,
            devices: vm.devices.clone(),
            pool: channel::bounded(PAGE_POOL),
            stats: ReplicationStats::default(),
            announced_unprotected: false,
            fence,
            fence_info: None,
            fence_action: None,
        }
    }

    /// Whether a shadow currently protects the VM.
    pub fn protected(&self) -> bool {
        self.link.is_some() && !self.need_full
    }

    fn connect(&mut self, vm: &Vm) -> Result<()> {
        let fp = *vm.machine.fingerprint().as_bytes();
        let params = |channel| HandshakeParams {
            psk: &self.cfg.psk,
            protocol_version: transport::PROTOCOL_VERSION,
            fingerprint: Some(fp),
            channel,
            term: self.cfg.term,
            any_channel: false,
        };
        let timeout = Duration::from_millis(500);
        let (hb, _) = FramedConn::connect(&self.cfg.shadow, &params(Channel::Heartbeat), timeout)
            .map_err(terr)?;
        let (stream, _) = FramedConn::connect(&self.cfg.shadow, &params(Channel::Stream), timeout)
            .map_err(terr)?;
        // The arbiter records the shadow as this primary's spare before the
        // sync: from then on a spare holding a commit of this sync may take
        // over, and output is released only on its acks or once the arbiter
        // records this primary as unprotected again.
        if let Some(f) = self.fence.as_mut() {
            match f.protect(&self.cfg.shadow)? {
                Some(info) => self.fence_info = Some(info),
                None => {
                    return Err(EngineError::Config(format!(
                        "the arbiter {} did not answer: not syncing the shadow yet",
                        f.describe()
                    )))
                }
            }
        }
        let shared = Arc::new(LinkShared {
            lost: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            inflight: Mutex::new(VecDeque::new()),
            ack_latency: Mutex::new(Vec::new()),
            devices: self.devices.clone(),
            io_failover: vm.io_failover.clone(),
            reason: Mutex::new(None),
            superseded: AtomicU64::new(0),
            encoded: Mutex::new(Vec::new()),
        });
        let (tx, rx) = channel::bounded::<Outgoing>(self.cfg.max_outstanding.max(1));
        let (send_half, recv_half) = stream.split();
        // A shadow that stops reading (host gone without a reset) must not
        // block the sender, and with it a link teardown, for TCP's retry
        // time: a send that waits this long fails and loses the link.
        send_half
            .set_write_timeout(Some(
                (self.cfg.timing.timeout * 4).max(Duration::from_secs(1)),
            ))
            .map_err(terr)?;
        recv_half
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(terr)?;
        let term = self.cfg.term;
        let mut threads = Vec::new();
        let s = shared.clone();
        let enc = link::EncoderConfig {
            compression: self.cfg.compression,
            delta_cache_bytes: self.cfg.delta_cache_bytes,
        };
        let (machine, pool) = (vm.machine.clone(), self.pool.0.clone());
        threads.push(link::spawn("hs-send", move || {
            link::sender(send_half, rx, term, s, machine, enc, pool)
        })?);
        let s = shared.clone();
        threads.push(link::spawn("hs-ack", move || link::acker(recv_half, s))?);
        let hb_stop = Arc::new(AtomicBool::new(false));
        let hb_goodbye = Arc::new(AtomicBool::new(false));
        let hb_protected = Arc::new(AtomicBool::new(true));
        let (s, stop, bye, prot, timing) = (
            shared.clone(),
            hb_stop.clone(),
            hb_goodbye.clone(),
            hb_protected.clone(),
            self.cfg.timing,
        );
        threads.push(link::spawn("hs-heartbeat", move || {
            link::heartbeat(hb, term, timing, s, stop, bye, prot)
        })?);
        self.link = Some(Link {
            shared,
            tx: Some(tx),
            threads,
            hb_stop,
            hb_goodbye,
            hb_protected,
        });
        self.need_full = true;
        Ok(())
    }

    /// Tears the link down; unacked epochs' dirty bits go back and held output is released.
    fn drop_link(&mut self, why: &str) {
        self.stall_poll = None;
        // The term the shadow says it took the VM over in (0: it did not).
        let mut superseded_by = 0;
        if let Some(mut link) = self.link.take() {
            superseded_by = link.shared.superseded.load(Ordering::SeqCst);
            link.hb_protected.store(false, Ordering::SeqCst);
            link.shared.lose(why.to_string());
            link.tx.take();
            link.hb_stop.store(true, Ordering::SeqCst);
            for t in link.threads.drain(..) {
                let _ = t.join();
            }
            self.collect(&link.shared);
        }
        while let Some((_, h)) = self.pending.pop_front() {
            if let Err(e) = self.ledger.put_back(h) {
                tracing::error!("putting dirty bits back failed: {e}");
            }
        }
        self.need_full = true;
        self.shadow_committed = false;
        self.stats.shadow_losses += 1;
        match self.fence.as_mut() {
            Some(f) => {
                // Output stays held until the arbiter records this primary
                // as unprotected: the shadow may be claiming the VM.
                self.devices.hold_outputs(true);
                eprintln!(
                    "hotspare: SHADOW LOST ({why}): output HELD while the arbiter {} decides",
                    f.describe()
                );
                // A shadow that says it took over needs no question to
                // the arbiter: the fence stops at once.
                self.fence_action = Some(f.step(if superseded_by > self.cfg.term {
                    FenceInput::SupersededBy(superseded_by)
                } else {
                    FenceInput::ShadowLost
                }));
            }
            None => {
                self.devices.hold_outputs(false);
                tracing::error!(
                    "SHADOW LOST ({why}): the VM now runs UNPROTECTED; reconnecting to {}",
                    self.cfg.shadow
                );
                if superseded_by > self.cfg.term {
                    self.fence_action = Some(FenceAction::Stop(format!(
                        "the shadow took the VM over in term {superseded_by}"
                    )));
                }
            }
        }
        self.announced_unprotected = true;
        self.next_connect = Instant::now() + self.cfg.retry;
    }

    /// Moves a link's ack latencies and encode figures into the run's stats.
    fn collect(&mut self, shared: &LinkShared) {
        self.stats.ack_latency.extend(
            shared
                .ack_latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..),
        );
        let n = self.stats.ack_latency.len();
        if n > super::FIGURES_KEPT {
            self.stats.ack_latency.drain(..n - super::FIGURES_KEPT);
        }
        for x in shared
            .encoded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            if let Some(e) = self.stats.epochs.iter_mut().rev().find(|e| e.seq == x.seq) {
                e.raw_bytes = x.raw_bytes;
                e.wire_bytes = x.wire_bytes;
                e.encode = x.encode;
                e.delta_pages = x.delta_pages;
            }
        }
    }

    fn settle_acks(&mut self) {
        let Some(link) = &self.link else {
            return;
        };
        let acked = link.shared.acked.load(Ordering::SeqCst);
        while self.pending.front().is_some_and(|(s, _)| *s <= acked) {
            if let Some((_, h)) = self.pending.pop_front() {
                self.ledger.commit(h);
                // An epoch (never a pre-copy round) is committed on the shadow.
                self.shadow_committed = true;
            }
        }
    }

    /// Captures and ships one epoch.
    fn epoch(&mut self, vm: &Vm) -> Result<()> {
        let guard = vm.pause()?;
        self.epoch_with(vm, guard, false).map(|_| ())
    }

    /// Captures and ships one epoch from a paused VM. With `stay_paused`
    /// the guard is handed back instead of resuming the vCPUs.
    fn epoch_with<'v>(
        &mut self,
        vm: &'v Vm,
        guard: PauseGuard<'v>,
        stay_paused: bool,
    ) -> Result<Option<PauseGuard<'v>>> {
        let full = self.need_full;
        let mut kept = None;
        let (ep, harvest, pause, resume, memory_hash) = {
            let paused_at = guard.paused_at();
            if full || self.first_commit {
                // From here on, output is held until its epoch is acked.
                self.devices.hold_outputs(true);
            }
            let buf = self.pool.1.try_recv().unwrap_or_default();
            let (ep, h) = capture::capture_into(&guard, &mut self.ledger, full, self.seq + 1, buf)?;
            let hash = self
                .cfg
                .verify_memory
                .then(|| wire::memory_hash(&vm.ram, &vm.disks));
            let t = Instant::now();
            if stay_paused {
                kept = Some(guard);
            } else {
                drop(guard);
            }
            (ep, h, paused_at.elapsed(), t.elapsed(), hash)
        };
        self.seq += 1;
        let seq = self.seq;
        let header = if full {
            Header::full(seq, vm.machine.fingerprint())
        } else {
            Header::incremental(seq, seq - 1, vm.machine.fingerprint())
        };
        // Raw/wire bytes and the encode time are filled in from the sender
        // thread's records (`merge_encoded`).
        super::push_bounded(
            &mut self.stats.epochs,
            EpochFigures {
                seq,
                full,
                pause,
                pages: ep.pages.pages(),
                raw_bytes: 0,
                wire_bytes: 0,
                phases: ep.times,
                resume,
                encode: Duration::ZERO,
                at: self.created.elapsed().saturating_sub(pause),
                delta_pages: 0,
                interval: self.policy.interval(),
                disk_blocks: ep.disks.iter().map(|d| d.pages()).sum(),
            },
        );
        tracing::debug!(
            seq,
            full,
            pages = ep.pages.pages(),
            pause_us = pause.as_micros() as u64,
            "epoch captured"
        );
        let link = self.link.as_ref().expect("epoch without a link");
        link.shared.track(seq);
        let released = self
            .devices
            .console()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .released();
        let last_ack_us = link
            .shared
            .ack_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map_or(0, |d| d.as_micros() as u64);
        let mut ep = ep;
        let (output_start, output) = std::mem::take(&mut ep.output);
        let pages = ep.pages.pages();
        let out = Outgoing {
            seq,
            precopy: false,
            body: Body::Epoch(header, Box::new(ep)),
            end: EpochEnd {
                seq,
                output_start,
                output,
                released,
                figures: wire::EpochReport {
                    full,
                    pause_us: pause.as_micros() as u64,
                    pages,
                    raw_bytes: 0,
                    last_ack_us,
                },
                memory_hash,
                fence: self.fence_info.clone(),
            },
        };
        self.pending.push_back((seq, harvest));
        if link.tx.as_ref().is_none_or(|tx| tx.send(out).is_err()) {
            link.shared.lose("sender thread gone".into());
        }
        self.need_full = false;
        self.first_commit = false;
        if full {
            tracing::info!(
                "protected: full state sent to shadow {} (epoch {seq})",
                self.cfg.shadow
            );
            self.announced_unprotected = false;
        }
        Ok(kept)
    }

    /// Protects the VM before its guest runs a single instruction: connects
    /// to the shadow (retrying up to `wait`), ships the parked VM's complete
    /// state, and waits for the ack before letting the vCPUs go, so a kill
    /// at any moment after the guest starts leaves a shadow that can resume
    /// it. Without a shadow within `wait` the guest starts unprotected and
    /// the replicator keeps retrying. Returns whether the VM is protected.
    /// The vCPUs must be parked (`Vm::start_parked`).
    pub fn protect_before_start(&mut self, vm: &Vm, wait: Duration) -> Result<bool> {
        if let Some(f) = self.fence.as_mut() {
            self.cfg.term = f.start()?;
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.connect(vm) {
                Ok(()) => break,
                Err(e @ EngineError::Superseded(_)) => return Err(e),
                Err(e) if Instant::now() >= deadline => {
                    eprintln!(
                        "hotspare: no shadow at {} within {wait:?} ({e}): the guest starts UNPROTECTED; retrying",
                        self.cfg.shadow
                    );
                    self.announced_unprotected = true;
                    self.next_connect = Instant::now() + self.cfg.retry;
                    // Let the parked vCPUs go.
                    drop(vm.pause()?);
                    return Ok(false);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let t0 = Instant::now();
        self.need_full = true;
        let guard = vm.pause()?;
        let guard = self.epoch_with(vm, guard, true)?;
        let seq = self.seq;
        let acked = {
            let link = self.link.as_ref().expect("connected above");
            let until = Instant::now() + Duration::from_secs(60);
            while link.shared.acked.load(Ordering::SeqCst) < seq
                && !link.shared.lost.load(Ordering::SeqCst)
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            link.shared.acked.load(Ordering::SeqCst) >= seq
        };
        drop(guard);
        self.next_epoch = Instant::now() + self.policy.interval();
        if !acked {
            // Say why now: a short guest may end before the next tick would.
            let why = self
                .link
                .as_ref()
                .and_then(|l| {
                    l.shared
                        .reason
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                })
                .unwrap_or_else(|| "no ack for the initial state".into());
            eprintln!(
                "hotspare: the shadow did not take the initial state ({why}): the guest starts UNPROTECTED"
            );
            self.drop_link(&why);
            self.act(vm)?;
        }
        if acked {
            let pages = self.stats.epochs.last().map_or(0, |e| e.pages);
            self.stats.protected_before_start = Some((t0.elapsed(), pages * PAGE_SIZE));
            eprintln!(
                "hotspare: protected by shadow {} before the guest started (epoch {seq}, {:.1} ms)",
                self.cfg.shadow,
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(acked)
    }

    /// Ends replication: releases held output and tells the shadow the guest stopped.
    pub fn finish(&mut self) {
        if let Some(mut link) = self.link.take() {
            // Let in-flight epochs drain so their acks release their output.
            let deadline = Instant::now() + Duration::from_millis(500);
            while !link.shared.lost.load(Ordering::SeqCst)
                && link.shared.acked.load(Ordering::SeqCst) < self.seq
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            link.hb_goodbye.store(true, Ordering::SeqCst);
            link.tx.take();
            let deadline = Instant::now() + Duration::from_millis(200);
            while !link.threads.iter().all(|t| t.is_finished()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            link.hb_stop.store(true, Ordering::SeqCst);
            for t in link.threads.drain(..) {
                let _ = t.join();
            }
            self.collect(&link.shared);
        }
        let Some(f) = self.fence.as_mut() else {
            self.devices.hold_outputs(false);
            return;
        };
        // Output still held (epochs not acked, bytes after the last seal)
        // is released only once no spare can take over from an older
        // epoch: the arbiter must record this primary unprotected (if its
        // shadow was lost) and then the VM stopped, in this primary's term.
        // A goodbye alone is not enough: the link may be partitioned.
        if f.deciding() {
            if let a @ (FenceAction::Stop(_) | FenceAction::Continue | FenceAction::Pause) =
                f.decide_now()
            {
                eprintln!(
                    "hotspare: the guest ended with output held and no release from the arbiter ({a:?}): held output is dropped"
                );
                return;
            }
        }
        if f.finish() {
            self.devices.hold_outputs(false);
        } else if self.devices.holding_outputs() {
            eprintln!(
                "hotspare: the arbiter did not record the VM stopped in term {}: output still held is dropped, not released",
                self.cfg.term
            );
        }
    }

    /// Acts, on the supervisor's thread, on what the fence said last.
    fn act(&mut self, vm: &Vm) -> Result<()> {
        match self.fence_action.take() {
            None | Some(FenceAction::Continue) | Some(FenceAction::Ask) => Ok(()),
            Some(FenceAction::Release { .. }) => {
                self.release_unprotected();
                Ok(())
            }
            Some(FenceAction::Stop(why)) => Err(EngineError::Superseded(why)),
            Some(FenceAction::Pause) => self.paused_for_arbiter(vm),
        }
    }

    fn release_unprotected(&mut self) {
        self.devices.hold_outputs(false);
        eprintln!(
            "hotspare: the arbiter recorded this primary (term {}) as UNPROTECTED: held output released; reconnecting to {}",
            self.cfg.term, self.cfg.shadow
        );
    }

    /// The hold bound passed without an answer from the arbiter: the guest
    /// pauses (its output stays held) until the arbiter answers.
    fn paused_for_arbiter(&mut self, vm: &Vm) -> Result<()> {
        let guard = vm.pause()?;
        eprintln!(
            "hotspare: guest PAUSED: the shadow is lost and the arbiter has not answered; output stays held; asking again every {} ms",
            super::fencing::FENCE_TICK_MS
        );
        let t0 = Instant::now();
        loop {
            if vm.shared.stop_reason().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(super::fencing::FENCE_TICK_MS));
            let Some(f) = self.fence.as_mut() else {
                return Ok(());
            };
            match f.step(FenceInput::Tick) {
                FenceAction::Release { .. } => {
                    drop(guard);
                    eprintln!(
                        "hotspare: the arbiter answered after the guest was paused for {:.1} s: guest resumed",
                        t0.elapsed().as_secs_f64()
                    );
                    self.release_unprotected();
                    return Ok(());
                }
                FenceAction::Stop(why) => return Err(EngineError::Superseded(why)),
                _ => {}
            }
        }
    }
}

impl Periodic for Replicator {
    fn next_due(&self) -> Duration {
        let now = Instant::now();
        if self.link.is_none() {
            return self
                .next_connect
                .saturating_duration_since(now)
                .min(Duration::from_millis(5));
        }
        // An epoch waiting for an ack (in-flight limit reached): tick again
        // in 500 µs to settle acks, rather than spinning through ticks.
        if let Some(at) = self.stall_poll {
            return at.saturating_duration_since(now);
        }
        // Wake often enough to notice a lost shadow promptly.
        self.next_epoch
            .saturating_duration_since(now)
            .min(Duration::from_millis(5))
    }

    fn tick(&mut self, vm: &Vm) -> Result<()> {
        let res = self.tick_inner(vm);
        // A disk error with a shadow to hand over to ends the primary, whatever
        // the epoch machinery was doing (a pause fails once the disk failed).
        if let Some(why) = vm.io_failover.failure() {
            return Err(EngineError::HandOver(why));
        }
        let live = self
            .link
            .as_ref()
            .is_some_and(|l| !l.shared.lost.load(Ordering::SeqCst));
        vm.io_failover.set_enabled(self.shadow_committed && live);
        res
    }
}

impl Replicator {
    fn tick_inner(&mut self, vm: &Vm) -> Result<()> {
        if let Some(link) = &self.link {
            if link.shared.lost.load(Ordering::SeqCst) {
                let why = link
                    .shared
                    .reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default();
                self.drop_link(&why);
            }
        }
        self.act(vm)?;
        if let Some(f) = self.fence.as_mut() {
            if f.deciding() {
                self.fence_action = Some(f.step(FenceInput::Tick));
                self.act(vm)?;
                if self.fence.as_ref().is_some_and(|f| f.deciding()) {
                    return Ok(());
                }
            }
        }
        self.settle_acks();
        let now = Instant::now();
        if self.link.is_none() {
            if now < self.next_connect {
                return Ok(());
            }
            if let Err(e) = self.connect(vm) {
                if matches!(e, EngineError::Superseded(_)) {
                    return Err(e);
                }
                if !self.announced_unprotected {
                    tracing::error!(
                        "no shadow at {} ({e}): the VM runs UNPROTECTED; retrying",
                        self.cfg.shadow
                    );
                    self.announced_unprotected = true;
                }
                self.next_connect = now + self.cfg.retry;
                return Ok(());
            }
        }
        if now < self.next_epoch {
            return Ok(());
        }
        if self.pending.len() >= self.cfg.max_outstanding {
            if self.stall_poll.is_none() {
                self.stats.stalled_ticks += 1;
                self.policy.on_stall();
            }
            self.stall_poll = Some(now + Duration::from_micros(500));
            return Ok(());
        }
        self.stall_poll = None;
        // Epochs keep to a fixed grid (next = previous deadline + interval),
        // so the lateness of each wake-up does not add up into a lower rate;
        // after a stall of more than an interval the grid restarts from now
        // instead of firing a burst of back-to-back epochs.
        self.policy.on_epoch();
        let interval = self.policy.interval();
        self.next_epoch += interval;
        if self.next_epoch <= now {
            self.next_epoch = now + interval;
        }
        let res = if self.need_full {
            self.sync(vm)
        } else {
            self.epoch(vm)
        };
        if let Err(e) = res {
            if vm.shared.stop_reason().is_some() {
                return Ok(());
            }
            if let Some(why) = vm.io_failover.failure() {
                // Keep the link as it is: dropping it would tell the shadow
                // its committed state is stale, and it must take over.
                return Err(EngineError::HandOver(why));
            }
            tracing::error!("epoch failed: {e}");
            self.drop_link(&format!("epoch failed: {e}"));
            self.act(vm)?;
        }
        Ok(())
    }
}
