//! The primary's spares: dialing them (in the background, so a dead spare
//! never stalls the epochs of the others), joining them (a live copy, then
//! the epochs after the join point), recording them in the arbiter, and
//! losing them. A child module of `primary`, so it works on the
//! replicator's own fields. Design: `docs/spares.md`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel;
use transport::{Channel, FramedConn, HandshakeParams, Psk, TransportError};

use super::super::catchup::JoinRoute;
use super::super::commit::Kind;
use super::super::fencing::{FenceAction, FenceInput};
use super::super::link::{self, Link, LinkShared, Port};
use super::super::livecopy::LiveCopy;
use super::super::wire::{self, EpochEnd};
use super::{Replicator, ShadowSpec};
use crate::capture;
use crate::error::{EngineError, Result};
use crate::events;
use crate::memory::PAGE_SIZE;
use crate::vm::Vm;

/// A synchronous spare's queue bound (its in-flight epochs are bounded by
/// the commit; this only bounds a joiner still sending its live copy).
const SYNC_MAX_QUEUED: u64 = 1 << 30;

/// How long a new primary waits, after a takeover, for the spares that may
/// continue from the resumed epoch before it takes its first epoch.
const CONTINUE_WAIT: Duration = Duration::from_millis(500);

/// Epochs a link's inbox holds at most.
const LINK_QUEUE: usize = 1 << 16;

/// Both connections to a spare (heartbeat, stream).
type Conns = (FramedConn, FramedConn);

/// How a spare joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Join {
    /// The parked start: the first (full) epoch is its whole state.
    Initial,
    /// A live copy labelled with the last epoch, then the epochs after it.
    Copy,
    /// It may hold exactly the state the VM resumed from at a takeover
    /// (epoch `.0`, committed by the old primary): no copy, increments from
    /// there. A spare that does not hold it refuses the first increment,
    /// and its next join is a copy.
    Continue(u64),
}

/// One configured spare.
pub(super) struct Spare {
    pub spec: ShadowSpec,
    pub link: Option<Link>,
    /// A background connection attempt.
    dialing: Option<channel::Receiver<std::result::Result<Conns, TransportError>>>,
    pub next_dial: Instant,
    announced: bool,
    /// An asynchronous spare the record names.
    async_recorded: bool,
    /// Its first join may continue from this resumed epoch (a spare the
    /// old primary's record named, at a takeover).
    pub continue_from: Option<u64>,
}

impl Spare {
    pub fn new(spec: ShadowSpec) -> Spare {
        Spare {
            spec,
            link: None,
            dialing: None,
            next_dial: Instant::now(),
            announced: false,
            async_recorded: false,
            continue_from: None,
        }
    }
}

/// Opens both connections to `addr` (blocking, 500 ms per attempt).
fn connect(
    addr: &str,
    psk: &Psk,
    fp: [u8; 32],
    term: u64,
) -> std::result::Result<Conns, TransportError> {
    let params = |channel| HandshakeParams {
        psk,
        protocol_version: transport::PROTOCOL_VERSION,
        fingerprint: Some(fp),
        channel,
        term,
        any_channel: false,
    };
    let timeout = Duration::from_millis(500);
    let (hb, _) = FramedConn::connect(addr, &params(Channel::Heartbeat), timeout)?;
    let (stream, _) = FramedConn::connect(addr, &params(Channel::Stream), timeout)?;
    Ok((hb, stream))
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Sync => "synchronous",
        Kind::Async => "asynchronous",
    }
}

impl Replicator {
    /// Connects to spare `i` now, on this thread.
    pub(super) fn dial_now(&mut self, i: usize) -> Result<Conns> {
        let fp = *self.fingerprint.as_bytes();
        connect(&self.spares[i].spec.addr, &self.psk, fp, self.cfg.term)
            .map_err(EngineError::Transport)
    }

    /// Starts or completes background connections to the spares without a
    /// link; joins those that answered.
    pub(super) fn dial(&mut self, vm: &Vm) -> Result<()> {
        let now = Instant::now();
        for i in 0..self.spares.len() {
            if self.spares[i].link.is_some() {
                continue;
            }
            let res = match &self.spares[i].dialing {
                None if now >= self.spares[i].next_dial => {
                    let (tx, rx) = channel::bounded(1);
                    let (addr, psk) = (self.spares[i].spec.addr.clone(), self.psk.clone());
                    let (fp, term) = (*self.fingerprint.as_bytes(), self.cfg.term);
                    link::spawn("hs-dial", move || {
                        let _ = tx.send(connect(&addr, &psk, fp, term));
                    })?;
                    self.spares[i].dialing = Some(rx);
                    continue;
                }
                None => continue,
                Some(rx) => match rx.try_recv() {
                    Ok(r) => r.map_err(EngineError::Transport),
                    Err(channel::TryRecvError::Empty) => continue,
                    Err(channel::TryRecvError::Disconnected) => {
                        Err(EngineError::Config("the dialing thread ended".into()))
                    }
                },
            };
            self.spares[i].dialing = None;
            let how = match self.spares[i].continue_from.take() {
                // Only before any epoch after the resumed one was taken.
                Some(s) if s == self.seq => Join::Continue(s),
                _ => Join::Copy,
            };
            let res = res.and_then(|c| self.join(vm, i, c, how));
            if let Err(e) = res {
                if matches!(e, EngineError::Superseded(_)) {
                    return Err(e);
                }
                let s = &mut self.spares[i];
                if !s.announced {
                    let state = if self.commit.lock().protected() {
                        "the VM stays protected by the others"
                    } else {
                        "the VM runs UNPROTECTED"
                    };
                    tracing::error!("no shadow at {} ({e}): {state}; retrying", s.spec.addr);
                    s.announced = true;
                }
                s.next_dial = now + self.cfg.retry;
            }
        }
        Ok(())
    }

    /// Joins spare `i` on connections `c` (see [`Join`]).
    pub(super) fn join(&mut self, vm: &Vm, i: usize, c: Conns, how: Join) -> Result<()> {
        let initial = how == Join::Initial;
        let (hb, stream) = c;
        let spec = self.spares[i].spec.clone();
        if let Some(f) = self.fence.as_mut() {
            match f.fence_info()? {
                Some(b) => self.fence_base = Some(b),
                None => {
                    return Err(EngineError::Config(format!(
                        "the arbiter {} did not answer: not syncing the shadow yet",
                        f.describe()
                    )))
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let (catch_tx, catch_rx) = channel::bounded(1);
        let (from, copy) = if initial {
            (0, None)
        } else if let Join::Continue(s) = how {
            (s, None)
        } else {
            if self.seq == 0 {
                // Nothing was ever sent: the copy needs a label other than 0.
                self.seq = 1;
            }
            let e = self.seq;
            let pos = vm.console_position();
            let mut fence = self.fence_base.clone();
            if let Some(f) = fence.as_mut() {
                f.spare = spec.addr.clone();
                f.async_spare = spec.kind == Kind::Async;
            }
            let copy = LiveCopy {
                seq: e,
                plan: capture::live_copy_plan(vm)?,
                ram: vm.ram.clone(),
                disks: vm.disks.clone(),
                machine: vm.machine.clone(),
                compression: self.cfg.compression,
                end: EpochEnd {
                    seq: e,
                    output_start: pos,
                    output: Vec::new(),
                    released: pos,
                    net: Vec::new(),
                    net_released: Vec::new(),
                    figures: wire::EpochReport::default(),
                    memory_hash: None,
                    fence,
                },
                catch_up: catch_rx,
            };
            (e, Some(copy))
        };
        let shared = Arc::new(LinkShared {
            id,
            name: spec.addr.clone(),
            kind: spec.kind,
            lost: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            inflight: Mutex::new(VecDeque::new()),
            ack_latency: Mutex::new(Vec::new()),
            acked_at: Mutex::new(None),
            commit: self.commit.clone(),
            io_failover: self.io_failover.clone(),
            reason: Mutex::new(None),
            superseded: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            // Epochs are pre-copy until the commit set says otherwise (a
            // joiner's first commit comes after its copy finished reading).
            commit_from: AtomicU64::new(if initial { 0 } else { u64::MAX }),
            copied: AtomicBool::new(copy.is_none()),
            copy_read: Mutex::new(None),
            queued: AtomicU64::new(0),
            copy: Mutex::new(None),
            bell: vm.doorbell(),
        });
        let (tx, rx) = channel::bounded(LINK_QUEUE);
        let (send_half, recv_half) = stream.split();
        // A spare that stops reading (host gone without a reset) must not
        // block its sender, and with it a link teardown, for TCP's retry
        // time: a send that waits this long fails and loses the link.
        send_half
            .set_write_timeout(Some(
                (self.cfg.timing.timeout * 4).max(Duration::from_secs(1)),
            ))
            .map_err(EngineError::Transport)?;
        recv_half
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(EngineError::Transport)?;
        {
            let mut set = self.commit.lock();
            set.add(id, &spec.addr, spec.kind, from, initial);
            if let Join::Continue(s) = how {
                // Exact from its first increment on, like a joiner whose
                // copy ended before that capture.
                set.copied(id, s + 1);
            }
        }
        let term = self.cfg.term;
        let mut threads = Vec::new();
        let copying = copy.is_some();
        let s = shared.clone();
        threads.push(link::spawn("hs-send", move || {
            link::sender(send_half, rx, term, s, copy)
        })?);
        let s = shared.clone();
        threads.push(link::spawn("hs-ack", move || {
            link::acker(recv_half, term, s)
        })?);
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
        self.fanout.ports().push(Port {
            shared: shared.clone(),
            tx,
            route: if copying {
                JoinRoute::copying(from)
            } else {
                JoinRoute::streaming(from)
            },
            catch_up: copying.then_some(catch_tx),
            max_queued: match spec.kind {
                Kind::Sync => SYNC_MAX_QUEUED,
                Kind::Async => self.cfg.async_max_queued,
            },
        });
        if !copying {
            // Its base is the state it holds, not what the delta cache
            // remembers. (A joiner's is its catch-up round: the encoder
            // forgets the cache when it switches.)
            self.reset_delta = true;
        }
        let s = &mut self.spares[i];
        s.link = Some(Link {
            shared,
            threads,
            hb_stop,
            hb_goodbye,
            hb_protected,
        });
        s.announced = false;
        s.async_recorded = false;
        let join = match how {
            Join::Initial => None,
            Join::Copy => Some(events::JoinKind::Copy),
            Join::Continue(_) => Some(events::JoinKind::Continue),
        };
        if let Some(join) = join {
            events::emit(events::Event::SpareJoining {
                spare: spec.addr.clone(),
                join,
                synchronous: spec.kind == Kind::Sync,
            });
        }
        match how {
            Join::Initial => {}
            Join::Copy => eprintln!(
                "hotspare: {} spare {} connected: live copy at epoch {from}, then every epoch after it",
                kind_name(spec.kind),
                spec.addr
            ),
            Join::Continue(s) => eprintln!(
                "hotspare: {} spare {} continues from epoch {s}, the state this VM resumed from: no live copy",
                kind_name(spec.kind),
                spec.addr
            ),
        }
        Ok(())
    }

    /// Whether a spare that may continue from the resumed epoch is still
    /// being dialled (epochs wait for it, at most `CONTINUE_WAIT`, so it can
    /// continue instead of needing a copy).
    pub(super) fn awaiting_continuers(&self) -> bool {
        self.created.elapsed() < CONTINUE_WAIT
            && self
                .spares
                .iter()
                .any(|s| s.link.is_none() && s.continue_from == Some(self.seq))
    }

    /// Unprotected with a synchronous joiner past its live copy: records the
    /// ready joiners in the arbiter before epoch `seq`, their first commit.
    /// Returns whether output is to be held from the capture of `seq`.
    pub(super) fn begin_protection(&mut self, seq: u64) -> Result<bool> {
        let ready = {
            let set = self.commit.lock();
            if !set.ready_to_protect() {
                return Ok(false);
            }
            set.ready()
        };
        let (ids, ready): (Vec<u64>, Vec<String>) = ready.into_iter().unzip();
        if let Some(f) = self.fence.as_mut() {
            if Instant::now() < self.next_record {
                return Ok(false);
            }
            if !f.protect(&ready)? {
                self.next_record = Instant::now() + Duration::from_millis(200);
                return Ok(false);
            }
            self.fence_base = f.fence_info()?;
        }
        eprintln!(
            "hotspare: protecting the VM again with {ready:?} from epoch {seq}: output held from here on"
        );
        self.protecting = ids;
        Ok(true)
    }

    /// Tells the commit set which joiners' live copies finished reading
    /// (before the capture of `seq`, under way with the guest paused), and
    /// each link from which epoch on it sends commits.
    pub(super) fn note_copies(&mut self, seq: u64) {
        let mut set = self.commit.lock();
        for s in &self.spares {
            if let Some(l) = &s.link {
                if l.shared.copied.load(Ordering::SeqCst) {
                    set.copied(l.shared.id, seq);
                }
            }
        }
    }

    /// Publishes each link's first commit to its sender.
    pub(super) fn publish_commit_from(&self) {
        let set = self.commit.lock();
        for s in &self.spares {
            if let Some(l) = &s.link {
                if let Some(c) = set.commit_from(l.shared.id) {
                    l.shared.commit_from.store(c, Ordering::SeqCst);
                }
            }
        }
    }

    /// Tears spare `i`'s link down. A lost member holds output until the
    /// arbiter drops it (or at once without an arbiter); a joiner or an
    /// asynchronous spare just goes. It is dialled again after `retry`.
    pub(super) fn lose_spare(&mut self, i: usize, why: &str) {
        self.stall_poll = None;
        let Some(mut link) = self.spares[i].link.take() else {
            return;
        };
        let (id, name, kind) = (link.shared.id, link.shared.name.clone(), link.shared.kind);
        let superseded_by = link.shared.superseded.load(Ordering::SeqCst);
        // Tell the spare its state is stale before closing, so the close
        // does not make it take over.
        link.hb_protected.store(false, Ordering::SeqCst);
        link.shared.lose(why.to_string());
        self.fanout.ports().retain(|p| p.shared.id != id);
        link.hb_stop.store(true, Ordering::SeqCst);
        for t in link.threads.drain(..) {
            let _ = t.join();
        }
        self.collect_link(&link.shared);
        self.stats.shadow_losses += 1;
        self.spares[i].next_dial = Instant::now() + self.cfg.retry;
        self.unrecorded.retain(|n| n != &name);
        let gated = self.commit.lock().lost(id);
        if superseded_by > self.cfg.term {
            // A spare says it took over: no question to the arbiter.
            let a = match self.fence.as_mut() {
                Some(f) => f.step(FenceInput::SupersededBy(superseded_by)),
                None => FenceAction::Stop(format!(
                    "the shadow took the VM over in term {superseded_by}"
                )),
            };
            self.fence_actions.push(a);
            return;
        }
        let Some(gone) = gated else {
            let what = match kind {
                Kind::Async => "asynchronous spare",
                Kind::Sync => "spare (still joining)",
            };
            eprintln!("hotspare: {what} {name} lost ({why}); it rejoins with a fresh live copy");
            events::emit(events::Event::SpareLost {
                spare: name.to_string(),
                why: why.to_string(),
            });
            return;
        };
        if kind == Kind::Async && self.commit.lock().released().is_none() {
            // Unprotected, a recorded distant spare could claim the VM: hold
            // output until the arbiter dropped it.
            self.devices.hold_outputs(true);
        }
        events::emit(events::Event::SpareLost {
            spare: name.to_string(),
            why: why.to_string(),
        });
        match self.fence.as_mut() {
            Some(f) => {
                eprintln!(
                    "hotspare: SHADOW LOST ({name}: {why}): output HELD while the arbiter {} decides",
                    f.describe()
                );
                let a = f.step(FenceInput::SpareLost(gone));
                self.fence_actions.push(a);
            }
            None => {
                tracing::error!("SHADOW LOST ({name}: {why})");
                self.apply_drop(&[gone]);
            }
        }
        self.announced_unprotected = true;
    }

    /// Notices lost links, new members and asynchronous spares to record;
    /// records them; gathers figures.
    pub(super) fn settle(&mut self) -> Result<()> {
        for i in 0..self.spares.len() {
            let lost = self.spares[i]
                .link
                .as_ref()
                .filter(|l| l.shared.is_lost())
                .map(|l| l.shared.why());
            if let Some(why) = lost {
                self.lose_spare(i, &why);
            }
        }
        for s in &mut self.spares {
            let Some(l) = &s.link else {
                continue;
            };
            if l.shared.joined.swap(false, Ordering::SeqCst)
                && !self.unrecorded.contains(&l.shared.name)
            {
                self.unrecorded.push(l.shared.name.clone());
            }
            if s.spec.kind == Kind::Async
                && !s.async_recorded
                && self.commit.lock().has_commit(l.shared.id)
            {
                s.async_recorded = true;
                self.async_add.push((l.shared.id, s.spec.addr.clone()));
            }
        }
        self.collect();
        self.record()
    }

    /// Writes pending membership changes to the arbiter.
    fn record(&mut self) -> Result<()> {
        if self.unrecorded.is_empty() && self.async_add.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.next_record {
            return Ok(());
        }
        let Some(f) = self.fence.as_mut() else {
            for n in self.unrecorded.drain(..) {
                eprintln!("hotspare: protected by shadow {n} (epoch {})", self.seq);
                events::emit(events::Event::Protected {
                    spare: n,
                    epoch: self.seq,
                });
            }
            self.async_add.clear();
            return Ok(());
        };
        let mut ok = true;
        if !self.unrecorded.is_empty() {
            if f.protect(&self.unrecorded)? {
                eprintln!(
                    "hotspare: protected by shadow {} (epoch {}); the arbiter names it",
                    self.unrecorded.join(", "),
                    self.seq
                );
                for n in self.unrecorded.drain(..) {
                    events::emit(events::Event::Protected {
                        spare: n,
                        epoch: self.seq,
                    });
                }
            } else {
                ok = false;
            }
        }
        while let Some((id, n)) = self.async_add.first().cloned() {
            if !f.add_async(&n)? {
                ok = false;
                break;
            }
            // From now on its loss holds output until the arbiter drops it.
            self.commit.lock().recorded(id);
            eprintln!("hotspare: asynchronous spare {n} follows the VM; the arbiter names it");
            events::emit(events::Event::AsyncFollowing { spare: n.clone() });
            self.async_add.remove(0);
        }
        if let Some(b) = f.fence_info()? {
            self.fence_base = Some(b);
        }
        if !ok {
            self.next_record = now + Duration::from_millis(200);
        }
        Ok(())
    }

    /// Answers the control socket's commands (`crate::control`).
    pub(super) fn serve_control(&mut self) {
        use crate::control::{Command, Reply, SpareStatus, Status};
        let Some(inbox) = self.cfg.control.clone() else {
            return;
        };
        while let Ok(req) = inbox.try_recv() {
            if Instant::now() > req.deadline {
                continue;
            }
            let reply = match req.cmd {
                Command::Status => Reply {
                    ok: true,
                    error: None,
                    status: Some(Status {
                        term: self.cfg.term,
                        seq: self.seq,
                        protected: self.protected(),
                        spares: self
                            .spares
                            .iter()
                            .map(|s| SpareStatus {
                                addr: s.spec.addr.clone(),
                                synchronous: s.spec.kind == Kind::Sync,
                                linked: s.link.is_some(),
                            })
                            .collect(),
                    }),
                },
                Command::AddSpare { addr, synchronous } => {
                    if self.spares.iter().any(|s| s.spec.addr == addr) {
                        Reply::refused(format!("{addr} is a spare already"))
                    } else {
                        let kind = if synchronous { Kind::Sync } else { Kind::Async };
                        eprintln!("hotspare: control: new {} spare {addr}", kind_name(kind));
                        let spec = ShadowSpec { addr, kind };
                        self.cfg.shadows.push(spec.clone());
                        self.spares.push(Spare::new(spec));
                        Reply::done()
                    }
                }
                Command::DropSpare { addr } => {
                    match self.spares.iter().position(|s| s.spec.addr == addr) {
                        None => Reply::refused(format!("{addr} is not a spare")),
                        Some(i) if self.spares[i].link.is_some() => Reply::refused(format!(
                            "{addr} is connected: only a lost spare is dropped"
                        )),
                        Some(i) => {
                            eprintln!("hotspare: control: spare {addr} forgotten");
                            self.spares.remove(i);
                            self.cfg.shadows.retain(|s| s.addr != addr);
                            Reply::done()
                        }
                    }
                }
            };
            let _ = req.reply.send(reply);
        }
    }

    /// Moves the encoder's figures and the links' ack latencies into the
    /// run's stats.
    fn collect(&mut self) {
        let links: Vec<Arc<LinkShared>> = self
            .spares
            .iter()
            .filter_map(|s| s.link.as_ref().map(|l| l.shared.clone()))
            .collect();
        for l in links {
            self.collect_link(&l);
        }
        let encoded: Vec<_> = self
            .fanout
            .encoded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for x in encoded {
            if let Some(e) = self.stats.epochs.iter_mut().rev().find(|e| e.seq == x.seq) {
                e.raw_bytes = x.raw_bytes;
                e.wire_bytes = x.wire_bytes;
                e.encode = x.encode;
                e.delta_pages = x.delta_pages;
                if events::enabled() {
                    let ev = events::Event::Epoch {
                        seq: e.seq,
                        full: e.full,
                        pause_us: e.pause.as_micros() as u64,
                        pages: e.pages,
                        raw_bytes: e.raw_bytes,
                        wire_bytes: e.wire_bytes,
                        acks_us: std::mem::take(&mut self.event_acks),
                        async_lag: self.stats.async_lag.map(|l| l.0),
                    };
                    events::emit(ev);
                }
            }
        }
    }

    /// Moves one link's ack latencies and live-copy figures into the stats.
    fn collect_link(&mut self, shared: &LinkShared) {
        if shared.kind == Kind::Sync {
            let acks: Vec<Duration> = shared
                .ack_latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            if events::enabled() && self.event_acks.len() < super::super::FIGURES_KEPT {
                self.event_acks
                    .extend(acks.iter().map(|d| d.as_micros() as u64));
            }
            self.stats.ack_latency.extend(acks);
            let n = self.stats.ack_latency.len();
            if n > super::super::FIGURES_KEPT {
                self.stats
                    .ack_latency
                    .drain(..n - super::super::FIGURES_KEPT);
            }
        } else {
            let lag = self.commit.lock().lag(shared.id, self.seq).unwrap_or(0);
            let now = (lag, shared.oldest_unacked());
            // The furthest-behind asynchronous spare.
            if self.stats.async_lag.is_none_or(|l| now.0 >= l.0) {
                self.stats.async_lag = Some(now);
            }
        }
        if let Some(c) = shared.copy.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // The copy, and its catch-up round if the guest wrote meanwhile.
            let rounds = 1 + u32::from(c.catch_up_units > 0);
            self.stats.syncs.push((rounds, c.units * PAGE_SIZE, c.secs));
        }
    }

    /// Tells every spare the guest stopped, and ends the links.
    pub(super) fn goodbye_all(&mut self) {
        self.fanout.ports().clear();
        let mut links: Vec<Link> = self
            .spares
            .iter_mut()
            .filter_map(|s| s.link.take())
            .collect();
        for l in &links {
            l.hb_goodbye.store(true, Ordering::SeqCst);
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while !links
            .iter()
            .all(|l| l.threads.iter().all(|t| t.is_finished()))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        for l in &mut links {
            // A spare that did not close its end (partitioned) must not keep
            // the ack thread, and with it the end of the run, waiting.
            l.shared.lose("the guest ended".into());
            l.hb_stop.store(true, Ordering::SeqCst);
            for t in l.threads.drain(..) {
                let _ = t.join();
            }
        }
        for l in &links {
            self.collect_link(&l.shared);
        }
    }
}
