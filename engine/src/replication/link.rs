//! The primary's links, one per spare: the sender (a joiner's live copy,
//! then the encoded epochs it is handed), the acker (reads acks, feeds the
//! commit set, which releases held output) and the heartbeat thread (its
//! own connection, so heartbeats never queue behind page traffic). Also the
//! encoder thread, which encodes each epoch once for every link (fan-out).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use checkpoint::format::Header;
use checkpoint::pages::Compression;
use crossbeam::channel::{Receiver, Sender, TrySendError};
use transport::{Frame, FrameKind, FramedConn, TransportError};

use super::commit::{CommitSet, Kind, SpareId};
use super::livecopy::{CopyFigures, LiveCopy};
use super::liveness::{PrimaryHeartbeat, ShadowDecision};
use super::trust::{self, LinkView};
use super::wire::{self, Ack, EpochBegin, EpochEnd, Heartbeat, Nack};
use super::Timing;
use crate::capture;
use crate::devices::DeviceManager;
use crate::error::{EngineError, Result};
use crate::store;

/// One captured epoch for the encoder thread.
pub(super) struct EncodeJob {
    pub seq: u64,
    pub header: Header,
    pub epoch: Box<capture::Epoch>,
    pub end: EpochEnd,
    /// A spare joined since the last epoch: its base is its live copy, not
    /// what the delta cache remembers, so the cache starts empty.
    pub reset_delta: bool,
}

/// One encoded epoch, shared by every link it goes to.
pub(super) struct Shipment {
    pub seq: u64,
    pub container: Arc<Vec<u8>>,
    pub end: Arc<EpochEnd>,
}

/// What the encoder reports of an epoch.
pub(super) struct Encoded {
    pub seq: u64,
    pub raw_bytes: u64,
    /// The container's size: bytes on the wire (per spare).
    pub wire_bytes: u64,
    pub encode: Duration,
    /// Pages sent as XOR deltas.
    pub delta_pages: u64,
}

/// The commit set and the output it releases, shared by the ackers.
pub(super) struct Commit {
    pub set: Mutex<CommitSet>,
    pub devices: Arc<DeviceManager>,
}

impl Commit {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CommitSet> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spare `id` acked `seq`: release what the commit set allows (under
    /// its lock, so releases stay in order). Returns whether it joined.
    fn ack(&self, id: SpareId, seq: u64) -> bool {
        let mut set = self.lock();
        let o = set.ack(id, seq);
        if let Some(r) = o.release {
            self.devices.release_outputs(r);
        }
        o.joined
    }
}

/// State shared with one link's threads.
pub(super) struct LinkShared {
    pub(super) id: SpareId,
    /// The spare's name in the arbiter's record (its address).
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) lost: AtomicBool,
    pub(super) acked: AtomicU64,
    /// (seq, send time) of the epochs sent and not acked yet.
    pub(super) inflight: Mutex<VecDeque<(u64, Instant)>>,
    pub(super) ack_latency: Mutex<Vec<Duration>>,
    /// When the last epoch ack arrived: while acks flow, the heartbeat
    /// thread thins out its heartbeats (`liveness::HeartbeatPlan`).
    pub(super) acked_at: Mutex<Option<Instant>>,
    pub(super) commit: Arc<Commit>,
    /// Disk-failure handover: off as soon as a link is lost (the shadow
    /// may be gone), before the supervisor's next tick notices.
    pub(super) io_failover: Arc<crate::devices::virtio::block::IoFailover>,
    pub(super) reason: Mutex<Option<String>>,
    /// The shadow said it took the VM over in this term (0: it did not).
    pub(super) superseded: AtomicU64,
    /// It became a member of the commit set (the supervisor records it).
    pub(super) joined: AtomicBool,
    /// Epochs from this one on are sent as commits; those before it as
    /// pre-copy (applied, never committed: a synchronous joiner of an
    /// unprotected VM must not hold a commit older than output released
    /// freely). `u64::MAX`: none yet.
    pub(super) commit_from: AtomicU64,
    /// Its live copy finished reading (or it needed none).
    pub(super) copied: AtomicBool,
    /// Container bytes handed to the sender and not yet written to the
    /// socket.
    pub(super) queued: AtomicU64,
    /// Its live copy, once sent.
    pub(super) copy: Mutex<Option<CopyFigures>>,
    /// Wakes the supervisor: the link was lost, or its spare joined the
    /// commit set or committed for the first time (a record to write).
    pub(super) bell: crate::runner::Doorbell,
}

impl LinkShared {
    /// Records epoch `seq` as sent now (for its ack latency).
    pub(super) fn track(&self, seq: u64) {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((seq, Instant::now()));
    }

    pub(super) fn lose(&self, why: String) {
        if self.kind == Kind::Sync {
            self.io_failover.set_enabled(false);
        }
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(why);
        }
        self.lost.store(true, Ordering::SeqCst);
        self.bell.ring();
    }

    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub(super) fn why(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// How long the oldest unacknowledged epoch has waited.
    pub(super) fn oldest_unacked(&self) -> Duration {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .map_or(Duration::ZERO, |f| f.1.elapsed())
    }
}

pub(super) struct Link {
    pub(super) shared: Arc<LinkShared>,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) hb_stop: Arc<AtomicBool>,
    pub(super) hb_goodbye: Arc<AtomicBool>,
    pub(super) hb_protected: Arc<AtomicBool>,
}

pub(super) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    crate::cpu::spawn_accounted(name, f).map_err(EngineError::io(format!("spawning thread {name}")))
}

/// How the encoder thread encodes epochs.
#[derive(Clone, Copy)]
pub(super) struct EncoderConfig {
    pub compression: Compression,
    /// Bytes of XOR-delta cache (0: no deltas).
    pub delta_cache_bytes: u64,
}

/// A link's inbox, as the encoder sees it.
pub(super) struct Port {
    pub shared: Arc<LinkShared>,
    pub tx: Sender<Shipment>,
    /// Epochs after this one go to it (its join point).
    pub from: u64,
    /// Most container bytes queued before the link is dropped as too far
    /// behind (it then rejoins with a fresh live copy).
    pub max_queued: u64,
}

/// The links the encoder fans out to, and its figures.
#[derive(Default)]
pub(super) struct Fanout {
    pub ports: Mutex<Vec<Port>>,
    pub encoded: Mutex<Vec<Encoded>>,
}

impl Fanout {
    pub(super) fn ports(&self) -> std::sync::MutexGuard<'_, Vec<Port>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most bytes of earlier epochs any live link has not yet written
    /// to its socket.
    fn backlog(&self) -> u64 {
        self.ports()
            .iter()
            .filter(|p| !p.shared.is_lost())
            .map(|p| p.shared.queued.load(Ordering::SeqCst))
            .max()
            .unwrap_or(0)
    }

    /// Hands one encoded epoch to every link past its join point.
    fn deliver(&self, seq: u64, container: Arc<Vec<u8>>, end: Arc<EpochEnd>) {
        let len = container.len() as u64;
        for p in self.ports().iter() {
            if seq <= p.from || p.shared.is_lost() {
                continue;
            }
            let queued = p.shared.queued.fetch_add(len, Ordering::SeqCst) + len;
            if queued > p.max_queued {
                p.shared.lose(format!(
                    "{:?} spare {} is too far behind ({} MiB queued, {} epochs unacknowledged): dropped; it rejoins with a fresh live copy",
                    p.shared.kind,
                    p.shared.name,
                    queued >> 20,
                    seq.saturating_sub(p.shared.acked.load(Ordering::SeqCst))
                ));
                continue;
            }
            let s = Shipment {
                seq,
                container: container.clone(),
                end: end.clone(),
            };
            match p.tx.try_send(s) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => p.shared.lose(format!(
                    "spare {} has {} epochs queued: dropped; it rejoins with a fresh live copy",
                    p.shared.name,
                    p.tx.len()
                )),
                Err(TrySendError::Disconnected(_)) => p.shared.lose("sender thread gone".into()),
            }
        }
    }

    fn lose_all(&self, why: &str) {
        for p in self.ports().iter() {
            p.shared.lose(why.to_string());
        }
    }
}

/// The encoder thread: one page encoder and one delta cache for all links,
/// so the primary's CPU per dirty page does not grow with the spares.
pub(super) fn encoder(
    rx: Receiver<EncodeJob>,
    fanout: Arc<Fanout>,
    machine: checkpoint::fingerprint::MachineConfig,
    cfg: EncoderConfig,
    pool: Sender<Vec<u8>>,
) {
    let mut enc = match checkpoint::pages::MemoryEncoder::new(cfg.compression) {
        Ok(e) => e,
        Err(e) => {
            fanout.lose_all(&format!("creating the page encoder: {e}"));
            return;
        }
    };
    // Scattered dirty pages go out in batches (one zstd frame per batch).
    enc.set_batching(true);
    if cfg.delta_cache_bytes > 0 {
        enc.set_delta_cache(Some(checkpoint::delta::DeltaCache::with_bytes(
            cfg.delta_cache_bytes,
        )));
    }
    let mut bufs = store::EncodeBuffers::default();
    let mut coding = super::coding::RunsCoding::default();
    // Containers sent lately: once every link dropped one, it is reused.
    let mut recent: VecDeque<Arc<Vec<u8>>> = VecDeque::new();
    for mut job in rx.iter() {
        if job.reset_delta {
            enc.reset_delta();
        }
        if bufs.container.capacity() == 0 {
            // The oldest container, if every link is done with it.
            if let Some(a) = recent.pop_front() {
                match Arc::try_unwrap(a) {
                    Ok(v) => bufs.container = v,
                    Err(a) => recent.push_front(a),
                }
            }
        }
        enc.set_runs_compression(coding.epoch(fanout.backlog()));
        let t = Instant::now();
        let res = store::encode_checkpoint(&job.header, &machine, &job.epoch, &mut enc, &mut bufs);
        // Hand the page buffer back for the next capture (pages already
        // faulted in); drop it if the pool is full.
        let _ = pool.try_send(std::mem::take(&mut job.epoch.pages.data));
        match res {
            Ok((c, stats)) => {
                job.end.figures.raw_bytes = stats.raw_bytes;
                super::push_bounded(
                    &mut fanout.encoded.lock().unwrap_or_else(|e| e.into_inner()),
                    Encoded {
                        seq: job.seq,
                        raw_bytes: stats.raw_bytes,
                        wire_bytes: c.len() as u64,
                        encode: t.elapsed(),
                        delta_pages: stats.delta_pages,
                    },
                );
                let c = Arc::new(c);
                fanout.deliver(job.seq, c.clone(), Arc::new(job.end));
                recent.push_back(c);
                if recent.len() > 8 {
                    recent.pop_front();
                }
            }
            Err(e) => {
                // The delta cache may now describe pages no link received:
                // every link rejoins with a fresh copy.
                fanout.lose_all(&format!("encoding epoch {}: {e}", job.seq));
                enc.reset_delta();
            }
        }
    }
}

/// A link's sender: its live copy first (a joiner), then every epoch the
/// encoder hands it, with its own fence information in the end frame.
pub(super) fn sender(
    mut conn: transport::Sender,
    rx: Receiver<Shipment>,
    term: u64,
    shared: Arc<LinkShared>,
    copy: Option<LiveCopy>,
) {
    if let Some(copy) = copy {
        match copy.send(&mut conn, term, &|seq| shared.track(seq)) {
            Ok(f) => {
                eprintln!(
                    "hotspare: live copy to spare {}: {} pages and disk blocks ({:.1} MiB, {:.1} MiB on the wire, {:.0}% sent plain) in {:.3} s",
                    shared.name,
                    f.units,
                    (f.units * crate::memory::PAGE_SIZE) as f64 / (1 << 20) as f64,
                    f.wire_bytes as f64 / (1 << 20) as f64,
                    100.0 * f.plain_units as f64 / f.units.max(1) as f64,
                    f.secs
                );
                crate::events::emit(crate::events::Event::LiveCopied {
                    spare: shared.name.clone(),
                    units: f.units,
                    wire_bytes: f.wire_bytes,
                    seconds: f.secs,
                    plain_units: f.plain_units,
                });
                *shared.copy.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
                shared.copied.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                shared.lose(format!("live copy: {e}"));
                return;
            }
        }
    }
    for sh in rx.iter() {
        if shared.is_lost() {
            return;
        }
        let mut end = (*sh.end).clone();
        if let Some(f) = end.fence.as_mut() {
            f.spare = shared.name.clone();
            f.async_spare = shared.kind == Kind::Async;
        }
        shared.track(sh.seq);
        let precopy = sh.seq < shared.commit_from.load(Ordering::SeqCst);
        if let Err(e) = send_epoch(&mut conn, term, sh.seq, precopy, &sh.container, &end) {
            shared.lose(format!("sending epoch {}: {e}", sh.seq));
            return;
        }
        // Counted down once written to the socket, not when taken from
        // the queue: an epoch still being written is a backlog too.
        shared
            .queued
            .fetch_sub(sh.container.len() as u64, Ordering::SeqCst);
    }
}

/// Writes one epoch's frames: begin, the container in chunks, end (each
/// link seals them under its own session keys). The named fault points
/// fire only for epochs sent as commits.
pub(super) fn send_epoch(
    conn: &mut transport::Sender,
    term: u64,
    seq: u64,
    precopy: bool,
    container: &[u8],
    end: &EpochEnd,
) -> std::result::Result<(), TransportError> {
    let begin = EpochBegin {
        seq,
        len: container.len() as u64,
        precopy,
    };
    conn.send(FrameKind::EpochBegin, term, &wire::encode(&begin))?;
    for chunk in container.chunks(wire::CHUNK) {
        conn.send(FrameKind::EpochData, term, chunk)?;
        if !precopy {
            crate::faults::hit(crate::faults::Point::PrimaryMidEpoch);
        }
    }
    conn.send(FrameKind::EpochEnd, term, &wire::encode(end))?;
    if !precopy {
        crate::faults::hit(crate::faults::Point::PrimaryBeforeAck);
    }
    Ok(())
}

/// A link's ack thread: reads the spare's answers on the stream of term
/// `term` until the link is lost.
pub(super) fn acker(mut conn: transport::Receiver, term: u64, shared: Arc<LinkShared>) {
    loop {
        if shared.is_lost() {
            // Unblock a sender stuck writing to a peer that stopped
            // reading (a partition): the link is torn down at once, not
            // after the write timeout.
            conn.shutdown();
            return;
        }
        let frame = match conn.recv() {
            Ok(f) => f,
            Err(TransportError::Timeout) => continue,
            Err(e) => {
                shared.lose(format!("reading acks: {e}"));
                return;
            }
        };
        if !answer(&shared, term, &frame) {
            return;
        }
    }
}

/// Handles one frame the spare sent on the stream: an ack counts (and
/// releases output) only if `trust::judge_ack` believes it. Returns
/// whether the link lives on.
fn answer(shared: &LinkShared, term: u64, frame: &Frame) -> bool {
    match frame.kind {
        FrameKind::Ack => {
            let Ok(ack) = wire::decode::<Ack>("Ack", &frame.payload) else {
                shared.lose("malformed ack".into());
                return false;
            };
            crate::faults::hit(crate::faults::Point::PrimaryBeforeRelease);
            let mut inflight = shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
            let unacked: Vec<u64> = inflight.iter().map(|f| f.0).collect();
            let link = LinkView {
                term,
                unacked: &unacked,
                acked: shared.acked.load(Ordering::SeqCst),
            };
            let n = match trust::judge_ack(&link, frame.term, ack.seq) {
                Ok(n) => n,
                Err(e) => {
                    drop(inflight);
                    shared.lose(format!(
                        "protocol error from the spare: {e}; the link is dropped and the ack counts for nothing"
                    ));
                    return false;
                }
            };
            // The last answered is the acknowledged epoch itself.
            if let Some((_, at)) = inflight.drain(..n).next_back() {
                super::push_bounded(
                    &mut shared.ack_latency.lock().unwrap_or_else(|e| e.into_inner()),
                    at.elapsed(),
                );
            }
            drop(inflight);
            *shared.acked_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            let first = shared.acked.fetch_max(ack.seq, Ordering::SeqCst) == 0;
            if shared.commit.ack(shared.id, ack.seq) {
                shared.joined.store(true, Ordering::SeqCst);
                shared.bell.ring();
            } else if first {
                shared.bell.ring();
            }
            true
        }
        FrameKind::Nack => {
            nacked(shared, term, frame);
            false
        }
        other => {
            shared.lose(format!("unexpected {other:?} frame on the stream"));
            false
        }
    }
}

/// The heartbeat thread of one link: heartbeats as the plan says, the
/// shadow's answers (a heartbeat ack or an epoch ack) watched, until the
/// shadow is lost, the link is stopped or the guest ends.
pub(super) fn heartbeat(
    mut conn: FramedConn,
    term: u64,
    timing: Timing,
    shared: Arc<LinkShared>,
    stop: Arc<AtomicBool>,
    goodbye: Arc<AtomicBool>,
    protected: Arc<AtomicBool>,
) {
    // A shadow that stops reading cannot block this thread (and with it
    // the primary, which joins it) for longer than the timeout.
    let bounded = conn
        .set_read_timeout(Some(timing.heartbeat))
        .and_then(|()| conn.set_write_timeout(Some(timing.timeout)));
    let last = match bounded {
        Ok(()) => beat(
            &mut conn, term, timing, &shared, &stop, &goodbye, &protected,
        ),
        Err(e) => {
            shared.lose(format!("heartbeat socket: {e}"));
            Farewell::Stale
        }
    };
    // The shadow acts on this connection's close. Unless the guest ended,
    // the last frame on it says the shadow's state is stale, so a link the
    // primary drops (the shadow silent, a stop, a protocol error) does not
    // read as the primary's crash and make a live shadow claim the VM. A
    // broken connection just fails the send.
    let _ = match last {
        Farewell::Goodbye => conn.send(FrameKind::Goodbye, term, &[]),
        Farewell::Stale => conn.send(
            FrameKind::Heartbeat,
            term,
            &wire::encode(&Heartbeat { protected: false }),
        ),
    };
}

/// The heartbeat thread's last word to the shadow.
#[derive(Debug, PartialEq)]
enum Farewell {
    /// The guest ended: the shadow stops.
    Goodbye,
    /// The link is dropped: the shadow forgets its state.
    Stale,
}

/// Sends heartbeats and reads their answers until the link ends.
fn beat(
    conn: &mut FramedConn,
    term: u64,
    timing: Timing,
    shared: &LinkShared,
    stop: &AtomicBool,
    goodbye: &AtomicBool,
    protected: &AtomicBool,
) -> Farewell {
    let mut duty = PrimaryHeartbeat::new(timing.heartbeat, timing.timeout);
    let mut next = Instant::now();
    // When the last heartbeat went, and the last epoch ack already counted
    // as the shadow's answer.
    let (mut sent_at, mut ack_heard): (Option<Instant>, Option<Instant>) = (None, None);
    loop {
        if goodbye.load(Ordering::SeqCst) {
            return Farewell::Goodbye;
        }
        if stop.load(Ordering::SeqCst) {
            return Farewell::Stale;
        }
        let now = Instant::now();
        if now >= next {
            next = now + timing.heartbeat;
            let acked_at = *shared.acked_at.lock().unwrap_or_else(|e| e.into_inner());
            // An epoch ack since the last check: the shadow is alive.
            let acked_since_check = acked_at != ack_heard;
            ack_heard = acked_at;
            let hb = Heartbeat {
                protected: protected.load(Ordering::SeqCst) && !shared.lost.load(Ordering::SeqCst),
            };
            let since_sent = sent_at.map_or(Duration::MAX, |t| now.duration_since(t));
            let since_ack = acked_at.map(|t| now.saturating_duration_since(t));
            let (send, decision) =
                duty.check(since_sent, since_ack, acked_since_check, hb.protected);
            if send {
                if let Err(e) = conn.send(FrameKind::Heartbeat, term, &wire::encode(&hb)) {
                    shared.lose(format!("sending heartbeat: {e}"));
                    return Farewell::Stale;
                }
                sent_at = Some(now);
            }
            if decision == ShadowDecision::ShadowLost {
                shared.lose(format!("no heartbeat answer for {:?}", timing.timeout));
                return Farewell::Stale;
            }
        }
        match conn.recv() {
            Ok(f) if f.kind == FrameKind::HeartbeatAck => duty.answered(),
            Ok(f) if f.kind == FrameKind::Nack => {
                nacked(shared, term, &f);
                return Farewell::Stale;
            }
            Ok(f) => {
                shared.lose(format!(
                    "unexpected {:?} frame on the heartbeat channel",
                    f.kind
                ));
                return Farewell::Stale;
            }
            Err(TransportError::Timeout) => {}
            Err(e) => {
                shared.lose(format!("heartbeat channel: {e}"));
                return Farewell::Stale;
            }
        }
    }
}

/// A Nack on the link of `term`: the link is lost, and if the shadow says
/// it took the VM over (and `trust::judge_nack` believes it), the primary
/// is superseded.
fn nacked(shared: &LinkShared, term: u64, frame: &Frame) {
    let n = match wire::decode::<Nack>("Nack", &frame.payload) {
        Ok(n) => n,
        Err(e) => return shared.lose(e),
    };
    let verdict = {
        let inflight = shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let unacked: Vec<u64> = inflight.iter().map(|f| f.0).collect();
        let link = LinkView {
            term,
            unacked: &unacked,
            acked: shared.acked.load(Ordering::SeqCst),
        };
        trust::judge_nack(&link, frame.term, n.seq, n.superseded_by)
    };
    match verdict {
        Ok(by) => {
            if let Some(t) = by {
                shared.superseded.fetch_max(t, Ordering::SeqCst);
            }
            shared.lose(format!("shadow refused epoch {}: {}", n.seq, n.reason));
        }
        Err(e) => shared.lose(format!(
            "protocol error from the spare: {e} (it said: {})",
            n.reason
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: SpareId, kind: Kind) -> Arc<LinkShared> {
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let devices = Arc::new(DeviceManager::new(irq, Box::new(std::io::sink())).unwrap());
        Arc::new(LinkShared {
            id,
            name: format!("spare{id}"),
            kind,
            lost: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            inflight: Mutex::new(VecDeque::new()),
            ack_latency: Mutex::new(Vec::new()),
            acked_at: Mutex::new(None),
            commit: Arc::new(Commit {
                set: Mutex::new(CommitSet::new()),
                devices,
            }),
            io_failover: Arc::default(),
            reason: Mutex::new(None),
            superseded: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            commit_from: AtomicU64::new(0),
            copied: AtomicBool::new(true),
            queued: AtomicU64::new(0),
            copy: Mutex::new(None),
            bell: crate::runner::Doorbell::new(crate::vcpu::Shared::new(1)),
        })
    }

    fn end(seq: u64) -> Arc<EpochEnd> {
        Arc::new(EpochEnd {
            seq,
            output_start: 0,
            output: Vec::new(),
            released: 0,
            net: Vec::new(),
            net_released: Vec::new(),
            figures: wire::EpochReport::default(),
            memory_hash: None,
            fence: None,
        })
    }

    /// One epoch fanned out: every port past its join point gets the same
    /// container; a spare whose queue passes its byte bound is dropped (it
    /// rejoins with a copy) and never blocks the others.
    #[test]
    fn a_spare_past_its_queue_bound_is_dropped_without_stalling_the_others() {
        let fan = Fanout::default();
        let (a, c, late) = (
            link(1, Kind::Sync),
            link(2, Kind::Async),
            link(3, Kind::Sync),
        );
        let (tx_a, rx_a) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
        let (tx_c, rx_c) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
        let (tx_l, rx_l) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
        for (shared, tx, from, max_queued) in [
            (&a, tx_a, 0, 1 << 30),
            (&c, tx_c, 0, 3_000),
            (&late, tx_l, 3, 1 << 30),
        ] {
            fan.ports().push(Port {
                shared: shared.clone(),
                tx,
                from,
                max_queued,
            });
        }
        for seq in 1..=6u64 {
            let container = Arc::new(vec![seq as u8; 1_000]);
            fan.deliver(seq, container, end(seq));
            // A's sender keeps up; C's never reads.
            while let Ok(s) = rx_a.try_recv() {
                a.queued
                    .fetch_sub(s.container.len() as u64, Ordering::SeqCst);
            }
        }
        assert!(!a.is_lost() && !late.is_lost());
        assert!(
            c.is_lost(),
            "the async spare past its bound was not dropped"
        );
        assert!(c.why().contains("too far behind"), "{}", c.why());
        // C got 1..=3 (3,000 bytes), then the 4th passed its bound.
        let got: Vec<u64> = rx_c.try_iter().map(|s| s.seq).collect();
        assert_eq!(got, vec![1, 2, 3]);
        // A joiner at 3 gets only the epochs after its join point, the same
        // bytes (one Arc) as everyone else.
        let late_got: Vec<Shipment> = rx_l.try_iter().collect();
        assert_eq!(
            late_got.iter().map(|s| s.seq).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        assert!(late_got.iter().all(|s| s.container[0] == s.seq as u8));
    }

    const LINK_TEST_QUEUE: usize = 64;

    /// The backlog the encoder codes by: bytes handed to a live link's
    /// sender and not yet written; a lost link's do not count.
    #[test]
    fn the_backlog_is_the_most_unwritten_bytes_of_a_live_link() {
        let fan = Fanout::default();
        let (a, b) = (link(1, Kind::Sync), link(2, Kind::Async));
        let (tx_a, rx_a) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
        let (tx_b, _rx_b) = crossbeam::channel::bounded(LINK_TEST_QUEUE);
        for (shared, tx) in [(&a, tx_a), (&b, tx_b)] {
            fan.ports().push(Port {
                shared: shared.clone(),
                tx,
                from: 0,
                max_queued: 1 << 30,
            });
        }
        assert_eq!(fan.backlog(), 0);
        fan.deliver(1, Arc::new(vec![0; 700]), end(1));
        fan.deliver(2, Arc::new(vec![0; 300]), end(2));
        assert_eq!(fan.backlog(), 1_000);
        // A's sender wrote both; B's is still behind.
        for s in rx_a.try_iter() {
            a.queued
                .fetch_sub(s.container.len() as u64, Ordering::SeqCst);
        }
        assert_eq!(fan.backlog(), 1_000);
        b.lose("test".into());
        assert_eq!(fan.backlog(), 0);
    }

    /// A connected heartbeat channel on loopback: (primary, shadow).
    fn heartbeat_pair() -> (FramedConn, FramedConn) {
        use transport::{Channel, HandshakeParams, Listener, Psk};
        let key = Psk::from_bytes(&[7u8; 32]).unwrap();
        let fp = Some([0xab; 32]);
        let l = Listener::bind("127.0.0.1:0").unwrap();
        let t = Duration::from_secs(20);
        std::thread::scope(|s| {
            let shadow = s.spawn(|| {
                l.accept(&HandshakeParams::new(&key, fp, Channel::Heartbeat, 3), t)
                    .unwrap()
                    .0
            });
            let params = HandshakeParams::new(&key, fp, Channel::Heartbeat, 3);
            let primary = FramedConn::connect(l.local_addr(), &params, t).unwrap().0;
            (primary, shadow.join().unwrap())
        })
    }

    /// The frames the shadow end reads until the primary closes it.
    fn frames_until_close(mut shadow: FramedConn) -> Vec<Frame> {
        shadow
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        while let Ok(f) = shadow.recv() {
            got.push(f);
        }
        got
    }

    /// A standby claims the VM when the heartbeat connection closes without
    /// a goodbye. So however the primary's heartbeat thread drops a live
    /// shadow, the last frame before the close says its state is stale;
    /// only a guest that ended says goodbye.
    #[test]
    fn a_dropped_link_tells_the_shadow_it_is_stale_before_closing() {
        let timing = Timing {
            heartbeat: Duration::from_millis(5),
            timeout: Duration::from_millis(40),
        };
        let flag = || Arc::new(AtomicBool::new(false));
        // (how the link ends, the frame the shadow sees last)
        for case in [
            "silent shadow",
            "stopped",
            "guest ended",
            "unexpected frame",
        ] {
            let (primary, mut shadow) = heartbeat_pair();
            let l = member();
            let (stop, bye, prot) = (flag(), flag(), Arc::new(AtomicBool::new(true)));
            let (l2, stop2, bye2, prot2) = (l.clone(), stop.clone(), bye.clone(), prot.clone());
            let t =
                std::thread::spawn(move || heartbeat(primary, 3, timing, l2, stop2, bye2, prot2));
            // The first heartbeat says protected.
            let first = shadow.recv().unwrap();
            assert_eq!(first.kind, FrameKind::Heartbeat, "{case}");
            assert!(
                wire::decode::<Heartbeat>("Heartbeat", &first.payload)
                    .unwrap()
                    .protected
            );
            match case {
                "silent shadow" => {}
                "stopped" => stop.store(true, Ordering::SeqCst),
                "guest ended" => bye.store(true, Ordering::SeqCst),
                _ => shadow.send(FrameKind::Ack, 3, &[]).unwrap(),
            }
            t.join().unwrap();
            let last = frames_until_close(shadow).pop().unwrap_or(first);
            if case == "guest ended" {
                assert_eq!(last.kind, FrameKind::Goodbye, "{case}");
                continue;
            }
            assert_eq!(last.kind, FrameKind::Heartbeat, "{case}");
            let hb = wire::decode::<Heartbeat>("Heartbeat", &last.payload).unwrap();
            assert!(!hb.protected, "{case}: the close would read as a crash");
            match case {
                "silent shadow" => assert!(l.why().contains("no heartbeat answer"), "{}", l.why()),
                "stopped" => assert!(!l.is_lost(), "{}", l.why()),
                _ => assert!(l.why().contains("unexpected Ack"), "{}", l.why()),
            }
        }
    }

    fn frame(kind: FrameKind, term: u64, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            term,
            seq: 1,
            payload,
        }
    }

    fn ack(term: u64, seq: u64) -> Frame {
        frame(FrameKind::Ack, term, wire::encode(&Ack { seq }))
    }

    /// A synchronous member of a protected commit set (output held from
    /// epoch 0), with epochs 1 and 2 sent on its link of term 3.
    fn member() -> Arc<LinkShared> {
        let l = link(1, Kind::Sync);
        {
            let mut set = l.commit.lock();
            set.add(1, "spare1", Kind::Sync, 0, true);
            assert_eq!(set.hold_from(0, &[1]), vec!["spare1".to_string()]);
        }
        l.track(1);
        l.track(2);
        l
    }

    /// Forged acks (an epoch after the last one sent, an epoch acked
    /// already, another term) drop the link and release nothing.
    #[test]
    fn an_ack_for_an_epoch_not_sent_or_of_another_term_never_counts_as_a_commit() {
        let l = member();
        assert!(answer(&l, 3, &ack(3, 1)));
        assert_eq!(l.commit.lock().released(), Some(1));
        for (forged, why) in [
            (ack(3, 5), "after the last epoch sent"),
            (ack(3, 1), "awaits no ack"),
            (ack(4, 2), "of term 4 on a link of term 3"),
        ] {
            let l = member();
            assert!(answer(&l, 3, &ack(3, 1)));
            assert!(!answer(&l, 3, &forged), "{why}: the link lives on");
            assert!(l.is_lost());
            assert!(
                l.why().contains("protocol error") && l.why().contains(why),
                "{}",
                l.why()
            );
            assert_eq!(l.commit.lock().released(), Some(1), "{why}: released");
            assert_eq!(l.acked.load(Ordering::SeqCst), 1);
        }
        // The real ack of 2 still counts on a sound link.
        assert!(answer(&l, 3, &ack(3, 2)));
        assert_eq!(l.commit.lock().released(), Some(2));
    }

    /// A refusal claiming a takeover supersedes the primary only for a
    /// newer term, from an answer naming an epoch sent on the link.
    #[test]
    fn a_refusal_supersedes_only_when_believed() {
        let nack = |term, seq, by| {
            frame(
                FrameKind::Nack,
                term,
                wire::encode(&Nack {
                    seq,
                    reason: "test".into(),
                    superseded_by: by,
                }),
            )
        };
        for (f, by) in [
            (nack(3, 2, Some(4)), 4),
            (nack(3, 0, Some(9)), 9),
            (nack(3, 7, Some(4)), 0),
            (nack(3, 1, Some(3)), 0),
            (nack(2, 1, Some(4)), 0),
        ] {
            let l = member();
            assert!(!answer(&l, 3, &f));
            assert!(l.is_lost());
            assert_eq!(l.superseded.load(Ordering::SeqCst), by, "{}", l.why());
        }
    }
}
