//! The handshake: Noise `NNpsk0` with the pre-shared key, under a clear
//! preamble that names the protocol version and the channel.
//!
//! ```text
//! Initiator (primary)                                  Responder (standby)
//!   Preamble {magic, version, channel}              ->
//!   Noise msg 1 [psk, e] {fingerprint, term}        ->
//!                                   checks magic, version, channel; decrypts
//!                                   msg 1 (wrong key: refused); fingerprint
//!              <-  Noise msg 2 [e, ee] {had_fp, fingerprint, term}
//!   decrypts msg 2 (wrong key: refused); fingerprint
//!   Confirm (transport record 0)                    ->
//!                                   decrypts it (a replayed msg 1: refused)
//! ```
//!
//! The preamble goes in clear so that a peer of another version gets a
//! clear "version mismatch", but it is also the Noise prologue: both sides
//! mix it into the transcript, so a tampered preamble fails the handshake.
//! The fingerprint and terms travel inside the encrypted handshake
//! payloads, also bound by the transcript. Ephemeral keys on both sides
//! give forward secrecy: the PSK alone does not decrypt a recorded session.
//! The confirmation proves to the responder that the initiator holds the
//! session keys, so a recorded first message played back never yields a
//! connection.
//!
//! Either side that finds a problem sends a clear `Refuse {code, reason}`
//! (best effort, unauthenticated: it can only make a handshake fail, which
//! anyone on the path can do anyway) and returns the error. Every read and
//! write is bounded by one absolute deadline, re-armed before each call,
//! so a peer sending a byte at a time cannot stretch it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::cipher::RecordKeys;

use crate::error::{short_hex, Result, TransportError};
use crate::key::Psk;
use crate::record::map_io_error;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// The Noise protocol: NNpsk0 (ephemeral-ephemeral DH, authenticated by
/// the PSK), X25519, AES-256-GCM (chosen over ChaChaPoly by measured
/// throughput, `docs/security.md`), SHA-256. The ciphers come from ring.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// The first four bytes an initiator sends.
pub const MAGIC: [u8; 4] = *b"HSN1";

/// Preamble length: magic, version u32, channel u8, three zero bytes.
const PREAMBLE_LEN: usize = 12;

/// Largest handshake message body accepted.
const MAX_MESSAGE: usize = 1024;

/// Handshake message types.
const MSG_NOISE: u8 = 1;
const MSG_REFUSE: u8 = 2;

/// What the confirmation record carries.
const CONFIRM: &[u8] = b"hotspare confirm";

/// Longest refusal reason sent, in bytes.
const MAX_REASON: usize = 512;

/// Which of the two connections between a primary and a standby this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The epoch stream (checkpoints and their acks).
    Stream,
    /// Heartbeats, on their own connection so they never queue behind
    /// page traffic.
    Heartbeat,
}

impl Channel {
    fn as_u8(self) -> u8 {
        match self {
            Channel::Stream => 1,
            Channel::Heartbeat => 2,
        }
    }

    fn from_u8(b: u8) -> Option<Channel> {
        match b {
            1 => Some(Channel::Stream),
            2 => Some(Channel::Heartbeat),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Stream => "stream",
            Channel::Heartbeat => "heartbeat",
        })
    }
}

/// Why a peer refused a handshake (the first field of a Refuse payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The other side does not hold the pre-shared key (or replayed a
    /// handshake).
    WrongKey,
    /// Protocol versions differ.
    Version,
    /// VM fingerprints differ.
    Fingerprint,
    /// The connection was opened for the other channel.
    Channel,
    /// Malformed or unexpected handshake frames.
    Protocol,
    /// A code this version does not know.
    Unknown(u16),
}

impl RefuseCode {
    fn as_u16(self) -> u16 {
        match self {
            RefuseCode::WrongKey => 1,
            RefuseCode::Version => 2,
            RefuseCode::Fingerprint => 3,
            RefuseCode::Channel => 4,
            RefuseCode::Protocol => 5,
            RefuseCode::Unknown(n) => n,
        }
    }

    fn from_u16(n: u16) -> RefuseCode {
        match n {
            1 => RefuseCode::WrongKey,
            2 => RefuseCode::Version,
            3 => RefuseCode::Fingerprint,
            4 => RefuseCode::Channel,
            5 => RefuseCode::Protocol,
            n => RefuseCode::Unknown(n),
        }
    }
}

/// What each side brings to the handshake.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeParams<'a> {
    /// The pre-shared key.
    pub psk: &'a Psk,
    /// The protocol version spoken ([`PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// The VM configuration fingerprint. The initiator must pass one; a
    /// responder may pass `None` to accept any and learn it.
    pub fingerprint: Option<[u8; 32]>,
    /// Which connection this is.
    pub channel: Channel,
    /// This side's current term, stamped on every handshake frame.
    pub term: u64,
    /// Responder only: serve whichever channel the initiator opens (one
    /// listening port for both connections). `channel` is ignored then.
    pub any_channel: bool,
}

impl<'a> HandshakeParams<'a> {
    /// Parameters speaking [`PROTOCOL_VERSION`].
    pub fn new(psk: &'a Psk, fingerprint: Option<[u8; 32]>, channel: Channel, term: u64) -> Self {
        HandshakeParams {
            psk,
            protocol_version: PROTOCOL_VERSION,
            fingerprint,
            channel,
            term,
            any_channel: false,
        }
    }
}

/// What a completed handshake established about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The connection's channel.
    pub channel: Channel,
    /// The protocol version both speak.
    pub protocol_version: u32,
    /// The peer's term, from its handshake frames.
    pub peer_term: u64,
    /// The VM fingerprint the connection is bound to. Both sides agree on
    /// it; a fresh responder learns it here.
    pub peer_fingerprint: [u8; 32],
    /// On the initiator: `true` if the responder had no fingerprint and
    /// adopted ours (a fresh standby). Always `false` on the responder.
    pub peer_learned_fingerprint: bool,
}

/// A finished handshake: what it learned, the session, and the number of
/// the first record each direction sends next.
pub(crate) struct Established {
    pub info: PeerInfo,
    pub session: RecordKeys,
    pub send_nonce: u64,
    pub recv_nonce: u64,
}

/// What a handshake runs over: a TCP stream, or (fuzzing) a scripted
/// peer. Each call is bounded by `left`.
pub(crate) trait Wire {
    /// The peer's address.
    fn peer(&self) -> io::Result<SocketAddr>;
    /// One read of at most `buf.len()` bytes; `Ok(0)` at end of stream.
    fn read_within(&self, buf: &mut [u8], left: Duration) -> io::Result<usize>;
    /// Writes all of `buf`.
    fn write_within(&self, buf: &[u8], left: Duration) -> io::Result<()>;
}

impl Wire for TcpStream {
    fn peer(&self) -> io::Result<SocketAddr> {
        self.peer_addr()
    }

    fn read_within(&self, buf: &mut [u8], left: Duration) -> io::Result<usize> {
        self.set_read_timeout(Some(left))?;
        (&mut &*self).read(buf)
    }

    fn write_within(&self, buf: &[u8], left: Duration) -> io::Result<()> {
        self.set_write_timeout(Some(left))?;
        (&mut &*self).write_all(buf)
    }
}

/// Deadline-bound reads and writes of one handshake.
struct Io<'a, W: Wire> {
    stream: &'a W,
    peer: SocketAddr,
    deadline: Instant,
}

impl<'a, W: Wire> Io<'a, W> {
    fn new(stream: &'a W, deadline: Instant) -> Result<Self> {
        let peer = stream.peer().map_err(|_| TransportError::Closed)?;
        Ok(Io {
            stream,
            peer,
            deadline,
        })
    }

    /// Time left, or `Timeout`.
    fn left(&self) -> Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(TransportError::Timeout)
        } else {
            Ok(left)
        }
    }

    /// Fills `buf`, re-arming the read timeout to the deadline before
    /// every read.
    fn read_exact(&self, buf: &mut [u8]) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            let left = self.left()?;
            match self.stream.read_within(&mut buf[got..], left) {
                Ok(0) => {
                    return Err(if got == 0 {
                        TransportError::Closed
                    } else {
                        TransportError::Truncated {
                            peer: self.peer,
                            got,
                            want: buf.len(),
                        }
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_io_error(e, self.peer)),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` before the deadline.
    fn write_all(&self, buf: &[u8]) -> Result<()> {
        let left = self.left()?;
        self.stream
            .write_within(buf, left)
            .map_err(|e| map_io_error(e, self.peer))
    }

    /// Sends one handshake message.
    fn send(&self, kind: u8, body: &[u8]) -> Result<()> {
        debug_assert!(body.len() <= MAX_MESSAGE);
        let mut m = Vec::with_capacity(3 + body.len());
        m.push(kind);
        m.extend_from_slice(&(body.len() as u16).to_le_bytes());
        m.extend_from_slice(body);
        self.write_all(&m)
    }

    /// Receives one handshake message: a Noise message's bytes, or the
    /// peer's refusal as [`TransportError::Refused`].
    fn recv(&self, what: &str) -> Result<Vec<u8>> {
        let mut head = [0u8; 3];
        self.read_exact(&mut head)?;
        let len = usize::from(u16::from_le_bytes([head[1], head[2]]));
        if len > MAX_MESSAGE {
            return Err(TransportError::Protocol {
                peer: self.peer,
                detail: format!("{what} of {len} bytes; at most {MAX_MESSAGE} are accepted"),
            });
        }
        let mut body = vec![0u8; len];
        self.read_exact(&mut body)?;
        match head[0] {
            MSG_NOISE => Ok(body),
            MSG_REFUSE => {
                let (code, reason) = parse_refuse(&body);
                Err(TransportError::Refused {
                    peer: self.peer,
                    code,
                    reason,
                })
            }
            k => Err(TransportError::Protocol {
                peer: self.peer,
                detail: format!("expected {what}, got a message of unknown type {k}"),
            }),
        }
    }

    /// Receives one Noise handshake message and decrypts it into its
    /// plaintext, which must be exactly `want` bytes. One that does not
    /// decrypt comes from a peer holding another key (or replaying).
    fn recv_noise(
        &self,
        hs: &mut snow::HandshakeState,
        (from, what): (&str, &str),
        want: usize,
        wrong_key: &'static str,
    ) -> Result<Vec<u8>> {
        let msg = self.recv(&format!("{from} {what}"))?;
        let mut plain = [0u8; MAX_MESSAGE];
        let n = hs.read_message(&msg, &mut plain).map_err(|_| {
            self.refuse(TransportError::WrongKey {
                peer: self.peer,
                detail: wrong_key,
            })
        })?;
        if n != want {
            return Err(self.refuse(malformed(self.peer, what, n, want)));
        }
        Ok(plain[..n].to_vec())
    }

    /// Tells the peer why we give up (best effort), then returns `err`.
    fn refuse(&self, err: TransportError) -> TransportError {
        if let Some((code, reason)) = refusal(&err) {
            let mut body = code.as_u16().to_le_bytes().to_vec();
            let mut end = reason.len().min(MAX_REASON);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&reason.as_bytes()[..end]);
            let _ = self.send(MSG_REFUSE, &body);
        }
        err
    }
}

/// The preamble for `version` and `channel` (also the Noise prologue).
fn preamble(version: u32, channel: Channel) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&version.to_le_bytes());
    p[8] = channel.as_u8();
    p
}

/// A snow builder for [`NOISE_PARAMS`] with the primitives the transport
/// uses: AES-GCM and SHA-256 from ring (its AES-NI/PCLMUL code seals about
/// 6.7 times as fast as RustCrypto's here, `docs/security.md`); X25519,
/// which ring does not offer snow, from snow's default resolver.
pub(crate) fn builder() -> snow::Builder<'static> {
    use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
    let params = NOISE_PARAMS.parse().expect("a valid Noise protocol name");
    let resolver = FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver));
    snow::Builder::with_resolver(params, Box::new(resolver))
}

/// A Noise handshake state for this side.
fn noise(psk: &Psk, prologue: &[u8], initiator: bool) -> Result<snow::HandshakeState> {
    let b = builder().psk(0, psk.bytes()).prologue(prologue);
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.map_err(|e| TransportError::Crypto(e.to_string()))
}

/// Runs the initiator's side on `stream` before `deadline`.
pub(crate) fn initiate<W: Wire>(
    stream: &W,
    p: &HandshakeParams<'_>,
    deadline: Instant,
) -> Result<Established> {
    let io = Io::new(stream, deadline)?;
    let peer = io.peer;
    let fingerprint = p.fingerprint.ok_or(TransportError::MissingFingerprint)?;
    let pre = preamble(p.protocol_version, p.channel);
    let mut hs = noise(p.psk, &pre, true)?;

    let mut payload = [0u8; 40];
    payload[..32].copy_from_slice(&fingerprint);
    payload[32..].copy_from_slice(&p.term.to_le_bytes());
    let mut msg = [0u8; MAX_MESSAGE];
    let n = hs
        .write_message(&payload, &mut msg)
        .map_err(|e| TransportError::Crypto(e.to_string()))?;
    let mut first = Vec::with_capacity(PREAMBLE_LEN + 3 + n);
    first.extend_from_slice(&pre);
    first.push(MSG_NOISE);
    first.extend_from_slice(&(n as u16).to_le_bytes());
    first.extend_from_slice(&msg[..n]);
    io.write_all(&first)?;

    let plain = io.recv_noise(
        &mut hs,
        ("the responder's", "handshake reply"),
        41,
        "its handshake reply does not decrypt under our key",
    )?;
    let had_fingerprint = plain[0] == 1;
    let theirs: [u8; 32] = plain[1..33].try_into().expect("32 bytes");
    let peer_term = u64::from_le_bytes(plain[33..41].try_into().expect("8 bytes"));
    if theirs != fingerprint {
        return Err(io.refuse(TransportError::FingerprintMismatch {
            peer: theirs,
            ours: fingerprint,
        }));
    }
    let session = RecordKeys::from_handshake(&mut hs)?;
    let mut confirm = CONFIRM.to_vec();
    let tag = session.seal_in_place(0, &mut confirm)?;
    confirm.extend_from_slice(&tag);
    io.send(MSG_NOISE, &confirm)?;
    Ok(Established {
        info: PeerInfo {
            addr: peer,
            channel: p.channel,
            protocol_version: p.protocol_version,
            peer_term,
            peer_fingerprint: fingerprint,
            peer_learned_fingerprint: !had_fingerprint,
        },
        session,
        send_nonce: 1,
        recv_nonce: 0,
    })
}

/// Runs the responder's side on `stream` before `deadline`.
pub(crate) fn respond<W: Wire>(
    stream: &W,
    p: &HandshakeParams<'_>,
    deadline: Instant,
) -> Result<Established> {
    let io = Io::new(stream, deadline)?;
    let peer = io.peer;
    let mut pre = [0u8; PREAMBLE_LEN];
    // The magic first, so garbage is refused without waiting for more.
    io.read_exact(&mut pre[..MAGIC.len()])?;
    if pre[..4] != MAGIC {
        return Err(io.refuse(TransportError::BadMagic {
            peer,
            found: pre[..4].to_vec(),
        }));
    }
    io.read_exact(&mut pre[MAGIC.len()..])?;
    let version = u32::from_le_bytes(pre[4..8].try_into().expect("4 bytes"));
    if version != p.protocol_version {
        return Err(io.refuse(TransportError::VersionMismatch {
            peer: version,
            ours: p.protocol_version,
        }));
    }
    let channel = Channel::from_u8(pre[8]).ok_or_else(|| {
        io.refuse(TransportError::Protocol {
            peer,
            detail: format!("the preamble names unknown channel {}", pre[8]),
        })
    })?;
    if pre[9..] != [0, 0, 0] {
        return Err(io.refuse(TransportError::Protocol {
            peer,
            detail: "the preamble's reserved bytes are not zero".into(),
        }));
    }
    if channel != p.channel && !p.any_channel {
        return Err(io.refuse(TransportError::ChannelMismatch {
            peer: channel,
            ours: p.channel,
        }));
    }
    let mut hs = noise(p.psk, &pre, false)?;

    let plain = io.recv_noise(
        &mut hs,
        ("the initiator's", "first handshake message"),
        40,
        "its handshake message does not decrypt under our key",
    )?;
    let fingerprint: [u8; 32] = plain[..32].try_into().expect("32 bytes");
    let peer_term = u64::from_le_bytes(plain[32..40].try_into().expect("8 bytes"));
    if let Some(ours) = p.fingerprint {
        if ours != fingerprint {
            return Err(io.refuse(TransportError::FingerprintMismatch {
                peer: fingerprint,
                ours,
            }));
        }
    }

    let mut payload = [0u8; 41];
    payload[0] = u8::from(p.fingerprint.is_some());
    payload[1..33].copy_from_slice(&fingerprint);
    payload[33..].copy_from_slice(&p.term.to_le_bytes());
    let mut msg = [0u8; MAX_MESSAGE];
    let n = hs
        .write_message(&payload, &mut msg)
        .map_err(|e| TransportError::Crypto(e.to_string()))?;
    io.send(MSG_NOISE, &msg[..n])?;
    let session = RecordKeys::from_handshake(&mut hs)?;

    let mut confirm = io.recv("the initiator's key confirmation")?;
    match session.open_in_place(0, &mut confirm) {
        Ok(n) if &confirm[..n] == CONFIRM => {}
        _ => {
            return Err(io.refuse(TransportError::WrongKey {
                peer,
                detail: "its key confirmation is invalid (a replayed handshake?)",
            }))
        }
    }
    Ok(Established {
        info: PeerInfo {
            addr: peer,
            channel,
            protocol_version: p.protocol_version,
            peer_term,
            peer_fingerprint: fingerprint,
            peer_learned_fingerprint: false,
        },
        session,
        send_nonce: 0,
        recv_nonce: 1,
    })
}

/// The refusal to send for `err`, if it is one the peer should hear.
fn refusal(err: &TransportError) -> Option<(RefuseCode, String)> {
    Some(match err {
        TransportError::WrongKey { .. } => {
            (RefuseCode::WrongKey, "wrong pre-shared key".to_string())
        }
        TransportError::VersionMismatch { peer, ours } => (
            RefuseCode::Version,
            format!("protocol version mismatch: you speak {peer}, we speak {ours}"),
        ),
        TransportError::FingerprintMismatch { peer, ours } => (
            RefuseCode::Fingerprint,
            format!(
                "VM fingerprint mismatch: you have {}, we have {}",
                short_hex(peer),
                short_hex(ours)
            ),
        ),
        TransportError::ChannelMismatch { peer, ours } => (
            RefuseCode::Channel,
            format!(
                "channel mismatch: you opened a {peer} connection, this endpoint serves {ours}"
            ),
        ),
        TransportError::Protocol { detail, .. } => (RefuseCode::Protocol, detail.clone()),
        e @ TransportError::BadMagic { .. } => (RefuseCode::Protocol, e.to_string()),
        _ => return None,
    })
}

/// Splits a Refuse body into its code and printable reason, marked as
/// unauthenticated.
fn parse_refuse(b: &[u8]) -> (RefuseCode, String) {
    if b.len() < 2 {
        return (RefuseCode::Unknown(0), "(no reason given)".to_string());
    }
    let code = RefuseCode::from_u16(u16::from_le_bytes([b[0], b[1]]));
    let reason: String = String::from_utf8_lossy(&b[2..])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (code, format!("{reason} (unauthenticated refusal)"))
}

fn malformed(peer: SocketAddr, what: &str, got: usize, want: usize) -> TransportError {
    TransportError::Protocol {
        peer,
        detail: format!("malformed {what}: {got} bytes, expected {want}"),
    }
}
