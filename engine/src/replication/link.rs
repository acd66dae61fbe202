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

use super::catchup::{CatchUpRound, JoinRoute, Route};
use super::commit::{CommitSet, Kind, SpareId};
use super::livecopy::{CopyFigures, CopySignals, LiveCopy};
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
    /// When its pause was over.
    pub captured: Instant,
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
    /// Its live copy finished reading (or it needed none); its catch-up
    /// round too (`catchup.rs`): its state is exact at the next capture.
    pub(super) copied: AtomicBool,
    /// When its live copy finished reading: the encoder switches it at the
    /// first epoch captured after (the catch-up round, then every epoch).
    pub(super) copy_read: Mutex<Option<Instant>>,
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
    /// Which epochs go to it: those after its join point, or for a
    /// joiner, those after its catch-up round (`catchup.rs`).
    pub route: JoinRoute,
    /// A joiner's: where its catch-up round is handed to its sender.
    pub catch_up: Option<Sender<CatchUpRound>>,
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

    /// Routes epoch `seq` for every link before it is encoded: a joiner
    /// copying keeps what it wrote, a joiner whose copy is read gets its
    /// catch-up round. Says whether the delta cache must be forgotten (a
    /// switch) and whether any link gets the epoch.
    /// An epoch captured before a copy was read is kept, however late the
    /// encoder gets to it: the round then carries what the guest wrote
    /// during the copy, not the whole epochs.
    fn route(&self, seq: u64, epoch: &capture::Epoch, captured: Instant) -> Routed {
        let mut routed = Routed::default();
        for p in self.ports().iter_mut() {
            if p.shared.is_lost() {
                continue;
            }
            let read = *p.shared.copy_read.lock().unwrap_or_else(|e| e.into_inner());
            if read.is_some_and(|t| captured > t) {
                p.route.copy_read();
            }
            let mut kept = false;
            let route = p.route.epoch(seq, |set| {
                kept = true;
                set.add_memory(written(&epoch.pages));
                for (d, b) in epoch.disks.iter().enumerate() {
                    set.add_disk(d, written(b));
                }
            });
            routed.kept |= kept;
            match route {
                Route::Withhold => {}
                Route::Send => routed.sent = true,
                Route::CatchUp(round) => {
                    routed.sent = true;
                    routed.reset = true;
                    let handed = p
                        .catch_up
                        .as_ref()
                        .is_some_and(|tx| tx.try_send(round).is_ok());
                    if !handed {
                        p.shared.lose(
                            "its sender is gone: the catch-up round was not handed over".into(),
                        );
                    }
                }
            }
        }
        routed
    }

    /// Hands one encoded epoch to every link it is routed to.
    fn deliver(&self, seq: u64, container: Arc<Vec<u8>>, end: Arc<EpochEnd>) {
        let len = container.len() as u64;
        for p in self.ports().iter() {
            if !p.route.sends(seq) || p.shared.is_lost() {
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

/// The units a batch wrote: its runs, and those it marks zero.
fn written(b: &capture::PageBatch) -> impl Iterator<Item = (u64, u64)> + '_ {
    b.runs
        .iter()
        .map(|&(at, n)| (at, u64::from(n)))
        .chain(b.zero_runs.iter().copied())
}

/// How [`Fanout::route`] routed an epoch.
#[derive(Default)]
struct Routed {
    /// Some link gets it.
    sent: bool,
    /// Some joiner kept what it wrote.
    kept: bool,
    /// Some link switched: its catch-up round replaced what the delta
    /// cache remembers.
    reset: bool,
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
        let routed = fanout.route(job.seq, &job.epoch, job.captured);
        if routed.kept && !routed.sent {
            // Only joiners, which keep its pages in their sets: nothing to
            // encode. The delta cache misses this epoch, so it starts over.
            enc.reset_delta();
            let raw_bytes = (job.epoch.pages.data.len()
                + job.epoch.disks.iter().map(|d| d.data.len()).sum::<usize>())
                as u64;
            let _ = pool.try_send(std::mem::take(&mut job.epoch.pages.data));
            super::push_bounded(
                &mut fanout.encoded.lock().unwrap_or_else(|e| e.into_inner()),
                Encoded {
                    seq: job.seq,
                    raw_bytes,
                    wire_bytes: 0,
                    encode: Duration::ZERO,
                    delta_pages: 0,
                },
            );
            continue;
        }
        if job.reset_delta || routed.reset {
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
        let signals = CopySignals {
            sent: &|seq| shared.track(seq),
            read: &|| {
                *shared.copy_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now())
            },
            lost: &|| shared.is_lost(),
        };
        match copy.send(&mut conn, term, &signals) {
            Ok(f) => {
                eprintln!(
                    "hotspare: live copy to spare {}: {} pages and disk blocks ({:.1} MiB, {:.1} MiB on the wire, {:.0}% sent plain; {} of them in the catch-up round) in {:.3} s",
                    shared.name,
                    f.units,
                    (f.units * crate::memory::PAGE_SIZE) as f64 / (1 << 20) as f64,
                    f.wire_bytes as f64 / (1 << 20) as f64,
                    100.0 * f.plain_units as f64 / f.units.max(1) as f64,
                    f.catch_up_units,
                    f.secs
                );
                crate::events::emit(crate::events::Event::LiveCopied {
                    spare: shared.name.clone(),
                    units: f.units,
                    wire_bytes: f.wire_bytes,
                    seconds: f.secs,
                    plain_units: f.plain_units,
                    catch_up_units: f.catch_up_units,
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
#[path = "link_tests.rs"]
mod tests;
