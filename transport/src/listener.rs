//! Accepting connections on the standby, unmoved by hostile peers.
//!
//! [`Listener::accept`] serves one peer at a time (tests, benches).
//! [`Listener::serve`] is what a standby runs: an accept thread hands each
//! TCP connection to its own handshake thread, so a slow or idle peer
//! holds only its own thread, never the next peer's handshake. Bounds:
//!
//! - every handshake has one absolute deadline (re-armed before each read);
//! - at most `max_pending` handshakes in flight, and `max_per_source` from
//!   one IP address. When a bound is reached the *oldest* pending
//!   handshake (of that address, or of all) is cut to make room, so a
//!   peer holding idle connections cannot lock a real primary out: the
//!   primary's handshake takes milliseconds and is the newest, never the
//!   oldest, unless the attacker opens connections faster than a
//!   handshake completes;
//! - an optional allowlist of peer addresses, checked before anything is
//!   read;
//! - refusals are reported at most [`REPORTS_PER_SECOND`] a second, the rest
//!   counted; the queue of established connections is bounded.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::FramedConn;
use crate::error::{Result, TransportError};
use crate::handshake::{Channel, HandshakeParams, PeerInfo, PROTOCOL_VERSION};
use crate::key::Psk;

/// Most refusals reported per second by [`Incoming`]; the rest are counted
/// and summed up in the next report.
pub const REPORTS_PER_SECOND: u32 = 5;

/// A listening socket whose accepted connections go through the handshake.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    local: SocketAddr,
}

impl Listener {
    /// Binds to `addr` (e.g. `"0.0.0.0:7070"`, or port 0 for any free port).
    pub fn bind<A: ToSocketAddrs + fmt::Display>(addr: A) -> Result<Listener> {
        let err = |source| TransportError::Listen {
            addr: addr.to_string(),
            source,
        };
        let inner = TcpListener::bind(&addr).map_err(err)?;
        let local = inner.local_addr().map_err(err)?;
        Ok(Listener { inner, local })
    }

    /// Waits (without limit) for the next TCP connection, then runs the
    /// handshake as the responder within `timeout`, on this thread.
    ///
    /// An error concerns that one peer only; call `accept` again for the
    /// next. A standby uses [`Listener::serve`] instead, where one slow
    /// peer cannot delay another.
    pub fn accept(
        &self,
        params: &HandshakeParams<'_>,
        timeout: Duration,
    ) -> Result<(FramedConn, PeerInfo)> {
        let stream = self.accept_tcp()?;
        FramedConn::accept(stream, params, timeout)
    }

    fn accept_tcp(&self) -> Result<TcpStream> {
        loop {
            match self.inner.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(TransportError::Listen {
                        addr: self.local.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// The address actually bound (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves connections concurrently on background threads, under
    /// `config`'s bounds; established connections and (rate-limited)
    /// refusals arrive through the returned [`Incoming`].
    pub fn serve(self, config: ServeConfig) -> Result<Incoming> {
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let shared = Arc::new(Shared {
            config,
            pending: Mutex::new(Pending::default()),
            reports: Mutex::new(Reports::default()),
            tx,
            stopped: AtomicBool::new(false),
        });
        let local = self.local;
        std::thread::Builder::new()
            .name("hs-listen".into())
            .spawn(move || accept_loop(self, shared))
            .map_err(|source| TransportError::Listen {
                addr: local.to_string(),
                source,
            })?;
        Ok(Incoming { rx, local })
    }
}

/// Supplies the fingerprint a responder requires at the time of each
/// handshake (`None`: accept any and learn it).
pub type FingerprintSource = Arc<dyn Fn() -> Option<[u8; 32]> + Send + Sync>;

/// What [`Listener::serve`] answers peers with, and its bounds.
#[derive(Clone)]
pub struct ServeConfig {
    /// The pre-shared key.
    pub psk: Arc<Psk>,
    /// The fingerprint required, read at each handshake.
    pub fingerprint: FingerprintSource,
    /// The channel served; `None`: either channel (one port for both).
    pub channel: Option<Channel>,
    /// This side's term, stamped on its handshake.
    pub term: u64,
    /// The deadline of each handshake.
    pub handshake_timeout: Duration,
    /// Most handshakes in flight.
    pub max_pending: usize,
    /// Most handshakes in flight from one IP address.
    pub max_per_source: usize,
    /// If set, only these peer addresses are served; others are closed
    /// before anything is read.
    pub allow: Option<Vec<IpAddr>>,
    /// Most established connections waiting for [`Incoming::next`].
    pub queue: usize,
}

impl ServeConfig {
    /// Defaults: 5 s handshakes, 64 pending, 8 per address, no allowlist,
    /// a queue of 16, either channel, term 0.
    pub fn new(psk: Arc<Psk>, fingerprint: FingerprintSource) -> ServeConfig {
        ServeConfig {
            psk,
            fingerprint,
            channel: None,
            term: 0,
            handshake_timeout: Duration::from_secs(5),
            max_pending: 64,
            max_per_source: 8,
            allow: None,
            queue: 16,
        }
    }
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("channel", &self.channel)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending", &self.max_pending)
            .field("max_per_source", &self.max_per_source)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// What a serving listener delivers.
#[derive(Debug)]
pub enum Accepted {
    /// A peer completed the handshake.
    Conn(Box<FramedConn>, PeerInfo),
    /// A peer was refused (rate-limited; `suppressed` counts the refusals
    /// not reported since the last report).
    Refused {
        /// Why.
        error: TransportError,
        /// Refusals dropped from the report since the previous one.
        suppressed: u64,
    },
}

/// The receiving end of [`Listener::serve`].
#[derive(Debug)]
pub struct Incoming {
    rx: Receiver<Accepted>,
    local: SocketAddr,
}

impl Incoming {
    /// The next established connection or refusal, waiting at most
    /// `timeout`; `None` on timeout. An error means the accept thread
    /// ended (its socket failed).
    pub fn next(&self, timeout: Duration) -> Result<Option<Accepted>> {
        match self.rx.recv_timeout(timeout) {
            Ok(a) => Ok(Some(a)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(TransportError::Listen {
                addr: self.local.to_string(),
                source: io::Error::other("the accept thread ended"),
            }),
        }
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// One handshake in flight.
struct Slot {
    id: u64,
    ip: IpAddr,
    /// A handle to cut it short.
    stream: TcpStream,
}

/// Handshakes in flight, oldest first.
#[derive(Default)]
struct Pending {
    next_id: u64,
    slots: VecDeque<Slot>,
}

impl Pending {
    /// Makes room for a handshake from `ip`, cutting the oldest pending
    /// handshake of `ip` (at the per-source bound) or of anyone (at the
    /// total bound). Returns how many were cut.
    fn make_room(&mut self, ip: IpAddr, max_total: usize, max_per_source: usize) -> usize {
        let mut cut = 0;
        while self.slots.iter().filter(|s| s.ip == ip).count() >= max_per_source.max(1) {
            let i = self.slots.iter().position(|s| s.ip == ip).expect("counted");
            self.cut(i);
            cut += 1;
        }
        while self.slots.len() >= max_total.max(1) {
            self.cut(0);
            cut += 1;
        }
        cut
    }

    fn cut(&mut self, i: usize) {
        if let Some(s) = self.slots.remove(i) {
            let _ = s.stream.shutdown(Shutdown::Both);
        }
    }

    fn remove(&mut self, id: u64) {
        self.slots.retain(|s| s.id != id);
    }
}

/// The refusal report's rate limit.
#[derive(Default)]
struct Reports {
    window: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

struct Shared {
    config: ServeConfig,
    pending: Mutex<Pending>,
    reports: Mutex<Reports>,
    tx: SyncSender<Accepted>,
    /// Set once the `Incoming` is gone.
    stopped: AtomicBool,
}

impl Shared {
    /// Reports a refusal unless the rate limit is reached (then counts it).
    /// Never blocks: a full queue drops the report and counts it.
    fn refused(&self, error: TransportError) {
        let mut r = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if r.window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            r.window = Some(now);
            r.in_window = 0;
        }
        if r.in_window >= REPORTS_PER_SECOND {
            r.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut r.suppressed);
        match self.tx.try_send(Accepted::Refused { error, suppressed }) {
            Ok(()) => r.in_window += 1,
            Err(TrySendError::Full(_)) => r.suppressed += suppressed + 1,
            Err(TrySendError::Disconnected(_)) => self.stopped.store(true, Ordering::SeqCst),
        }
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept_tcp() {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: report, back off, go on.
                shared.refused(e);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        if let Some(allow) = &shared.config.allow {
            if !allow.contains(&peer.ip()) {
                let _ = stream.shutdown(Shutdown::Both);
                shared.refused(TransportError::NotAdmitted {
                    peer,
                    reason: "its address is not in the allowlist",
                });
                continue;
            }
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let id = {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            let cut = p.make_room(
                peer.ip(),
                shared.config.max_pending,
                shared.config.max_per_source,
            );
            if cut > 0 {
                shared.refused(TransportError::NotAdmitted {
                    peer,
                    reason: "too many handshakes pending: the oldest were cut to make room",
                });
            }
            let id = p.next_id;
            p.next_id += 1;
            p.slots.push_back(Slot {
                id,
                ip: peer.ip(),
                stream: handle,
            });
            id
        };
        let shared2 = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("hs-handshake".into())
            .spawn(move || handshake(stream, id, &shared2));
        if spawned.is_err() {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = p.slots.iter().position(|s| s.id == id) {
                p.cut(i);
            }
        }
        if shared.stopped.load(Ordering::SeqCst) {
            // The `Incoming` is gone: stop serving.
            return;
        }
    }
}

/// Runs one handshake and delivers its outcome.
fn handshake(stream: TcpStream, id: u64, shared: &Shared) {
    let c = &shared.config;
    let fingerprint = (c.fingerprint)();
    let params = HandshakeParams {
        psk: &c.psk,
        protocol_version: PROTOCOL_VERSION,
        fingerprint,
        channel: c.channel.unwrap_or(Channel::Stream),
        term: c.term,
        any_channel: c.channel.is_none(),
    };
    let outcome = FramedConn::accept(stream, &params, c.handshake_timeout);
    shared
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    match outcome {
        // A bounded queue: a consumer that stops taking connections
        // stalls only this thread, which holds an established connection.
        Ok((conn, info)) => {
            if shared
                .tx
                .send(Accepted::Conn(Box::new(conn), info))
                .is_err()
            {
                shared.stopped.store(true, Ordering::SeqCst);
            }
        }
        Err(e) => shared.refused(e),
    }
}
