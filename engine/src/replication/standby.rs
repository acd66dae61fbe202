//! The standby: receives epochs into a staging buffer, verifies each one
//! completely, acknowledges it, applies it to the shadow's guest memory, and
//! takes over when the primary is gone.
//!
//! A shadow never applies a partial epoch: bytes are staged until the whole
//! container has arrived, then verified (`checkpoint::verify`: magic,
//! version, fingerprint, every CRC, every page record, chain link), and only
//! then acknowledged and applied. The ack is sent while holding the shadow
//! lock, so a takeover (which takes the same lock) resumes from every epoch
//! the primary may have released output for.
//!
//! The VM is created (vCPUs, memory slots, irqchip) as soon as the first full
//! epoch is applied, so activation at takeover only loads state and starts
//! the vCPU threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use checkpoint::fingerprint::{Fingerprint, MachineConfig};
use checkpoint::format::{CheckpointKind, Limits};
use crossbeam::channel::{self, Sender};
use transport::{
    Accepted, Channel, FrameKind, FramedConn, Incoming, Listener, Psk, Received, ServeConfig,
    TransportError,
};

use super::arbiter::Arbiter;
use super::bounds::{self, Admission, Policy, ReplicaShape, ShapeCaps};
use super::consoleout::CommittedOutput;
use super::hbconns::HeartbeatConns;
use super::liveness::{StandbyDecision, StandbyFsm, StandbyInput, TICK};
use super::wire::{self, Ack, EpochBegin, EpochEnd, FenceInfo, Heartbeat, Nack};
use super::Timing;
use crate::devices::virtio::block::{DiskImage, DiskSpec};
use crate::error::{EngineError, Result};
use crate::memory::Ram;
use crate::staged::{Prior, StagedEpoch};
use crate::store::EpochState;
use crate::vm::{Vm, VmConfig};

/// How the standby runs.
pub struct StandbyConfig {
    /// Address to listen on.
    pub listen: String,
    /// The pre-shared key.
    pub psk: Arc<Psk>,
    /// If set, only primaries connecting from these addresses are served.
    pub allow: Option<Vec<std::net::IpAddr>>,
    /// Bounds on handshakes in flight (total, per source address).
    pub max_handshakes: (usize, usize),
    /// Heartbeats and timeouts.
    pub timing: Timing,
    /// Console after a takeover.
    pub console: Box<dyn std::io::Write + Send>,
    /// The configuration this standby runs as a primary with after a
    /// takeover (its `term` is replaced by the new term; the record's other
    /// spares join its `shadows`). Without any spare it runs unprotected.
    pub reprotect: super::primary::PrimaryConfig,
    /// As an asynchronous spare, how long to let synchronous spares claim
    /// the VM first.
    pub async_grace: Duration,
    /// Cap on one epoch's staging, in bytes: the received container and,
    /// separately, its decoded pages (`None`: the guest's memory and disks
    /// plus 10% and 64 MiB, enough for any full epoch).
    pub max_epoch_bytes: Option<u64>,
    /// The largest VM this standby shadows (`--max-mem-mib`,
    /// `--max-vcpus`): a primary that announces more is refused before
    /// anything of its size is staged or created.
    pub caps: ShapeCaps,
    /// The replica images, in the primary's disk order.
    pub disks: Vec<std::path::PathBuf>,
    /// The TAPs for the primary's NICs, in its order.
    pub nets: Vec<crate::devices::virtio::net::NetSpec>,
    /// When epochs with disk writes are acknowledged.
    pub disk_ack: DiskAck,
    /// The arbiter a takeover must win (`None`: `--arbiter none`, a
    /// takeover needs only the primary's silence).
    pub arbiter: Option<Box<dyn Arbiter>>,
    /// Write the takeover's figures here as JSON, once the guest runs.
    pub stats_json: Option<std::path::PathBuf>,
    /// Guest memory created and populated before any primary connects
    /// (`--reserve-mib`): the first full epoch of a VM of exactly this
    /// size builds on it, so a live copy never waits for the host to
    /// provide memory (docs/spares.md, "Reserved memory").
    pub reserved: Option<Ram>,
}

/// When the standby acknowledges an epoch that writes its disks
/// (`docs/disk-replication.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskAck {
    /// Once the epoch is staged in memory; the blocks are written to the
    /// replicas right after the ack (Remus; DRBD protocol B).
    #[default]
    Memory,
    /// Once the blocks are written to the replicas and flushed to their
    /// disks (`fdatasync`; DRBD protocol C).
    Durable,
}

impl std::str::FromStr for DiskAck {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "memory" => Ok(DiskAck::Memory),
            "durable" => Ok(DiskAck::Durable),
            other => Err(format!("--disk-ack {other:?}: expected memory or durable")),
        }
    }
}

/// The committed shadow state.
#[derive(Default)]
struct Shadow {
    machine: Option<MachineConfig>,
    fingerprint: Option<Fingerprint>,
    vm: Option<Vm>,
    state: Option<EpochState>,
    /// Committed console output the primary may not have released,
    /// ending at the committed position.
    output: CommittedOutput,
    /// Committed frames the primary may not have sent, per NIC.
    frames: super::netout::CommittedFrames,
    /// The TAPs for the NICs (`--net`).
    nets: Vec<crate::devices::virtio::net::NetSpec>,
    seq: u64,
    /// The last epoch applied to memory (pre-copy or committed).
    memory_seq: Option<u64>,
    term: u64,
    taken_over: bool,
    /// (primary's figures, container bytes) of every committed epoch.
    reports: Vec<(wire::EpochReport, u64)>,
    /// What a primary's announcements must fit: the caps, the replicas'
    /// sizes, the cap on one epoch's staging (`--max-epoch-mib`).
    policy: Policy,
    /// Epochs whose memory hash matched the primary's (test mode).
    verified: u64,
    /// The first epoch whose memory differed from the primary's.
    diverged: Option<u64>,
    /// Build the VM with dirty logging (it will replicate after a takeover).
    log_dirty: bool,
    /// The replica images, opened for writing.
    replicas: Vec<Arc<DiskImage>>,
    disk_ack: DiskAck,
    /// The arbiter's identity (`None`: no arbiter).
    arbiter_id: Option<String>,
    /// How the primary of the committed epoch is fenced.
    fence: Option<FenceInfo>,
    /// When the last epoch was committed.
    committed_at: Option<Instant>,
    /// The term of the primary it last said it is in sync with.
    in_sync_term: u64,
    /// Memory reserved for the VM (`StandbyConfig::reserved`), until the
    /// first full epoch takes it or finds it the wrong size.
    reserved: Option<Ram>,
}

impl Shadow {
    /// Says how many commits matched the primary's memory (test mode).
    fn report_verified(&self) {
        if self.verified > 0 || self.diverged.is_some() {
            eprintln!(
                "hotspare: shadow memory matched the primary's at {} committed epochs{}",
                self.verified,
                self.diverged
                    .map(|s| format!("; DIVERGED first at epoch {s}"))
                    .unwrap_or_default()
            );
        }
    }
}

enum Event {
    Input(StandbyInput),
    /// An input from heartbeat connection `conn` (numbered in the order
    /// accepted), filtered by [`HeartbeatConns`] before the decision core.
    Heartbeat {
        conn: u64,
        input: StandbyInput,
    },
    Refused(String),
}

#[path = "takeover.rs"]
mod takeover;
use takeover::{claim, take_over, Takeover};

#[cfg(test)]
#[path = "standby_tests.rs"]
mod tests;

/// Runs the standby until it takes over and the guest stops (returns the
/// guest's exit status), or until the primary's guest ends on its own.
pub fn run(cfg: StandbyConfig) -> Result<i32> {
    let StandbyConfig {
        listen,
        psk,
        allow,
        max_handshakes,
        timing,
        console,
        reprotect,
        async_grace,
        max_epoch_bytes,
        caps,
        disks,
        nets,
        disk_ack,
        mut arbiter,
        stats_json,
        reserved,
    } = cfg;
    let arbiter_id = match arbiter.as_mut() {
        Some(a) => Some(a.identity().map_err(|e| {
            EngineError::Config(format!("the standby cannot reach its arbiter: {e}"))
        })?),
        // `--arbiter none`: the command line warned already.
        None => None,
    };
    let replicas = disks
        .iter()
        .map(|path| {
            let spec = DiskSpec {
                path: path.clone(),
                read_only: false,
            };
            DiskImage::open(&spec)
                .map(Arc::new)
                .map_err(|e| EngineError::Config(format!("replica {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let policy = Policy {
        caps,
        replicas: replicas
            .iter()
            .map(|r| ReplicaShape {
                path: r.path.clone(),
                bytes: r.bytes,
            })
            .collect(),
        max_epoch: max_epoch_bytes,
    };
    let listener = Listener::bind(&listen).map_err(EngineError::Transport)?;
    let local = listener.local_addr();
    let shadow = Arc::new(Mutex::new(Shadow {
        // It replicates after a takeover (dirty logging costs nothing
        // while the vCPUs do not run).
        log_dirty: true,
        policy,
        replicas,
        nets,
        disk_ack,
        arbiter_id,
        reserved,
        ..Shadow::default()
    }));
    let (ev_tx, ev_rx) = channel::unbounded::<Event>();
    let last_heard = Arc::new(Mutex::new(Instant::now()));
    // The term this standby took the VM over in (0: it did not). Read by
    // the heartbeat threads without the shadow lock, which a commit holds
    // for as long as it applies an epoch.
    let took_over = Arc::new(AtomicU64::new(0));
    {
        // Each handshake runs on its own thread under these bounds, so a
        // slow or idle peer never delays a primary's (docs/security.md).
        let fp_shadow = shadow.clone();
        let mut serve = ServeConfig::new(
            psk,
            // A poisoned shadow is never read: the connection's loop then
            // fails to lock it too, and the decision loop ends the process.
            Arc::new(move || lock(&fp_shadow).ok()?.fingerprint.map(|f| *f.as_bytes())),
        );
        serve.handshake_timeout = Duration::from_secs(2);
        (serve.max_pending, serve.max_per_source) = max_handshakes;
        serve.allow = allow;
        let incoming = listener.serve(serve).map_err(EngineError::Transport)?;
        eprintln!("hotspare: standby listening on {local}");
        crate::events::emit(crate::events::Event::Listening {
            addr: local.to_string(),
        });
        let (shadow, ev_tx, last_heard) = (shadow.clone(), ev_tx.clone(), last_heard.clone());
        let took_over = took_over.clone();
        std::thread::Builder::new()
            .name("hs-accept".into())
            .spawn(move || accept_loop(incoming, shadow, ev_tx, last_heard, took_over))
            .map_err(EngineError::io("spawning the accept thread"))?;
    }
    let mut fsm = StandbyFsm::new(timing.timeout_ticks());
    let mut conns = HeartbeatConns::default();
    // When the current claim started (for the takeover's figures).
    let mut claimed: Option<Instant> = None;
    // Ticks are fed for the time since here.
    let mut tick_base = Instant::now();
    loop {
        if shadow.is_poisoned() {
            // A commit panicked while holding the shadow: what it holds may
            // be half-applied. Never take over from it; end the process.
            return Err(EngineError::ShadowPoisoned);
        }
        // Sleep until an input comes or a tick could decide something (at
        // most MAX_IDLE_TICKS, for the poison check), then feed the ticks
        // that passed since `tick_base`, then the input. At most one wait's
        // ticks per wake-up: a stalled standby process that wakes up to an
        // empty queue (its heartbeat thread not yet run) counts the wait it
        // planned, not the stall, and an input counts fewer ticks than
        // decide.
        let wait = fsm
            .ticks_to_decision()
            .unwrap_or(MAX_IDLE_TICKS)
            .clamp(1, MAX_IDLE_TICKS);
        let got = ev_rx.recv_deadline(tick_base + TICK * wait);
        let now = Instant::now();
        let passed = (now.saturating_duration_since(tick_base).as_micros() / TICK.as_micros())
            .min(u128::from(wait - 1)) as u32;
        let (ticks, event) = match got {
            Ok(Event::Input(i)) => (passed, Some(i)),
            Ok(Event::Heartbeat { conn, input }) => {
                let admitted = conns.admit(conn, input);
                if admitted.is_none() {
                    tracing::debug!(
                        "dropped {input:?} from heartbeat connection {conn}: the primary \
                         replaced it with connection {:?}",
                        conns.current()
                    );
                }
                (passed, admitted)
            }
            Ok(Event::Refused(why)) => {
                tracing::warn!("refused a peer: {why}");
                (passed, None)
            }
            Err(channel::RecvTimeoutError::Timeout) => (wait, None),
            Err(channel::RecvTimeoutError::Disconnected) => {
                return Err(EngineError::Config("standby accept loop ended".into()))
            }
        };
        // Keep the part of a tick that passed, unless this wake-up came
        // later than one wait (then the overshoot is not counted).
        tick_base += TICK * ticks;
        if now.saturating_duration_since(tick_base) >= TICK {
            tick_base = now;
        }
        for input in std::iter::repeat_n(StandbyInput::Tick, ticks as usize).chain(event) {
            let mut decision = fsm.step(input);
            while let StandbyDecision::Claim { term, seq } = decision {
                let since = *claimed.get_or_insert_with(Instant::now);
                let answer = claim(&shadow, &mut arbiter, term, seq, since, async_grace);
                decision = fsm.step(answer);
            }
            if !matches!(
                fsm.state(),
                super::liveness::StandbyState::Claiming | super::liveness::StandbyState::TookOver
            ) {
                claimed = None;
            }
            match decision {
                StandbyDecision::Continue | StandbyDecision::Claim { .. } => {}
                StandbyDecision::Forget => {
                    let mut sh = lock(&shadow)?;
                    sh.state = None;
                    sh.fence = None;
                    eprintln!("hotspare: standby stays a shadow; its committed state is stale and forgotten until a primary resyncs it");
                }
                StandbyDecision::RefuseStale { theirs, ours } => {
                    tracing::warn!(
                        "refused a frame of term {theirs}: this standby is at term {ours}"
                    );
                }
                StandbyDecision::LostBeforeSync => {
                    tracing::warn!(
                        "primary lost before a usable commit; waiting for a primary to (re)connect"
                    );
                }
                StandbyDecision::Stop => {
                    let sh = lock(&shadow)?;
                    sh.report_verified();
                    let cpu_s = crate::cpu::process_cpu_time().as_secs_f64();
                    eprintln!(
                        "hotspare: standby saw {} committed epochs; no takeover; cpu {cpu_s:.3} s",
                        sh.reports.len(),
                    );
                    crate::events::emit(crate::events::Event::StandbyEnded {
                        epochs: sh.reports.len() as u64,
                        cpu_s,
                        threads_cpu_s: crate::cpu::cpu_seconds_by_thread(Some("hs-main")),
                    });
                    eprintln!("hotspare: the primary's guest stopped on its own; standby exits without taking over");
                    return Ok(0);
                }
                StandbyDecision::TakeOver { term, .. } => {
                    let decided = Instant::now();
                    let claim_at = claimed.unwrap_or(decided);
                    // A plain time stamp: a panic cannot leave it half-written.
                    let heard = *last_heard.lock().unwrap_or_else(|e| e.into_inner());
                    return take_over(
                        &shadow,
                        Takeover {
                            term,
                            console,
                            detection: claim_at.saturating_duration_since(heard),
                            arbiter_time: decided.duration_since(claim_at),
                            decided,
                            reprotect,
                            arbiter,
                            stats_json,
                            took_over,
                            last_heard: last_heard.clone(),
                        },
                    );
                }
            }
        }
    }
}

fn accept_loop(
    incoming: Incoming,
    shadow: Arc<Mutex<Shadow>>,
    ev: Sender<Event>,
    last_heard: Arc<Mutex<Instant>>,
    took_over: Arc<AtomicU64>,
) {
    // Heartbeat connections, numbered in the order accepted.
    let mut heartbeat_conns = 0u64;
    loop {
        match incoming.next(Duration::from_secs(1)) {
            Ok(Some(Accepted::Conn(conn, peer))) => {
                let conn = *conn;
                let (shadow, ev2, heard) = (shadow.clone(), ev.clone(), last_heard.clone());
                let took_over = took_over.clone();
                let term = peer.peer_term;
                let spawned = match peer.channel {
                    Channel::Heartbeat => {
                        heartbeat_conns += 1;
                        let id = heartbeat_conns;
                        crate::cpu::spawn_accounted("hs-heartbeat", move || {
                            heartbeat_loop(conn, id, took_over, ev2, heard)
                        })
                    }
                    Channel::Stream => crate::cpu::spawn_accounted("hs-stream", move || {
                        stream_loop(conn, term, shadow, took_over, ev2, heard)
                    }),
                };
                if let Err(e) = spawned {
                    tracing::error!("cannot spawn a connection thread: {e}");
                }
            }
            Ok(Some(Accepted::Refused { error, suppressed })) => {
                let why = if suppressed > 0 {
                    format!("{error} (and {suppressed} more refusals not shown)")
                } else {
                    error.to_string()
                };
                if ev.send(Event::Refused(why)).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = ev.send(Event::Refused(e.to_string()));
                return;
            }
        }
    }
}

/// After a takeover, the term this standby now runs in (`took_over`), if a
/// frame of `term` comes from a primary it superseded.
fn superseded_by(took_over: &AtomicU64, term: u64) -> Option<u64> {
    let by = took_over.load(Ordering::SeqCst);
    (by > term).then_some(by)
}

fn heartbeat_loop(
    mut conn: FramedConn,
    id: u64,
    took_over: Arc<AtomicU64>,
    ev: Sender<Event>,
    heard: Arc<Mutex<Instant>>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    loop {
        let f = match conn.recv() {
            Ok(f) => f,
            Err(TransportError::Timeout) => continue,
            Err(e) => {
                tracing::debug!("heartbeat channel closed: {e}");
                let _ = ev.send(Event::Heartbeat {
                    conn: id,
                    input: StandbyInput::PeerClosed,
                });
                return;
            }
        };
        if let Some(by) = superseded_by(&took_over, f.term) {
            // A primary this standby superseded: tell it, and close.
            let nack = Nack {
                seq: 0,
                reason: format!("this standby took the VM over in term {by}"),
                superseded_by: Some(by),
            };
            let _ = conn.send(FrameKind::Nack, f.term, &wire::encode(&nack));
            return;
        }
        let input = match f.kind {
            FrameKind::Heartbeat => {
                // A plain time stamp: a panic cannot leave it half-written.
                *heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                let _ = conn.send(FrameKind::HeartbeatAck, f.term, &[]);
                match wire::decode::<Heartbeat>("Heartbeat", &f.payload) {
                    Ok(h) if h.protected => StandbyInput::Heartbeat { term: f.term },
                    Ok(_) => StandbyInput::Stale { term: f.term },
                    Err(e) => {
                        let _ = ev.send(Event::Refused(e));
                        continue;
                    }
                }
            }
            FrameKind::Goodbye => StandbyInput::Goodbye { term: f.term },
            other => {
                let _ = ev.send(Event::Refused(format!(
                    "unexpected {other:?} on the heartbeat channel"
                )));
                continue;
            }
        };
        let bye = matches!(input, StandbyInput::Goodbye { .. });
        if ev.send(Event::Heartbeat { conn: id, input }).is_err() || bye {
            return;
        }
    }
}

/// Receives epochs until the stream breaks. Errors abort only the epoch in
/// flight: the shadow stays at its last commit.
fn stream_loop(
    mut conn: FramedConn,
    term: u64,
    shadow: Arc<Mutex<Shadow>>,
    took_over: Arc<AtomicU64>,
    ev: Sender<Event>,
    heard: Arc<Mutex<Instant>>,
) {
    let mut staging: Vec<u8> = Vec::new();
    // Containers on this stream are authenticated record by record.
    let mut stage = StagedEpoch::authenticated();
    let mut current: Option<(EpochBegin, Admission)> = None;
    loop {
        // Epoch data within the epoch's announced length is decrypted
        // straight onto the staged bytes; anything else comes as a frame.
        let room = current.as_ref().map(|(_, a)| a.room(staging.len()));
        let route = |kind, len: usize| {
            kind == FrameKind::EpochData && room.is_some_and(|r| len as u64 <= r)
        };
        let f = match conn.recv_into(&mut staging, route) {
            Ok(f) => f,
            Err(TransportError::Timeout) => continue,
            Err(e) => {
                tracing::warn!(
                    "stream from the primary ended: {e}; the shadow stays at its last commit"
                );
                return;
            }
        };
        // A plain time stamp: a panic cannot leave it half-written.
        *heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let res: std::result::Result<(), String> = match f {
            // Epoch data already on the staged bytes.
            Received::Appended { .. } => match &mut current {
                Some((b, admission)) => admission
                    .appended(&staging)
                    .map_err(|e| format!("epoch {}: {e}", b.seq)),
                None => Err("epoch data without an EpochBegin".into()),
            },
            Received::Frame(f) => match f.kind {
                FrameKind::EpochBegin => {
                    wire::decode::<EpochBegin>("EpochBegin", &f.payload).and_then(|b| {
                        let admission = {
                            let sh = lock(&shadow).map_err(|e| e.to_string())?;
                            sh.policy.admit(sh.machine.as_ref(), b.seq, b.len)
                        };
                        let admission = admission.map_err(|e| e.to_string())?;
                        staging.clear();
                        // Grown as bytes arrive, from at most 64 MiB.
                        staging.reserve(usize::try_from(b.len.min(64 << 20)).unwrap_or(0));
                        current = Some((b, admission));
                        Ok(())
                    })
                }
                FrameKind::EpochData => match &mut current {
                    Some((b, admission)) => admission
                        .data(&mut staging, &f.payload)
                        .map_err(|e| format!("epoch {}: {e}", b.seq)),
                    None => Err("epoch data without an EpochBegin".into()),
                },
                FrameKind::EpochEnd => match (
                    current.take().map(|c| c.0),
                    wire::decode::<EpochEnd>("EpochEnd", &f.payload),
                ) {
                    (Some(b), Ok(end)) if end.seq == b.seq && staging.len() as u64 == b.len => {
                        commit(
                            &mut conn, &shadow, &mut stage, &staging, end, b.precopy, f.term, &ev,
                        )
                    }
                    (Some(b), Ok(end)) => Err(format!(
                        "epoch {} ended as {} with {} of {} bytes",
                        b.seq,
                        end.seq,
                        staging.len(),
                        b.len
                    )),
                    (None, _) => Err("EpochEnd without an EpochBegin".into()),
                    (_, Err(e)) => Err(e),
                },
                other => Err(format!("unexpected {other:?} frame on the stream")),
            },
        };
        if let Err(why) = res {
            refuse(&mut conn, term, &took_over, current.take(), why);
            return;
        }
    }
}

/// Refuses the epoch in progress (`current`) with a `Nack` naming `why`,
/// then drains the connection until the primary closes it.
fn refuse(
    conn: &mut FramedConn,
    term: u64,
    took_over: &AtomicU64,
    current: Option<(EpochBegin, Admission)>,
    why: String,
) {
    tracing::error!("epoch aborted: {why}; the shadow stays at its last commit");
    let _ = conn.send(
        FrameKind::Nack,
        term,
        &wire::encode(&Nack {
            seq: current.map_or(0, |c| c.0.seq),
            reason: why,
            superseded_by: superseded_by(took_over, term),
        }),
    );
    // The primary drops the link on a Nack and starts over with a full
    // copy: epochs already in flight on this connection must not be
    // applied (after a takeover their numbers can match another history's).
    linger(conn);
}

/// How long a refused stream is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);

/// The longest the decision loop sleeps without an input, in ticks: how
/// late it may notice a poisoned shadow.
const MAX_IDLE_TICKS: u32 = 10;

/// Reads and drops what the primary still sends after a `Nack` (the rest
/// of a refused epoch), until it closes the connection or for at most
/// [`LINGER`]. Closing at once, with its epoch still arriving, would reset
/// the connection, and the primary could see the reset before the `Nack`
/// and never learn why it was refused.
fn linger(conn: &mut FramedConn) {
    let until = Instant::now() + LINGER;
    if conn
        .set_read_timeout(Some(Duration::from_millis(50)))
        .is_err()
    {
        return;
    }
    while Instant::now() < until {
        match conn.recv() {
            Ok(_) | Err(TransportError::Timeout) => {}
            Err(_) => return,
        }
    }
}

/// Locks the shadow. A poisoned lock means a thread panicked while it held
/// the shadow, in the middle of a commit: its memory, replicas and state
/// may be half-applied. So never `into_inner`: every caller refuses, and
/// the decision loop ends the process (`docs/failover.md`, guarantee 8).
fn lock(shadow: &Mutex<Shadow>) -> Result<MutexGuard<'_, Shadow>> {
    shadow.lock().map_err(|_| EngineError::ShadowPoisoned)
}

/// An epoch failed after its ack (a write into shadow memory failed, e.g.
/// the host ran out of memory): the shadow's memory is part-way between two
/// commits, so it must not take over from it. Forget the committed state
/// and the memory's position; only a new full sync makes it usable again.
fn poison(sh: &mut Shadow, why: String) -> String {
    sh.state = None;
    sh.fence = None;
    sh.memory_seq = None;
    format!("{why}; the shadow's memory is now inconsistent and it cannot take over until the primary resyncs it")
}

/// Guest memory of `bytes` for the VM the first full epoch builds: the
/// reserved memory if it has exactly that size (it is taken), else fresh
/// memory (a reservation of another size is released, with a warning).
fn memory_for(reserved: &mut Option<Ram>, bytes: u64) -> Result<Ram> {
    match reserved.take() {
        Some(r) if r.bytes() == bytes => Ok(r),
        other => {
            if let Some(r) = other {
                tracing::warn!(
                    "the primary's VM has {} MiB of memory, not the {} MiB reserved (--reserve-mib): allocating it during the copy",
                    bytes >> 20,
                    r.bytes() >> 20
                );
            }
            Ram::new(bytes)
        }
    }
}

/// Verifies a staged epoch, acknowledges it and applies it.
#[allow(clippy::too_many_arguments)]
fn commit(
    conn: &mut FramedConn,
    shadow: &Arc<Mutex<Shadow>>,
    stage: &mut StagedEpoch,
    staged: &[u8],
    end: EpochEnd,
    precopy: bool,
    term: u64,
    ev: &Sender<Event>,
) -> std::result::Result<(), String> {
    let limits = Limits::default();
    let mut sh = lock(shadow).map_err(|e| e.to_string())?;
    if sh.taken_over {
        return Err("the standby took over; epochs are no longer accepted".into());
    }
    if term < sh.term {
        return Err(format!("epoch of term {term} after term {}", sh.term));
    }
    check_fence(&sh, end.fence.as_ref())?;
    // Verified and decoded in one pass; nothing is applied unless all of
    // it passed.
    let (max_decoded, why) = sh.policy.staging_limit(sh.machine.as_ref());
    let header = stage
        .parse(staged, &limits, sh.fingerprint.as_ref(), max_decoded)
        .map_err(|e| format!("epoch {}: {e} ({why})", end.seq))?;
    if header.seq != end.seq {
        return Err(format!(
            "container holds epoch {} but the frames say {}",
            header.seq, end.seq
        ));
    }
    match header.kind {
        CheckpointKind::Full => {}
        // A new primary (a takeover) continues only from a state this
        // spare committed: memory applied as pre-copy may be torn.
        CheckpointKind::Incremental if term > sh.term && sh.seq != header.base_seq => {
            return Err(format!(
                "incremental epoch {} of a new primary (term {term}) applies on top of {}, but this shadow committed {} last: it needs a full copy",
                header.seq, header.base_seq, sh.seq
            ))
        }
        CheckpointKind::Incremental if sh.memory_seq == Some(header.base_seq) => {}
        CheckpointKind::Incremental => {
            return Err(format!(
                "incremental epoch {} applies on top of {}, but the shadow is at {}",
                header.seq,
                header.base_seq,
                sh.memory_seq.map_or("nothing".into(), |s| s.to_string())
            ))
        }
    }
    // A VM built by this epoch has memory no one has written yet.
    let prior = if sh.vm.is_none() {
        Prior::AllZero
    } else {
        Prior::Unknown
    };
    if header.kind == CheckpointKind::Full && sh.vm.is_none() {
        // The first full epoch: learn the VM configuration, build the VM.
        let machine = stage
            .config()
            .cloned()
            .ok_or("full epoch without a Config section")?;
        // Nothing of the announced size exists before this passed.
        let bytes = sh
            .policy
            .check_shape(&machine)
            .map_err(|e| format!("epoch {}: {e}", end.seq))?;
        let ram = memory_for(&mut sh.reserved, bytes).map_err(|e| e.to_string())?;
        let cfg = VmConfig {
            mem_bytes: bytes,
            vcpus: machine.vcpus,
            log_dirty: sh.log_dirty,
            vcpu_cpus: None,
            disks: sh
                .replicas
                .iter()
                .zip(&machine.disks)
                .map(|(r, l)| DiskSpec {
                    path: r.path.clone(),
                    read_only: l.read_only,
                })
                .collect(),
            // The MACs come with the device records.
            nets: sh.nets.clone(),
        };
        let mut vm =
            Vm::create(&cfg, Box::new(std::io::sink()), Some(ram)).map_err(|e| e.to_string())?;
        vm.machine = machine.clone();
        sh.vm = Some(vm);
        sh.machine = Some(machine);
        sh.fingerprint = Some(header.fingerprint);
    }
    let ram = sh.vm.as_ref().expect("VM prepared above").ram.clone();
    stage
        .check_fits(&ram)
        .map_err(|e| format!("epoch {}: {e}", end.seq))?;
    let sizes: Vec<u64> = sh.replicas.iter().map(|r| r.bytes).collect();
    stage
        .check_disks(&sizes)
        .map_err(|e| format!("epoch {}: {e}", end.seq))?;
    let replicas = sh.replicas.clone();
    let what = if precopy { "pre-copy round" } else { "epoch" };
    let state = if precopy {
        None
    } else {
        let state = stage
            .state()
            .map_err(|e| format!("epoch {}: {e}", end.seq))?;
        bounds::check_output(end.output_start, &end.output, state.console_pos)
            .and_then(|()| bounds::check_nics(end.net.len(), sh.nets.len()))
            .map_err(|e| format!("epoch {}: {e}", end.seq))?;
        Some(state)
    };
    // Nothing can refuse the epoch from here on: once a replica holds its
    // blocks, the epoch must be committed whole (memory and state too), or
    // the shadow poisoned, never left with a disk ahead of its memory.
    let mut disks_written = false;
    if sh.disk_ack == DiskAck::Durable && stage.has_disk_ops() {
        // Protocol C: the blocks are on the replicas' disks before the ack.
        if let Err(e) = stage.apply_disks(staged, &replicas, true) {
            return Err(poison(
                &mut sh,
                format!("writing verified {what} {} to the replicas: {e}", end.seq),
            ));
        }
        disks_written = true;
    }
    // Staged and verified: acknowledge, then apply under the same lock.
    if let Err(e) = conn.send(FrameKind::Ack, term, &wire::encode(&Ack { seq: end.seq })) {
        if !disks_written {
            return Err(format!("sending ack: {e}"));
        }
        // The primary never learns of this commit, so it still holds the
        // epoch's output: committing it is safe, and keeps disk and memory
        // together.
        tracing::warn!(
            "sending ack for epoch {}: {e}; committing it anyway",
            end.seq
        );
    }
    crate::faults::hit(crate::faults::Point::StandbyBeforeApply);
    if let Err(e) = stage.apply(staged, &ram, prior) {
        return Err(poison(
            &mut sh,
            format!("applying verified {what} {}: {e}", end.seq),
        ));
    }
    if sh.disk_ack == DiskAck::Memory && stage.has_disk_ops() {
        if let Err(e) = stage.apply_disks(staged, &replicas, false) {
            return Err(poison(
                &mut sh,
                format!("writing verified {what} {} to the replicas: {e}", end.seq),
            ));
        }
    }
    let Some(state) = state else {
        // A pre-copy round: memory only, not a consistent state: applied,
        // never committed. A new sync makes any older committed state
        // unusable.
        if header.kind == CheckpointKind::Full {
            sh.state = None;
        }
        sh.memory_seq = Some(end.seq);
        sh.term = term;
        return Ok(());
    };
    // Its output ends at its console position (checked before the ack).
    let full = header.kind == CheckpointKind::Full;
    let over = sh
        .output
        .commit(full, end.output_start, &end.output, end.released);
    if over > 0 {
        tracing::warn!(
            "the primary reports no release for more than {} bytes of committed console output; the {over} oldest are no longer kept for a takeover",
            super::consoleout::MAX_KEPT_BYTES
        );
    }
    let ends = sh.frames.commit(full, &end.net, &end.net_released);
    for (i, end_pos) in ends.into_iter().enumerate() {
        let id = format!("virtio-net.{i}");
        let rec = state.devices.iter().find(|r| r.id == id);
        let pos = rec.and_then(crate::devices::virtio::net::record_tx_pos);
        if pos != Some(end_pos) {
            tracing::error!(
                "epoch {}: {id}'s committed frames end at {end_pos} but its record says {pos:?}",
                end.seq
            );
            sh.frames.clear();
            break;
        }
    }
    if sh.state.is_none() || sh.in_sync_term != term {
        // Its first commit from this primary (a first sync, a resync, or a
        // new primary after a takeover).
        eprintln!(
            "hotspare: standby in sync with the primary at epoch {} (term {term})",
            end.seq
        );
        sh.in_sync_term = term;
        crate::events::emit(crate::events::Event::InSync {
            term,
            epoch: end.seq,
        });
    }
    super::push_bounded(&mut sh.reports, (end.figures, staged.len() as u64));
    if let Some(want) = end.memory_hash {
        if wire::memory_hash(&ram, &replicas) == want {
            sh.verified += 1;
        } else {
            eprintln!(
                "hotspare: SHADOW MEMORY DIVERGED at epoch {}: its hash differs from the primary's",
                end.seq
            );
            sh.diverged.get_or_insert(end.seq);
        }
    }
    sh.state = Some(state);
    sh.committed_at = Some(Instant::now());
    sh.fence = end.fence.clone();
    sh.seq = end.seq;
    sh.memory_seq = Some(end.seq);
    sh.term = term;
    drop(sh);
    if let Some(m) = crate::cpu::mark_at(end.seq, None) {
        crate::events::emit(crate::events::Event::CpuMark(m));
    }
    let _ = ev.send(Event::Input(StandbyInput::Committed { term, seq: end.seq }));
    Ok(())
}

/// Checks the primary and this standby are fenced by the same arbiter (or
/// both by none): a pair that disagrees would decide a takeover apart.
fn check_fence(sh: &Shadow, fence: Option<&FenceInfo>) -> std::result::Result<(), String> {
    if let Some(f) = fence {
        let spares = f.peers.iter().chain(&f.async_peers);
        bounds::check_fence_record(
            f.peers.len() + f.async_peers.len(),
            spares
                .chain([&f.vm, &f.arbiter, &f.spare])
                .map(String::as_str),
        )
        .map_err(|e| e.to_string())?;
    }
    match (fence, &sh.arbiter_id) {
        (None, None) => Ok(()),
        (Some(f), Some(id)) if &f.arbiter == id => Ok(()),
        (Some(f), Some(id)) => Err(format!(
            "the primary is fenced by {} but this standby by {id}: give both the same --arbiter",
            f.arbiter
        )),
        (Some(f), None) => Err(format!(
            "the primary is fenced by {} but this standby runs with --arbiter none: give it the same --arbiter",
            f.arbiter
        )),
        (None, Some(id)) => Err(format!(
            "the primary runs with --arbiter none but this standby is fenced by {id}: a takeover could fork the VM; give both the same --arbiter"
        )),
    }
}
