//! The primary: checkpoints the running VM every interval and streams each
//! epoch, encoded once, to every spare; releases held output once every
//! synchronous spare of the commit set acknowledged its epoch.
//!
//! Threads: the supervisor calls [`Replicator::tick`] (pause, capture,
//! resume, hand over); the encoder thread encodes each epoch once and fans
//! it out; per spare, a sender thread writes epoch frames (after a joiner's
//! live copy), an ack thread feeds the commit set, and a heartbeat thread
//! runs its own connection. `spares.rs` connects, joins and loses spares.
//!
//! The guest runs speculatively ahead: epoch e+1 executes while e is sent
//! and acknowledged (up to `max_outstanding` epochs in flight).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checkpoint::dirty::DirtyLedger;
use checkpoint::format::Header;
use checkpoint::pages::Compression;
use crossbeam::channel;
use transport::Psk;

use super::arbitration::{Arbitration, FenceConfig};
pub use super::commit::Kind;
use super::commit::{AfterDrop, CommitSet};
use super::fencing::{FenceAction, FenceInput};
use super::link::{self, Commit, EncodeJob, Fanout};
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

/// A spare the primary streams to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowSpec {
    /// The standby's address (also its name in the arbiter's record).
    pub addr: String,
    /// Synchronous (gates output) or asynchronous (distant).
    pub kind: Kind,
}

/// How a protected VM replicates.
pub struct PrimaryConfig {
    /// The spares.
    pub shadows: Vec<ShadowSpec>,
    /// The pre-shared key.
    pub psk: Arc<Psk>,
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
    /// Output-triggered epochs: with NIC frames held and every epoch
    /// acked, an epoch is due this long after the last capture (ZERO: off).
    pub min_interval: Duration,
    /// Time between reconnection attempts to a lost spare.
    pub retry: Duration,
    /// This primary's term.
    pub term: u64,
    /// Test mode: hash all guest memory at every epoch for the shadow to compare.
    pub verify_memory: bool,
    /// How long to wait for the spares before starting the guest unprotected.
    pub wait_shadow: Duration,
    /// The arbiter that fences this primary (`None`: `--arbiter none`).
    pub fencing: Option<FenceConfig>,
    /// Most container bytes queued for an asynchronous spare before it is
    /// dropped as too far behind (it then rejoins with a fresh live copy).
    pub async_max_queued: u64,
    /// After a takeover: the epoch the VM resumed from, and the spares that
    /// may hold exactly that state (the old record's); they continue with
    /// increments instead of a live copy if they do.
    pub resumed: Option<(u64, Vec<String>)>,
    /// Commands from the control socket (`--control`), answered between
    /// epochs.
    pub control: Option<crate::control::Inbox>,
}

/// Page and container buffers kept for reuse between captures and sends.
pub const PAGE_POOL: usize = 4;

/// Epochs in flight (sent, not yet acknowledged) by default.
pub const MAX_OUTSTANDING: usize = 2;

/// Default bound of an asynchronous spare's queue.
pub const ASYNC_MAX_QUEUED: u64 = 256 << 20;

/// The encoder thread and its inbox.
struct Encoder {
    tx: Option<channel::Sender<EncodeJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The replication loop of a protected VM.
pub struct Replicator {
    cfg: PrimaryConfig,
    psk: Arc<Psk>,
    fingerprint: checkpoint::fingerprint::Fingerprint,
    ledger: DirtyLedger,
    spares: Vec<spares::Spare>,
    commit: Arc<Commit>,
    fanout: Arc<Fanout>,
    encoder: Encoder,
    next_id: u64,
    next_epoch: Instant,
    /// When the last capture was taken (for output-triggered epochs).
    last_capture: Instant,
    /// When this replicator was made (the origin of `EpochFigures::at`).
    created: Instant,
    /// While an epoch is due but waits for an ack: when to tick again.
    stall_poll: Option<Instant>,
    /// The epoch interval in force.
    policy: EpochPolicy,
    seq: u64,
    /// A spare joined since the last capture: the delta cache restarts.
    reset_delta: bool,
    /// The next capture is the first of the VM's life (the parked start):
    /// output is held from it on.
    initial: bool,
    devices: Arc<DeviceManager>,
    /// The NICs' output gates (their released positions go to the spares).
    nets: Vec<Arc<std::sync::Mutex<crate::devices::virtio::net::NetGate>>>,
    io_failover: Arc<crate::devices::virtio::block::IoFailover>,
    /// Page buffers the encoder hands back once an epoch is encoded.
    pool: (channel::Sender<Vec<u8>>, channel::Receiver<Vec<u8>>),
    /// Figures so far.
    pub stats: ReplicationStats,
    /// The fence and its arbiter (`None`: `--arbiter none`).
    fence: Option<Arbitration>,
    /// What every epoch tells the spares about their fence.
    fence_base: Option<FenceInfo>,
    /// What the fence said, for the supervisor's thread to act on.
    fence_actions: Vec<FenceAction>,
    /// Synchronous joiners the arbiter just recorded before the epoch that
    /// starts protection: members from that capture on.
    protecting: Vec<u64>,
    /// Members of the commit set the arbiter does not name yet.
    unrecorded: Vec<String>,
    /// The last epoch whose vCPUs were resumed, and when its pause began:
    /// its pause as the guest saw it is known once the vCPU threads ran.
    guest_pause_of: Option<(u64, Instant, u64)>,
    /// Asynchronous spares to add to the record.
    async_add: Vec<(u64, String)>,
    next_record: Instant,
    announced_unprotected: bool,
    /// Ack latencies (µs) for the next epoch event.
    event_acks: Vec<u64>,
    /// When the supervisor last ticked.
    last_tick: Instant,
}

#[path = "spares.rs"]
mod spares;

impl Replicator {
    /// A replicator for `vm` (not connected yet: the first tick connects).
    pub fn new(vm: &Vm, cfg: PrimaryConfig) -> Replicator {
        let mut cfg = cfg;
        let fence = cfg.fencing.take().map(|f| Arbitration::new(f, cfg.term));
        let policy = EpochPolicy::new(cfg.interval, cfg.max_interval);
        let psk = cfg.psk.clone();
        let resumed = cfg.resumed.take();
        let spares = cfg
            .shadows
            .iter()
            .map(|s| {
                let mut spare = spares::Spare::new(s.clone());
                if let Some((seq, names)) = &resumed {
                    if names.contains(&s.addr) {
                        spare.continue_from = Some(*seq);
                    }
                }
                spare
            })
            .collect();
        Replicator {
            psk,
            fingerprint: vm.machine.fingerprint(),
            ledger: DirtyLedger::new(&vm.ledger_regions()),
            spares,
            commit: Arc::new(Commit {
                set: Mutex::new(CommitSet::new()),
                devices: vm.devices.clone(),
            }),
            fanout: Arc::new(Fanout::default()),
            encoder: Encoder {
                tx: None,
                thread: None,
            },
            next_id: 1,
            next_epoch: Instant::now(),
            last_capture: Instant::now(),
            created: Instant::now(),
            stall_poll: None,
            policy,
            // After a takeover epochs continue the old numbering.
            seq: resumed.as_ref().map_or(0, |r| r.0),
            reset_delta: false,
            initial: false,
            devices: vm.devices.clone(),
            nets: vm.nets.clone(),
            io_failover: vm.io_failover.clone(),
            pool: channel::bounded(PAGE_POOL),
            stats: ReplicationStats::default(),
            fence,
            fence_base: None,
            fence_actions: Vec::new(),
            protecting: Vec::new(),
            unrecorded: Vec::new(),
            guest_pause_of: None,
            async_add: Vec::new(),
            next_record: Instant::now(),
            announced_unprotected: false,
            event_acks: Vec::new(),
            last_tick: Instant::now(),
            cfg,
        }
    }

    /// This primary's term (known once `protect_before_start` ran).
    pub fn term(&self) -> u64 {
        self.cfg.term
    }

    /// Whether a synchronous spare currently protects the VM.
    pub fn protected(&self) -> bool {
        self.commit.lock().protected()
    }

    /// The configured spares, for messages.
    pub fn spare_names(&self) -> String {
        self.cfg
            .shadows
            .iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts the encoder thread if it is not running.
    fn ensure_encoder(&mut self, vm: &Vm) -> Result<()> {
        if self.encoder.tx.is_some() {
            return Ok(());
        }
        let (tx, rx) = channel::bounded::<EncodeJob>(self.cfg.max_outstanding.max(1));
        let enc = link::EncoderConfig {
            compression: self.cfg.compression,
            delta_cache_bytes: self.cfg.delta_cache_bytes,
        };
        let (fanout, machine, pool) =
            (self.fanout.clone(), vm.machine.clone(), self.pool.0.clone());
        self.encoder.thread = Some(link::spawn("hs-encode", move || {
            link::encoder(rx, fanout, machine, enc, pool)
        })?);
        self.encoder.tx = Some(tx);
        Ok(())
    }

    /// Releases what dropping `names` from the commit set allows; with no
    /// member left, everything held flows and the VM runs unprotected.
    fn apply_drop(&mut self, names: &[String]) {
        let after = {
            let mut set = self.commit.lock();
            let after = set.dropped(names);
            if let AfterDrop::Protected(Some(r)) = after {
                self.devices.release_outputs(r);
            }
            after
        };
        if after == AfterDrop::Unprotected {
            self.devices.hold_outputs(false);
            crate::events::emit(crate::events::Event::Unprotected {
                why: format!("spares {names:?} left the record"),
            });
            match &self.fence {
                Some(_) => eprintln!(
                    "hotspare: the arbiter recorded this primary (term {}) as UNPROTECTED: held output released; reconnecting to {}",
                    self.cfg.term,
                    self.spare_names()
                ),
                None => tracing::error!(
                    "the VM now runs UNPROTECTED; reconnecting to {}",
                    self.spare_names()
                ),
            }
            self.announced_unprotected = true;
        } else {
            eprintln!(
                "hotspare: spares {names:?} left the record; output is committed by {:?}",
                self.commit.lock().members()
            );
        }
    }

    /// Fills in the last resumed epoch's pause as the guest saw it: from
    /// its start until its vCPU threads took its `Resume` (by the next
    /// epoch they have, unless another pause came between: then nothing is
    /// filled in).
    fn note_guest_pause(&mut self, vm: &Vm) {
        let Some((seq, paused_at, resume)) = self.guest_pause_of.take() else {
            return;
        };
        let Some(back) = vm.shared.resumed_at(resume).filter(|&r| r > paused_at) else {
            return;
        };
        if let Some(e) = self.stats.epochs.iter_mut().rev().find(|e| e.seq == seq) {
            e.guest_pause = Some(back - paused_at);
        }
    }

    /// Captures and ships one epoch.
    fn epoch(&mut self, vm: &Vm) -> Result<()> {
        // Unprotected with a synchronous spare ready: the arbiter records
        // it before its first commit (before the pause: no arbiter round
        // trip inside it), and output is held from this capture on.
        let protect = self.begin_protection(self.seq + 1)?;
        let guard = vm.pause()?;
        self.epoch_with(vm, guard, false, protect).map(|_| ())
    }

    /// Captures and ships one epoch from a paused VM. With `stay_paused`
    /// the guard is handed back instead of resuming the vCPUs.
    fn epoch_with<'v>(
        &mut self,
        vm: &'v Vm,
        guard: PauseGuard<'v>,
        stay_paused: bool,
        protect: bool,
    ) -> Result<Option<PauseGuard<'v>>> {
        self.ensure_encoder(vm)?;
        self.note_guest_pause(vm);
        let full = self.initial;
        let seq = self.seq + 1;
        let mut kept = None;
        let paused_at = guard.paused_at();
        let (ep, pause, resume, memory_hash) = {
            if protect {
                // From here on, output is held until its epoch commits.
                self.devices.hold_outputs(true);
            }
            let buf = self.pool.1.try_recv().unwrap_or_default();
            let (ep, harvest) =
                match capture::capture_into(&guard, &mut self.ledger, full, seq, buf) {
                    Ok(c) => c,
                    Err(e) => {
                        if protect {
                            // Protection did not start: output flows as before.
                            self.devices.hold_outputs(false);
                        }
                        return Err(e);
                    }
                };
            // The epoch goes, in order, to every link; a link that fails to
            // deliver it is dropped and its spare rejoins with a full live
            // copy, so no one needs these dirty bits again.
            self.ledger.commit(harvest);
            // Joiners whose copy finished reading: exact from this capture
            // on (observed while paused, so their reads precede it).
            self.note_copies(seq);
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
            (ep, paused_at.elapsed(), t.elapsed(), hash)
        };
        // Outside the pause: the work of every epoch before this one is
        // done (the encoder and senders finished it during the interval).
        if let Some(m) = crate::cpu::mark_at(seq - 1, Some("hs-main")) {
            super::push_bounded(&mut self.stats.cpu_marks, m);
        }
        self.guest_pause_of = kept
            .is_none()
            .then(|| (seq, paused_at, vm.shared.resumes()));
        // Outside the pause, before any ack of `seq` can arrive (it is not
        // sent yet): the release point, and each sender's first commit.
        if protect {
            let recorded = std::mem::take(&mut self.protecting);
            let joined = self.commit.lock().hold_from(seq, &recorded);
            self.unrecorded.retain(|n| !joined.contains(n));
            for spare in &joined {
                crate::events::emit(crate::events::Event::Protected {
                    spare: spare.clone(),
                    epoch: seq,
                });
            }
        }
        self.publish_commit_from();
        self.seq = seq;
        self.initial = false;
        let header = if full {
            Header::full(seq, vm.machine.fingerprint())
        } else {
            Header::incremental(seq, seq - 1, vm.machine.fingerprint())
        };
        // Raw/wire bytes and the encode time are filled in from the
        // encoder's records (`collect`).
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
                guest_pause: None,
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
        let released = self
            .devices
            .console()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .released();
        let last_ack_us = self
            .stats
            .ack_latency
            .last()
            .map_or(0, |d| d.as_micros() as u64);
        let net_released = self
            .nets
            .iter()
            .map(|g| g.lock().unwrap_or_else(|e| e.into_inner()).released())
            .collect();
        let mut ep = ep;
        let (output_start, output) = std::mem::take(&mut ep.output);
        let net = std::mem::take(&mut ep.net)
            .into_iter()
            .map(|e| wire::NetOutput {
                start: e.start,
                frames: e.frames.iter().map(|f| f.to_vec()).collect(),
            })
            .collect();
        let pages = ep.pages.pages();
        let job = EncodeJob {
            seq,
            header,
            epoch: Box::new(ep),
            end: EpochEnd {
                seq,
                output_start,
                output,
                released,
                net,
                net_released,
                figures: wire::EpochReport {
                    full,
                    pause_us: pause.as_micros() as u64,
                    pages,
                    raw_bytes: 0,
                    last_ack_us,
                },
                memory_hash,
                fence: self.fence_base.clone(),
            },
            reset_delta: std::mem::take(&mut self.reset_delta),
            captured: Instant::now(),
        };
        if self
            .encoder
            .tx
            .as_ref()
            .is_none_or(|tx| tx.send(job).is_err())
        {
            // Every link rejoins with a fresh copy, against a new encoder
            // (with an empty delta cache) started at the next epoch.
            for p in self.fanout.ports().iter() {
                p.shared.lose("the encoder thread is gone".into());
            }
            self.encoder.tx = None;
            if let Some(t) = self.encoder.thread.take() {
                let _ = t.join();
            }
        }
        Ok(kept)
    }

    /// Protects the VM before its guest runs a single instruction: connects
    /// to the spares (retrying up to `wait`), records them in the arbiter,
    /// ships the parked VM's complete state and waits for their acks before
    /// letting the vCPUs go, so a kill at any moment after the guest starts
    /// leaves spares that can resume it. Without any spare within `wait`
    /// the guest starts unprotected and the replicator keeps retrying.
    /// Returns whether the VM is protected. The vCPUs must be parked
    /// (`Vm::start_parked`).
    pub fn protect_before_start(&mut self, vm: &Vm, wait: Duration) -> Result<bool> {
        if let Some(f) = self.fence.as_mut() {
            self.cfg.term = f.start()?;
        }
        let deadline = Instant::now() + wait;
        let mut last_err = String::new();
        loop {
            for i in 0..self.spares.len() {
                if self.spares[i].link.is_some() {
                    continue;
                }
                match self
                    .dial_now(i)
                    .and_then(|c| self.join(vm, i, c, spares::Join::Initial))
                {
                    Ok(()) => {}
                    Err(e @ EngineError::Superseded(_)) => return Err(e),
                    Err(e) => last_err = e.to_string(),
                }
            }
            let connected = self.spares.iter().filter(|s| s.link.is_some()).count();
            if connected == self.spares.len() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (joined, ids): (Vec<String>, Vec<u64>) = self
            .spares
            .iter()
            .filter_map(|s| s.link.as_ref().map(|l| (s, l)))
            .filter(|(s, _)| s.spec.kind == Kind::Sync)
            .map(|(s, l)| (s.spec.addr.clone(), l.shared.id))
            .unzip();
        if self.spares.iter().all(|s| s.link.is_none()) {
            eprintln!(
                "hotspare: no shadow at {} within {wait:?} ({last_err}): the guest starts UNPROTECTED; retrying",
                self.spare_names()
            );
            self.announced_unprotected = true;
            // Let the parked vCPUs go.
            drop(vm.pause()?);
            return Ok(false);
        }
        // The synchronous spares are recorded before their first commit.
        if !joined.is_empty() {
            if let Some(f) = self.fence.as_mut() {
                if !f.protect(&joined)? {
                    return self.start_unprotected(vm, "the arbiter did not answer");
                }
                self.fence_base = f.fence_info()?;
            }
        }
        let t0 = Instant::now();
        self.initial = true;
        self.protecting = ids;
        let guard = vm.pause()?;
        // Output is held from the first instruction on if a synchronous
        // spare may commit this state; asynchronous spares hold nothing.
        let guard = self.epoch_with(vm, guard, true, !joined.is_empty())?;
        let seq = self.seq;
        let until = Instant::now() + Duration::from_secs(60);
        // Distant spares hold nothing back: the guest does not wait for them.
        let pending = || {
            self.spares.iter().any(|s| {
                s.spec.kind == Kind::Sync
                    && s.link.as_ref().is_some_and(|l| {
                        !l.shared.is_lost() && l.shared.acked.load(Ordering::SeqCst) < seq
                    })
            })
        };
        while pending() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(guard);
        self.next_epoch = Instant::now() + self.policy.interval();
        self.settle()?;
        let acked = {
            let set = self.commit.lock();
            set.protected() && set.committed().is_some_and(|c| c >= seq)
        };
        if acked {
            let pages = self.stats.epochs.last().map_or(0, |e| e.pages);
            self.stats.protected_before_start = Some((t0.elapsed(), pages * PAGE_SIZE));
            let members = self.commit.lock().members();
            eprintln!(
                "hotspare: protected by shadow {} before the guest started (epoch {seq}, {:.1} ms)",
                members.join(", "),
                t0.elapsed().as_secs_f64() * 1e3
            );
            for spare in members {
                crate::events::emit(crate::events::Event::Protected { spare, epoch: seq });
            }
        } else {
            let why = if joined.is_empty() {
                "no synchronous spare answered (asynchronous spares hold no output back)"
            } else {
                "the synchronous spares did not all take the initial state; output stays held until they do or leave the record"
            };
            eprintln!("hotspare: the guest starts UNPROTECTED or waiting: {why}");
            crate::events::emit(crate::events::Event::Unprotected { why: why.into() });
            self.act(vm)?;
        }
        Ok(acked)
    }

    /// Starts the parked guest unprotected, dropping the links made.
    fn start_unprotected(&mut self, vm: &Vm, why: &str) -> Result<bool> {
        for i in 0..self.spares.len() {
            self.lose_spare(i, why);
        }
        eprintln!("hotspare: {why}: the guest starts UNPROTECTED; retrying");
        crate::events::emit(crate::events::Event::Unprotected { why: why.into() });
        self.announced_unprotected = true;
        drop(vm.pause()?);
        Ok(false)
    }

    /// Ends replication: releases held output and tells the spares the guest stopped.
    pub fn finish(&mut self) {
        self.stats.nets = self
            .nets
            .iter()
            .map(|g| {
                let g = g.lock().unwrap_or_else(|e| e.into_inner());
                (g.limits(), g.stats())
            })
            .collect();
        // Let in-flight epochs drain so their acks release their output.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let done = {
                let set = self.commit.lock();
                !set.protected() || set.committed().is_some_and(|c| c >= self.seq)
            };
            let lost = self
                .spares
                .iter()
                .any(|s| s.link.as_ref().is_some_and(|l| l.shared.is_lost()));
            if done || lost {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.encoder.tx.take();
        if let Some(t) = self.encoder.thread.take() {
            let _ = t.join();
        }
        self.goodbye_all();
        let Some(f) = self.fence.as_mut() else {
            self.devices.hold_outputs(false);
            return;
        };
        // Output still held (epochs not acked, bytes after the last seal)
        // is released only once no spare can take over from an older
        // epoch: the arbiter must drop lost spares (if any) and then record
        // the VM stopped, in this primary's term. A goodbye alone is not
        // enough: a link may be partitioned.
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

    /// Acts, on the supervisor's thread, on what the fence said.
    fn act(&mut self, vm: &Vm) -> Result<()> {
        for a in std::mem::take(&mut self.fence_actions) {
            match a {
                FenceAction::Continue | FenceAction::Ask => {}
                FenceAction::Release { dropped, .. } => self.apply_drop(&dropped),
                FenceAction::Stop(why) => return Err(EngineError::Superseded(why)),
                FenceAction::Pause => self.paused_for_arbiter(vm)?,
            }
        }
        Ok(())
    }

    /// The hold bound passed without an answer from the arbiter: the guest
    /// pauses (its output stays held) until the arbiter answers.
    fn paused_for_arbiter(&mut self, vm: &Vm) -> Result<()> {
        let guard = vm.pause()?;
        eprintln!(
            "hotspare: guest PAUSED: a spare is lost and the arbiter has not answered; output stays held; asking again every {} ms",
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
                FenceAction::Release { dropped, .. } => {
                    drop(guard);
                    eprintln!(
                        "hotspare: the arbiter answered after the guest was paused for {:.1} s: guest resumed",
                        t0.elapsed().as_secs_f64()
                    );
                    self.apply_drop(&dropped);
                    return Ok(());
                }
                FenceAction::Stop(why) => return Err(EngineError::Superseded(why)),
                _ => {}
            }
        }
    }
}

/// The default gap after a capture before output can trigger the next.
pub const MIN_INTERVAL: Duration = Duration::from_millis(2);
/// How often the supervisor looks for held frames while output-triggered
/// epochs are on (a NIC has no way to wake it yet: polled).
const OUTPUT_POLL: Duration = Duration::from_micros(500);
/// The longest the supervisor sleeps between epochs when it is `calm`.
const CALM_POLL: Duration = Duration::from_millis(50);

impl Replicator {
    /// Whether nothing the supervisor notices only by looking can happen
    /// before its next epoch: every spare is linked (no redial due) and
    /// the VM protected, no fence decision, fence action, membership
    /// record or continuer is pending, and no NIC can trigger an epoch
    /// with its output. What else needs it (a lost link, a spare that
    /// joins or first commits, a control command, a disk failure to hand
    /// over) rings its doorbell ([`crate::runner::Doorbell`]).
    fn calm(&self) -> bool {
        self.spares.iter().all(|s| s.link.is_some())
            && self.fence_actions.is_empty()
            && !self.fence.as_ref().is_some_and(|f| f.deciding())
            && self.unrecorded.is_empty()
            && self.async_add.is_empty()
            && !self.awaiting_continuers()
            && (self.nets.is_empty() || self.cfg.min_interval.is_zero())
            && self.commit.lock().protected()
    }

    /// Whether held NIC frames make an epoch due now: output-triggered
    /// epochs are on, the last capture is `min_interval` old, every epoch
    /// sent is committed (the frames would otherwise wait for the acks in
    /// flight anyway), and some NIC holds frames.
    fn output_due(&self, now: Instant) -> bool {
        if self.cfg.min_interval.is_zero()
            || self.nets.is_empty()
            || now < self.last_capture + self.cfg.min_interval
            // tick would return before capturing: do not make it spin.
            || self.fence.as_ref().is_some_and(|f| f.deciding())
            || self.awaiting_continuers()
        {
            return false;
        }
        let acked = {
            let set = self.commit.lock();
            set.protected() && set.committed() == Some(self.seq)
        };
        acked
            && self
                .nets
                .iter()
                .any(|g| g.lock().unwrap_or_else(|e| e.into_inner()).has_pending())
    }
}

impl Periodic for Replicator {
    fn next_due(&self) -> Duration {
        let now = Instant::now();
        if !self.spares.iter().any(|s| s.link.is_some()) {
            // No spare yet (or none at all, waiting for the control
            // socket's): tick every 5 ms.
            return self
                .spares
                .iter()
                .map(|s| s.next_dial)
                .min()
                .unwrap_or(self.last_tick + Duration::from_millis(5))
                .min(self.last_tick + Duration::from_millis(5))
                .saturating_duration_since(now);
        }
        // An epoch waiting for an ack (in-flight limit reached): tick again
        // in 500 µs to settle acks, rather than spinning through ticks.
        if let Some(at) = self.stall_poll {
            return at.saturating_duration_since(now);
        }
        // Wake often enough to notice what is only noticed by looking:
        // held frames soon after they appear, a fence decision, a redial,
        // a record to write. When there is none of that (`calm`), tick at
        // epochs only: links, joins, control commands and failed disks
        // ring the doorbell, and every tick is a wake-up that costs 20-30
        // µs of CPU on a virtualised host (docs/performance.md, "Wake-ups").
        use crate::devices::OutputCommit as _;
        let holding = self
            .nets
            .iter()
            .any(|g| g.lock().unwrap_or_else(|e| e.into_inner()).holding());
        let poll = if self.cfg.min_interval.is_zero() || !holding {
            if self.calm() {
                CALM_POLL
            } else {
                Duration::from_millis(5)
            }
        } else if self.output_due(now) {
            return Duration::ZERO;
        } else {
            OUTPUT_POLL
        };
        self.next_epoch.saturating_duration_since(now).min(poll)
    }

    /// A link, a control command or a disk rang: a tick does what is due
    /// (it starts an epoch only if one is).
    fn rung(&mut self, vm: &Vm) -> Result<()> {
        self.tick(vm)
    }

    fn tick(&mut self, vm: &Vm) -> Result<()> {
        let res = self.tick_inner(vm);
        // A disk error with a spare to hand over to ends the primary, whatever
        // the epoch machinery was doing (a pause fails once the disk failed).
        if let Some(why) = vm.io_failover.failure() {
            return Err(EngineError::HandOver(why));
        }
        let live = self.commit.lock().members_committed()
            && self.spares.iter().all(|s| {
                s.spec.kind == Kind::Async || s.link.as_ref().is_none_or(|l| !l.shared.is_lost())
            });
        vm.io_failover.set_enabled(live);
        res
    }
}

impl Replicator {
    fn tick_inner(&mut self, vm: &Vm) -> Result<()> {
        self.last_tick = Instant::now();
        if let Some(inbox) = &self.cfg.control {
            inbox.ring_on_arrival(vm.doorbell());
        }
        self.serve_control();
        self.settle()?;
        self.act(vm)?;
        if let Some(f) = self.fence.as_mut() {
            if f.deciding() {
                let a = f.step(FenceInput::Tick);
                self.fence_actions.push(a);
                self.act(vm)?;
                if self.fence.as_ref().is_some_and(|f| f.deciding()) {
                    return Ok(());
                }
            }
        }
        self.dial(vm)?;
        if !self.spares.iter().any(|s| s.link.is_some()) || self.awaiting_continuers() {
            return Ok(());
        }
        let now = Instant::now();
        let early = now < self.next_epoch;
        if early && !self.output_due(now) {
            return Ok(());
        }
        let committed = {
            let set = self.commit.lock();
            set.protected().then(|| set.committed().unwrap_or(0))
        };
        if committed.is_some_and(|c| self.seq.saturating_sub(c) >= self.cfg.max_outstanding as u64)
        {
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
        if early {
            // Output-triggered: the grid restarts from this capture.
            self.stats.output_epochs += 1;
            self.next_epoch = now + interval;
        }
        if self.next_epoch <= now {
            self.next_epoch = now + interval;
        }
        self.last_capture = now;
        if let Err(e) = self.epoch(vm) {
            if vm.shared.stop_reason().is_some() {
                return Ok(());
            }
            if let Some(why) = vm.io_failover.failure() {
                // Keep the links as they are: dropping them would tell the
                // spares their committed state is stale, and one must take over.
                return Err(EngineError::HandOver(why));
            }
            if matches!(e, EngineError::Superseded(_)) {
                return Err(e);
            }
            tracing::error!("epoch failed: {e}");
            for i in 0..self.spares.len() {
                self.lose_spare(i, &format!("epoch failed: {e}"));
            }
            self.act(vm)?;
        }
        Ok(())
    }
}
