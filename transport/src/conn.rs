//! An authenticated, framed, replay-protected TCP connection and its two
//! halves.
//!
//! [`FramedConn`] is made by a completed handshake ([`FramedConn::connect`]
//! on the primary, [`FramedConn::accept`] or [`crate::Listener::accept`] on
//! the standby). It can be [split](FramedConn::split) into a [`Sender`] and
//! a [`Receiver`] that live on different threads; each owns its direction's
//! session key and sequence number.
//!
//! After any error other than [`TransportError::Timeout`] the connection is
//! shut down (both halves), so a forged, replayed or corrupt frame ends the
//! connection for both sides.

use std::fmt;
use std::io::{self, BufReader, IoSlice, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::{Result, TransportError};
use crate::frame::{header_for, mac_hashed, Frame, FrameKind, Limits, PayloadHash};
use crate::handshake::{self, HandshakeParams, PeerInfo, HANDSHAKE_MAX_PAYLOAD};
use crate::key::MacKey;
use crate::reader::{map_io_error, FrameReader, RawFrame};

/// Read buffer size of a [`Receiver`].
const READ_BUFFER: usize = 64 << 10;

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

    /// Sends one frame (the sequence number is assigned here).
    pub fn send(&mut self, kind: FrameKind, term: u64, payload: &[u8]) -> Result<()> {
        self.tx.send(kind, term, payload)
    }

    /// Receives the next frame; see [`Receiver::recv`].
    pub fn recv(&mut self) -> Result<Frame> {
        self.rx.recv()
    }

    /// Sets how long `recv` waits for data (`None`: forever). A zero
    /// duration is an error.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.rx.set_read_timeout(timeout)
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

    /// The raw stream and keys, for tests that craft frames.
    #[cfg(test)]
    pub(crate) fn test_raw(&self) -> TestRaw {
        TestRaw {
            stream: self.tx.stream.try_clone().expect("clone stream"),
            send_key: self.tx.key.clone(),
            next_send_seq: self.tx.next_seq,
            recv_key: self.rx.reader.key().clone(),
        }
    }
}

/// What tests need to speak on a connection behind its back.
#[cfg(test)]
pub(crate) struct TestRaw {
    pub stream: TcpStream,
    pub send_key: MacKey,
    pub next_send_seq: u64,
    pub recv_key: MacKey,
}

/// The sending half of a connection.
pub struct Sender {
    stream: TcpStream,
    peer: SocketAddr,
    key: MacKey,
    next_seq: u64,
    dead: bool,
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

    fn new(stream: TcpStream, peer: SocketAddr, key: MacKey) -> Sender {
        Sender {
            stream,
            peer,
            key,
            next_seq: 1,
            dead: false,
        }
    }

    /// Sends one frame: header, payload and MAC in one vectored write where
    /// the OS allows, without copying the payload. The sequence number is
    /// the next of this direction (1, 2, 3, ...).
    ///
    /// A failed send shuts the connection down: a frame may have been
    /// partly written. Afterwards every send fails with
    /// [`TransportError::Closed`].
    pub fn send(&mut self, kind: FrameKind, term: u64, payload: &[u8]) -> Result<()> {
        self.send_hashed(kind, term, payload, &PayloadHash::of(payload))
    }

    /// [`Sender::send`] of a payload whose hash the caller computed once
    /// for several connections. A wrong hash makes the peer refuse the
    /// frame (MAC mismatch); it never passes as another payload.
    pub fn send_hashed(
        &mut self,
        kind: FrameKind,
        term: u64,
        payload: &[u8],
        hash: &PayloadHash,
    ) -> Result<()> {
        if self.dead {
            return Err(TransportError::Closed);
        }
        let header = header_for(kind, term, self.next_seq, payload)?.encode();
        let tag = mac_hashed(&self.key, &header, hash);
        match write_all_parts(&mut self.stream, [&header, payload, &tag]) {
            Ok(()) => {
                self.next_seq += 1;
                Ok(())
            }
            Err(e) => {
                self.dead = true;
                let _ = self.stream.shutdown(Shutdown::Both);
                Err(map_io_error(e, self.peer))
            }
        }
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

    /// Switches to the session key; the next frame gets sequence number 1.
    fn rekey(&mut self, key: MacKey) {
        self.key = key;
        self.next_seq = 1;
    }

    /// Makes writes fail with a timeout at `deadline` (handshake only).
    pub(crate) fn set_write_deadline(&self, deadline: Instant) -> Result<()> {
        let left = remaining(deadline)?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|source| TransportError::Io {
                peer: self.peer,
                source,
            })
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("peer", &self.peer)
            .field("next_seq", &self.next_seq)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// The receiving half of a connection.
pub struct Receiver {
    reader: FrameReader<BufReader<TcpStream>>,
    peer: SocketAddr,
    dead: bool,
}

impl Receiver {
    fn new(stream: TcpStream, peer: SocketAddr, key: MacKey, limits: Limits) -> Receiver {
        let buffered = BufReader::with_capacity(READ_BUFFER, stream);
        Receiver {
            reader: FrameReader::new(buffered, peer, key, limits),
            peer,
            dead: false,
        }
    }

    /// Receives the next frame, checking its magic, length (before
    /// allocating), MAC under the session key, flags, kind and that its
    /// sequence number is exactly the next expected one.
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
        self.reader.get_ref().get_ref()
    }

    /// Shuts the connection down after a fatal error.
    fn check<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_fatal() {
                self.dead = true;
                self.shutdown();
            }
        }
        r
    }

    /// Reads one frame without checking flags, kind or sequence (handshake).
    pub(crate) fn read_raw(&mut self) -> Result<RawFrame> {
        let r = self.reader.read_raw();
        self.check(r)
    }

    /// Completes the checks of an authenticated raw frame (handshake).
    pub(crate) fn accept_raw(&mut self, raw: RawFrame) -> Result<Frame> {
        let r = self.reader.accept(raw);
        self.check(r)
    }

    /// Makes reads fail with a timeout at `deadline` (handshake only).
    pub(crate) fn set_read_deadline(&self, deadline: Instant) -> Result<()> {
        self.set_read_timeout(Some(remaining(deadline)?))
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
    let hs_key = params.psk.handshake_mac_key();
    let mut tx = Sender::new(stream.try_clone().map_err(io_err)?, peer, hs_key.clone());
    let hs_limits = Limits {
        max_payload: HANDSHAKE_MAX_PAYLOAD,
    };
    let mut rx = Receiver::new(stream, peer, hs_key, hs_limits);

    let outcome = match role {
        Role::Initiator => handshake::initiate(&mut tx, &mut rx, params, deadline),
        Role::Responder => handshake::respond(&mut tx, &mut rx, params, deadline),
    };
    let (info, (send_key, recv_key)) = match outcome {
        Ok(done) => done,
        Err(e) => {
            tx.shutdown();
            return Err(match e {
                TransportError::Timeout => TransportError::HandshakeTimeout {
                    peer,
                    after: timeout,
                },
                e => e,
            });
        }
    };
    tx.rekey(send_key);
    rx.reader.rekey(recv_key);
    rx.set_limits(Limits::default());
    rx.set_read_timeout(None)?;
    tx.stream.set_write_timeout(None).map_err(io_err)?;
    Ok((FramedConn { tx, rx }, info))
}

/// Time left until `deadline`, or [`TransportError::Timeout`].
fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(TransportError::Timeout)
    } else {
        Ok(left)
    }
}

/// Writes all of `parts` in order with vectored writes (usually one
/// syscall), retrying on short writes and interrupts.
fn write_all_parts(w: &mut impl Write, parts: [&[u8]; 3]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut slices = [IoSlice::new(&[]); 3];
        let mut n = 0;
        let mut skip = done;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices[n] = IoSlice::new(&p[skip..]);
            skip = 0;
            n += 1;
        }
        match w.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => done += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
