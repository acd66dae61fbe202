//! An encrypted, authenticated, framed TCP connection and its two halves.
//!
//! [`FramedConn`] is made by a completed handshake ([`FramedConn::connect`]
//! on the primary, [`FramedConn::accept`] or [`crate::Listener`] on the
//! standby). It can be [split](FramedConn::split) into a [`Sender`] and a
//! [`Receiver`] that live on different threads; each uses its direction's
//! key and record counter.
//!
//! After any error other than [`TransportError::Timeout`] the connection is
//! shut down (both halves), so a forged, replayed or corrupt record ends the
//! connection for both sides.

use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Result, TransportError};
use crate::frame::{Frame, FrameKind, Header, Limits, MAX_PLAINTEXT};
use crate::handshake::{self, Established, HandshakeParams, PeerInfo};
use crate::record::{map_io_error, seal_frame, FrameReader, Received, SealBuffers, Session};

/// Bytes of sealed records a [`Sender`] gathers before each write.
const WRITE_BATCH: usize = 1 << 20;

/// An established connection: sends and receives frames.
#[derive(Debug)]
pub struct FramedConn {
    tx: Sender,
    rx: Receiver,
}

impl FramedConn {
    /// Connects to `addr` (trying each address it resolves to) and runs the
    /// handshake as the initiator. `timeout` bounds the TCP connect and the
    /// handshake together.
    pub fn connect<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        params: &HandshakeParams<'_>,
        timeout: Duration,
    ) -> Result<(FramedConn, PeerInfo)> {
        if params.fingerprint.is_none() {
            return Err(TransportError::MissingFingerprint);
        }
        let deadline = Instant::now() + timeout;
        let connect_err = |source| TransportError::Connect {
            addr: addr.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        let mut stream = None;
        for a in addr.to_socket_addrs().map_err(connect_err)? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                break;
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| connect_err(last))?;
        establish(stream, params, timeout, deadline, Role::Initiator)
    }

    /// Runs the handshake as the responder on an accepted TCP stream.
    /// `timeout` bounds the handshake.
    pub fn accept(
        stream: TcpStream,
        params: &HandshakeParams<'_>,
        timeout: Duration,
    ) -> Result<(FramedConn, PeerInfo)> {
        establish(
            stream,
            params,
            timeout,
            Instant::now() + timeout,
            Role::Responder,
        )
    }

    /// Sends one frame.
    pub fn send(&mut self, kind: FrameKind, term: u64, payload: &[u8]) -> Result<()> {
        self.tx.send(kind, term, payload)
    }

    /// Receives the next frame; see [`Receiver::recv`].
    pub fn recv(&mut self) -> Result<Frame> {
        self.rx.recv()
    }

    /// Receives the next frame, its payload appended to `out` if `route`
    /// says so; see [`Receiver::recv_into`].
    pub fn recv_into(
        &mut self,
        out: &mut Vec<u8>,
        route: impl FnOnce(FrameKind, usize) -> bool,
    ) -> Result<Received> {
        self.rx.recv_into(out, route)
    }

    /// Sets how long `recv` waits for data (`None`: forever). A zero
    /// duration is an error.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.rx.set_read_timeout(timeout)
    }

    /// Sets how long `send` may block on a full socket (`None`: forever).
    /// A zero duration is an error.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.tx.set_write_timeout(timeout)
    }

    /// Sets the receive limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.rx.set_limits(limits);
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.tx.peer
    }

    /// Shuts the connection down in both directions; a thread blocked in
    /// `recv` or `send` on either half returns.
    pub fn shutdown(&self) {
        self.tx.shutdown();
    }

    /// Splits into halves that can be used from two threads.
    pub fn split(self) -> (Sender, Receiver) {
        (self.tx, self.rx)
    }

    /// The raw stream and session, for tests that craft records.
    #[cfg(test)]
    pub(crate) fn test_raw(&self) -> TestRaw {
        TestRaw {
            stream: self.tx.stream.try_clone().expect("clone stream"),
            session: self.tx.session.clone(),
            next_send_nonce: self.tx.nonce,
        }
    }
}

/// What tests need to speak on a connection behind its back: the socket,
/// the session and this side's next record number.
#[cfg(test)]
pub(crate) struct TestRaw {
    pub stream: TcpStream,
    pub session: Session,
    pub next_send_nonce: u64,
}

#[cfg(test)]
impl TestRaw {
    /// The sealed records of one frame, numbered from `nonce` on.
    pub fn seal(&self, nonce: u64, kind: FrameKind, term: u64, payload: &[u8]) -> Vec<u8> {
        let mut n = nonce;
        let mut wire = Vec::new();
        let h = Header::for_payload(kind, term, payload).expect("test payload fits");
        seal_frame(
            &self.session,
            &mut n,
            (&h, payload),
            &mut SealBuffers::default(),
            usize::MAX,
            |b| {
                wire.extend_from_slice(b);
                Ok(())
            },
        )
        .expect("seal");
        wire
    }
}

/// The sending half of a connection.
pub struct Sender {
    stream: TcpStream,
    peer: SocketAddr,
    session: Session,
    nonce: u64,
    dead: bool,
    /// Sealing buffers (reused).
    bufs: SealBuffers,
}

impl Sender {
    /// Sets how long a `send` may block on a peer that stops reading
    /// (`None`: forever). A send that times out fails and, like any failed
    /// send, shuts the connection down. A zero duration is an error.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream
            .set_write_timeout(timeout)
            .map_err(|source| TransportError::Io {
                peer: self.peer,
                source,
            })
    }

    /// Sends one frame: its payload is sealed into records and written in
    /// batches of about 1 MiB, so memory does not grow with the payload.
    ///
    /// A failed send shuts the connection down: a frame may have been
    /// partly written. Afterwards every send fails with
    /// [`TransportError::Closed`].
    pub fn send(&mut self, kind: FrameKind, term: u64, payload: &[u8]) -> Result<()> {
        if self.dead {
            return Err(TransportError::Closed);
        }
        let header = Header::for_payload(kind, term, payload)?;
        let (stream, peer) = (&mut self.stream, self.peer);
        let r = seal_frame(
            &self.session,
            &mut self.nonce,
            (&header, payload),
            &mut self.bufs,
            WRITE_BATCH,
            |out| stream.write_all(out).map_err(|e| map_io_error(e, peer)),
        );
        self.bufs.trim(2 * WRITE_BATCH + MAX_PLAINTEXT);
        if let Err(e) = r {
            self.dead = true;
            let _ = self.stream.shutdown(Shutdown::Both);
            return Err(e);
        }
        Ok(())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Shuts the connection down in both directions (the receiving half,
    /// even on another thread, sees [`TransportError::Closed`]).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("peer", &self.peer)
            .field("next_record", &self.nonce)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a connection.
pub struct Receiver {
    reader: FrameReader<TcpStream>,
    peer: SocketAddr,
    dead: bool,
}

impl Receiver {
    /// Receives the next frame. Checks, in order: record length,
    /// authenticated decryption under this direction's key and the
    /// record's number (so replayed, reordered, dropped or forged records
    /// fail), then the frame header's flags, kind and length (before
    /// allocating).
    ///
    /// [`TransportError::Timeout`] means no complete frame arrived within
    /// the read timeout; the connection stays usable and a partly received
    /// frame is completed by the next call. [`TransportError::Closed`] means
    /// the peer closed the connection between frames. Any other error shuts
    /// the connection down, and later calls return `Closed`.
    pub fn recv(&mut self) -> Result<Frame> {
        if self.dead {
            return Err(TransportError::Closed);
        }
        let r = self.reader.read();
        self.check(r)
    }

    /// Receives the next frame like [`Receiver::recv`], but once its header
    /// has arrived (before any of its payload is stored), `route(kind,
    /// len)` may have its payload decrypted straight onto the end of `out`
    /// ([`Received::Appended`]) instead of into a buffer of its own
    /// ([`Received::Frame`]): a receiver that gathers payloads saves a copy.
    ///
    /// After a [`TransportError::Timeout`], a frame routed to `out` is
    /// completed by the next call only with the same buffer (same address
    /// and length); otherwise that call fails with
    /// [`TransportError::BufferChanged`]. Until the frame completes, `out`
    /// past what it held before the frame may hold bytes not yet
    /// authenticated (never more than the frame's payload length), which the
    /// caller must not use; after `BufferChanged` they are the caller's to
    /// discard. After any other error, `out` is
    /// cut back to what it held before the frame.
    pub fn recv_into(
        &mut self,
        out: &mut Vec<u8>,
        route: impl FnOnce(FrameKind, usize) -> bool,
    ) -> Result<Received> {
        if self.dead {
            return Err(TransportError::Closed);
        }
        let r = self.reader.read_into(out, route);
        self.check(r)
    }

    /// Shuts the connection down on a fatal error.
    fn check<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_fatal() {
                self.dead = true;
                self.shutdown();
            }
        }
        r
    }

    /// Sets how long `recv` waits for data (`None`: forever). A zero
    /// duration is an error.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream()
            .set_read_timeout(timeout)
            .map_err(|source| TransportError::Io {
                peer: self.peer,
                source,
            })
    }

    /// Sets the receive limits (default: 64 MiB payloads).
    pub fn set_limits(&mut self, limits: Limits) {
        self.reader.set_limits(limits);
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Shuts the connection down in both directions (the sending half,
    /// even on another thread, fails its next send).
    pub fn shutdown(&self) {
        let _ = self.stream().shutdown(Shutdown::Both);
    }

    fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("peer", &self.peer)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// Which side of the handshake this end plays.
#[derive(Clone, Copy)]
enum Role {
    Initiator,
    Responder,
}

/// Runs the handshake on `stream` and builds the connection.
fn establish(
    stream: TcpStream,
    params: &HandshakeParams<'_>,
    timeout: Duration,
    deadline: Instant,
    role: Role,
) -> Result<(FramedConn, PeerInfo)> {
    let peer = stream.peer_addr().map_err(|_| TransportError::Closed)?;
    let io_err = |source| TransportError::Io { peer, source };
    stream.set_nodelay(true).map_err(io_err)?;
    let outcome = match role {
        Role::Initiator => handshake::initiate(&stream, params, deadline),
        Role::Responder => handshake::respond(&stream, params, deadline),
    };
    let Established {
        info,
        session,
        send_nonce,
        recv_nonce,
    } = match outcome {
        Ok(done) => done,
        Err(e) => {
            let _ = stream.shutdown(Shutdown::Both);
            return Err(match e {
                TransportError::Timeout => TransportError::HandshakeTimeout {
                    peer,
                    after: timeout,
                },
                e => e,
            });
        }
    };
    stream.set_read_timeout(None).map_err(io_err)?;
    stream.set_write_timeout(None).map_err(io_err)?;
    let session: Session = Arc::new(session);
    let tx = Sender {
        stream: stream.try_clone().map_err(io_err)?,
        peer,
        session: session.clone(),
        nonce: send_nonce,
        dead: false,
        bufs: SealBuffers::default(),
    };
    let rx = Receiver {
        reader: FrameReader::new(stream, peer, session, recv_nonce, Limits::default()),
        peer,
        dead: false,
    };
    Ok((FramedConn { tx, rx }, info))
}
