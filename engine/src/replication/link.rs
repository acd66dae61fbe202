//! The primary's link threads: the sender (encodes and writes epochs), the
//! acker (reads acks, releases held output) and the heartbeat thread (its
//! own connection, so heartbeats never queue behind page traffic).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use checkpoint::format::Header;
use checkpoint::pages::Compression;
use crossbeam::channel::{Receiver, Sender};
use transport::{FrameKind, FramedConn, TransportError};

use super::liveness::{ShadowDecision, ShadowMonitor};
use super::wire::{self, Ack, EpochBegin, EpochEnd, Heartbeat, Nack};
use super::Timing;
use crate::capture;
use crate::devices::DeviceManager;
use crate::error::{EngineError, Result};
use crate::store;

/// One epoch (or pre-copy round) for the sender thread.
pub(super) struct Outgoing {
    pub seq: u64,
    pub precopy: bool,
    pub body: Body,
    pub end: EpochEnd,
}

/// What the sender thread ships: an encoded container (pre-copy rounds), or
/// a captured epoch it encodes itself, so the supervisor can start the next
/// epoch while this one is compressed and sent (pipelining).
pub(super) enum Body {
    Encoded(Vec<u8>),
    Epoch(Header, Box<capture::Epoch>),
}

/// What the sender thread reports of an epoch it encoded.
pub(super) struct Encoded {
    pub seq: u64,
    pub raw_bytes: u64,
    /// The container's size: bytes on the wire.
    pub wire_bytes: u64,
    pub encode: Duration,
    /// Pages sent as XOR deltas.
    pub delta_pages: u64,
}

/// State shared with the link threads.
pub(super) struct LinkShared {
    pub(super) lost: AtomicBool,
    pub(super) acked: AtomicU64,
    /// (seq, send time) of the epochs sent and not acked yet.
    pub(super) inflight: Mutex<VecDeque<(u64, Instant)>>,
    pub(super) ack_latency: Mutex<Vec<Duration>>,
    /// Whose held output an ack releases.
    pub(super) devices: Arc<DeviceManager>,
    /// Disk-failure handover: off as soon as the link is lost (the shadow
    /// may be gone), before the supervisor's next tick notices.
    pub(super) io_failover: Arc<crate::devices::virtio::block::IoFailover>,
    pub(super) reason: Mutex<Option<String>>,
    /// The shadow said it took the VM over in this term (0: it did not).
    pub(super) superseded: AtomicU64,
    /// Figures of the epochs the sender encoded.
    pub(super) encoded: Mutex<Vec<Encoded>>,
}

impl LinkShared {
    /// Records epoch `seq` as sent now (its ack releases the output sealed
    /// in it and gives its latency).
    pub(super) fn track(&self, seq: u64) {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((seq, Instant::now()));
    }

    pub(super) fn lose(&self, why: String) {
        self.io_failover.set_enabled(false);
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(why);
        }
        self.lost.store(true, Ordering::SeqCst);
    }
}

pub(super) struct Link {
    pub(super) shared: Arc<LinkShared>,
    pub(super) tx: Option<Sender<Outgoing>>,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) hb_stop: Arc<AtomicBool>,
    pub(super) hb_goodbye: Arc<AtomicBool>,
    pub(super) hb_protected: Arc<AtomicBool>,
}

pub(super) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(EngineError::io(format!("spawning thread {name}")))
}

/// How the sender thread encodes epochs.
#[derive(Clone, Copy)]
pub(super) struct EncoderConfig {
    pub compression: Compression,
    /// Bytes of XOR-delta cache (0: no deltas).
    pub delta_cache_bytes: u64,
}

pub(super) fn sender(
    mut conn: transport::Sender,
    rx: Receiver<Outgoing>,
    term: u64,
    shared: Arc<LinkShared>,
    machine: checkpoint::fingerprint::MachineConfig,
    cfg: EncoderConfig,
    pool: Sender<Vec<u8>>,
) {
    // One encoder for the whole connection: its adaptive compression policy
    // (stop trying on incompressible memory) carries over between epochs,
    // and its delta cache holds what this shadow was sent. A new connection
    // means a new sender thread, so a new shadow never gets a delta against
    // pages it was not sent.
    let mut enc = match checkpoint::pages::MemoryEncoder::new(cfg.compression) {
        Ok(e) => e,
        Err(e) => {
            shared.lose(format!("creating the page encoder: {e}"));
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
    for mut out in rx.iter() {
        let (container, recycle) = match out.body {
            // Encoded elsewhere (pre-copy rounds): pages this encoder did
            // not see, so its cache no longer matches the shadow. The
            // buffer goes back to the supervisor's pool once sent.
            Body::Encoded(c) => {
                enc.reset_delta();
                (c, true)
            }
            Body::Epoch(header, mut ep) => {
                let t = Instant::now();
                let res = store::encode_checkpoint(&header, &machine, &ep, &mut enc, &mut bufs);
                // Hand the page buffer back for the next capture (pages
                // already faulted in); drop it if the pool is full.
                let _ = pool.try_send(std::mem::take(&mut ep.pages.data));
                match res {
                    Ok((c, stats)) => {
                        out.end.figures.raw_bytes = stats.raw_bytes;
                        super::push_bounded(
                            &mut shared.encoded.lock().unwrap_or_else(|e| e.into_inner()),
                            Encoded {
                                seq: out.seq,
                                raw_bytes: stats.raw_bytes,
                                wire_bytes: c.len() as u64,
                                encode: t.elapsed(),
                                delta_pages: stats.delta_pages,
                            },
                        );
                        (c, false)
                    }
                    Err(e) => {
                        shared.lose(format!("encoding epoch {}: {e}", out.seq));
                        return;
                    }
                }
            }
        };
        let res = (|| -> std::result::Result<(), TransportError> {
            let begin = EpochBegin {
                seq: out.seq,
                len: container.len() as u64,
                precopy: out.precopy,
            };
            conn.send(FrameKind::EpochBegin, term, &wire::encode(&begin))?;
            for chunk in container.chunks(wire::CHUNK) {
                conn.send(FrameKind::EpochData, term, chunk)?;
                if !out.precopy {
                    crate::faults::hit(crate::faults::Point::PrimaryMidEpoch);
                }
            }
            conn.send(FrameKind::EpochEnd, term, &wire::encode(&out.end))?;
            if !out.precopy {
                crate::faults::hit(crate::faults::Point::PrimaryBeforeAck);
            }
            Ok(())
        })();
        if let Err(e) = res {
            shared.lose(format!("sending epoch {}: {e}", out.seq));
            return;
        }
        if recycle {
            let _ = pool.try_send(container);
        } else {
            // The next epoch's container is written into this one.
            bufs.container = container;
        }
    }
}

pub(super) fn acker(mut conn: transport::Receiver, shared: Arc<LinkShared>) {
    loop {
        if shared.lost.load(Ordering::SeqCst) {
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
        match frame.kind {
            FrameKind::Ack => {
                let Ok(ack) = wire::decode::<Ack>("Ack", &frame.payload) else {
                    shared.lose("malformed ack".into());
                    return;
                };
                crate::faults::hit(crate::faults::Point::PrimaryBeforeRelease);
                let mut inflight = shared.inflight.lock().unwrap_or_else(|e| e.into_inner());
                let mut release = None;
                while inflight.front().is_some_and(|f| f.0 <= ack.seq) {
                    if let Some((seq, sent)) = inflight.pop_front() {
                        if seq == ack.seq {
                            super::push_bounded(
                                &mut shared.ack_latency.lock().unwrap_or_else(|e| e.into_inner()),
                                sent.elapsed(),
                            );
                        }
                        // Only epochs this primary sent are released.
                        release = Some(seq);
                    }
                }
                drop(inflight);
                shared.acked.store(ack.seq, Ordering::SeqCst);
                if let Some(seq) = release {
                    shared.devices.release_outputs(seq);
                }
            }
            FrameKind::Nack => {
                nacked(&shared, &frame.payload);
                return;
            }
            other => {
                shared.lose(format!("unexpected {other:?} frame on the stream"));
                return;
            }
        }
    }
}

pub(super) fn heartbeat(
    mut conn: FramedConn,
    term: u64,
    timing: Timing,
    shared: Arc<LinkShared>,
    stop: Arc<AtomicBool>,
    goodbye: Arc<AtomicBool>,
    protected: Arc<AtomicBool>,
) {
    let ticks = (timing.timeout.as_micros() / timing.heartbeat.as_micros().max(1)).max(1) as u32;
    let mut monitor = ShadowMonitor::new(ticks);
    if let Err(e) = conn.set_read_timeout(Some(timing.heartbeat)) {
        shared.lose(format!("heartbeat socket: {e}"));
        return;
    }
    let mut next = Instant::now();
    loop {
        if goodbye.load(Ordering::SeqCst) {
            let _ = conn.send(FrameKind::Goodbye, term, &[]);
            return;
        }
        if stop.load(Ordering::SeqCst) {
            // Tell a live shadow its state is stale before closing, so the
            // close does not make it take over.
            let _ = conn.send(
                FrameKind::Heartbeat,
                term,
                &wire::encode(&Heartbeat { protected: false }),
            );
            return;
        }
        let now = Instant::now();
        if now >= next {
            let hb = Heartbeat {
                protected: protected.load(Ordering::SeqCst) && !shared.lost.load(Ordering::SeqCst),
            };
            if let Err(e) = conn.send(FrameKind::Heartbeat, term, &wire::encode(&hb)) {
                shared.lose(format!("sending heartbeat: {e}"));
                return;
            }
            next = now + timing.heartbeat;
            if monitor.tick() == ShadowDecision::ShadowLost {
                shared.lose(format!("no heartbeat answer for {:?}", timing.timeout));
                return;
            }
        }
        match conn.recv() {
            Ok(f) if f.kind == FrameKind::HeartbeatAck => monitor.heard(),
            Ok(f) if f.kind == FrameKind::Nack => {
                nacked(&shared, &f.payload);
                return;
            }
            Ok(f) => {
                shared.lose(format!(
                    "unexpected {:?} frame on the heartbeat channel",
                    f.kind
                ));
                return;
            }
            Err(TransportError::Timeout) => {}
            Err(e) => {
                shared.lose(format!("heartbeat channel: {e}"));
                return;
            }
        }
    }
}

/// A Nack: the link is lost, and if the shadow says it took the VM over,
/// the primary is superseded.
fn nacked(shared: &LinkShared, payload: &[u8]) {
    match wire::decode::<Nack>("Nack", payload) {
        Ok(n) => {
            if let Some(t) = n.superseded_by {
                shared.superseded.fetch_max(t, Ordering::SeqCst);
            }
            shared.lose(format!("shadow refused epoch {}: {}", n.seq, n.reason));
        }
        Err(e) => shared.lose(e),
    }
}
