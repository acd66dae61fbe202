//! The versioned, mutually authenticated handshake.
//!
//! ```text
//! Initiator (primary)                              Responder (standby)
//!   Hello     {version, channel, fingerprint, nonce_i}  ->
//!                                                   checks version, channel, fingerprint
//!             <-  Challenge {version, had_fp, fingerprint, nonce_r, proof_r}
//!   checks version, fingerprint, proof_r
//!   Response  {proof_i}                             ->
//!                                                   checks proof_i
//!             <-  Welcome {confirm}
//!   checks confirm
//! ```
//!
//! Handshake frames carry sequence numbers 1, 2 in each direction and a MAC
//! under the handshake key (derived from the PSK alone); afterwards both
//! directions switch to their session keys and start again at 1. Whichever
//! side finds a problem sends `Refuse {code, reason}` (best effort) and
//! returns the error; the other side returns [`TransportError::Refused`]
//! with that reason. The proofs bind both fresh nonces, so recorded
//! handshake frames are useless in a later handshake.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::conn::{Receiver, Sender};
use crate::error::{short_hex, Result, TransportError};
use crate::frame::{Frame, FrameKind};
use crate::key::{ct_eq, random_nonce, MacKey, Nonce, Psk, NONCE_LEN};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest handshake payload accepted (frames are refused above this
/// before allocation, whatever the connection's limits).
pub(crate) const HANDSHAKE_MAX_PAYLOAD: u32 = 1024;

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

/// The session keys a handshake produced: (send, receive).
pub(crate) type SessionKeys = (MacKey, MacKey);

const HELLO_LEN: usize = 4 + 1 + 32 + NONCE_LEN;
const CHALLENGE_LEN: usize = 4 + 1 + 32 + NONCE_LEN + 32;

/// Runs the initiator's side. `deadline` bounds the whole exchange.
pub(crate) fn initiate(
    tx: &mut Sender,
    rx: &mut Receiver,
    p: &HandshakeParams<'_>,
    deadline: Instant,
) -> Result<(PeerInfo, SessionKeys)> {
    let peer = tx.peer_addr();
    let fingerprint = p.fingerprint.ok_or(TransportError::MissingFingerprint)?;
    let proof_key = p.psk.proof_key();
    let nonce_i = random_nonce()?;

    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&p.protocol_version.to_le_bytes());
    hello.push(p.channel.as_u8());
    hello.extend_from_slice(&fingerprint);
    hello.extend_from_slice(&nonce_i);
    send(tx, FrameKind::Hello, p.term, &hello, deadline)?;

    let challenge = expect(rx, FrameKind::Challenge, deadline)
        .and_then(|f| check_challenge(&f, p, &fingerprint, &nonce_i, &proof_key, peer))
        .map_err(|e| refuse_if_needed(tx, e, p.term, deadline))?;

    let proof_i = proof(
        &proof_key,
        b"initiator",
        &challenge.nonce_r,
        &nonce_i,
        &fingerprint,
        p.channel,
    );
    send(tx, FrameKind::Response, p.term, &proof_i, deadline)?;

    let welcome = expect(rx, FrameKind::Welcome, deadline)?;
    let confirm = proof_key.hash(&[b"welcome", &nonce_i, &challenge.nonce_r]);
    if !ct_eq(&confirm, &welcome.payload) {
        return Err(TransportError::WrongKey {
            peer,
            detail: "its welcome confirmation is invalid",
        });
    }

    let (i_to_r, r_to_i) = p.psk.session_keys(&nonce_i, &challenge.nonce_r);
    let info = PeerInfo {
        addr: peer,
        channel: p.channel,
        protocol_version: p.protocol_version,
        peer_term: challenge.term,
        peer_fingerprint: fingerprint,
        peer_learned_fingerprint: !challenge.had_fingerprint,
    };
    Ok((info, (i_to_r, r_to_i)))
}

/// What the initiator takes from a valid Challenge.
struct Challenge {
    term: u64,
    had_fingerprint: bool,
    nonce_r: Nonce,
}

/// Checks a Challenge: version, length, fingerprint, then the proof.
fn check_challenge(
    f: &Frame,
    p: &HandshakeParams<'_>,
    fingerprint: &[u8; 32],
    nonce_i: &Nonce,
    proof_key: &MacKey,
    peer: SocketAddr,
) -> Result<Challenge> {
    let b = &f.payload;
    check_version(b, p.protocol_version, peer)?;
    if b.len() != CHALLENGE_LEN {
        return Err(malformed(peer, "Challenge", b.len(), CHALLENGE_LEN));
    }
    let peer_fp: [u8; 32] = b[5..37].try_into().expect("32 bytes");
    let nonce_r: Nonce = b[37..69].try_into().expect("32 bytes");
    if peer_fp != *fingerprint {
        return Err(TransportError::FingerprintMismatch {
            peer: peer_fp,
            ours: *fingerprint,
        });
    }
    let expected = proof(
        proof_key,
        b"responder",
        nonce_i,
        &nonce_r,
        fingerprint,
        p.channel,
    );
    if !ct_eq(&expected, &b[69..101]) {
        return Err(TransportError::WrongKey {
            peer,
            detail: "its challenge proof is invalid",
        });
    }
    Ok(Challenge {
        term: f.term,
        had_fingerprint: b[4] == 1,
        nonce_r,
    })
}

/// Runs the responder's side. `deadline` bounds the whole exchange.
pub(crate) fn respond(
    tx: &mut Sender,
    rx: &mut Receiver,
    p: &HandshakeParams<'_>,
    deadline: Instant,
) -> Result<(PeerInfo, SessionKeys)> {
    let peer = tx.peer_addr();
    let proof_key = p.psk.proof_key();

    let hello = expect(rx, FrameKind::Hello, deadline)
        .and_then(|f| check_hello(&f, p, peer))
        .map_err(|e| refuse_if_needed(tx, e, p.term, deadline))?;
    let (fingerprint, nonce_i, channel) = (hello.fingerprint, hello.nonce_i, hello.channel);

    let nonce_r = random_nonce()?;
    let proof_r = proof(
        &proof_key,
        b"responder",
        &nonce_i,
        &nonce_r,
        &fingerprint,
        channel,
    );
    let mut challenge = Vec::with_capacity(CHALLENGE_LEN);
    challenge.extend_from_slice(&p.protocol_version.to_le_bytes());
    challenge.push(u8::from(p.fingerprint.is_some()));
    challenge.extend_from_slice(&fingerprint);
    challenge.extend_from_slice(&nonce_r);
    challenge.extend_from_slice(&proof_r);
    send(tx, FrameKind::Challenge, p.term, &challenge, deadline)?;

    let expected = proof(
        &proof_key,
        b"initiator",
        &nonce_r,
        &nonce_i,
        &fingerprint,
        channel,
    );
    expect(rx, FrameKind::Response, deadline)
        .and_then(|f| {
            if ct_eq(&expected, &f.payload) {
                Ok(())
            } else {
                Err(TransportError::WrongKey {
                    peer,
                    detail: "its handshake proof is invalid (replayed or forged handshake)",
                })
            }
        })
        .map_err(|e| refuse_if_needed(tx, e, p.term, deadline))?;

    let confirm = proof_key.hash(&[b"welcome", &nonce_i, &nonce_r]);
    send(tx, FrameKind::Welcome, p.term, &confirm, deadline)?;

    let (i_to_r, r_to_i) = p.psk.session_keys(&nonce_i, &nonce_r);
    let info = PeerInfo {
        addr: peer,
        channel,
        protocol_version: p.protocol_version,
        peer_term: hello.term,
        peer_fingerprint: fingerprint,
        peer_learned_fingerprint: false,
    };
    Ok((info, (r_to_i, i_to_r)))
}

/// What the responder takes from a valid Hello.
struct Hello {
    term: u64,
    fingerprint: [u8; 32],
    nonce_i: Nonce,
    channel: Channel,
}

/// Checks a Hello: version first, then length, channel, fingerprint.
fn check_hello(f: &Frame, p: &HandshakeParams<'_>, peer: SocketAddr) -> Result<Hello> {
    let b = &f.payload;
    check_version(b, p.protocol_version, peer)?;
    if b.len() != HELLO_LEN {
        return Err(malformed(peer, "Hello", b.len(), HELLO_LEN));
    }
    let channel = Channel::from_u8(b[4]).ok_or_else(|| TransportError::Protocol {
        peer,
        detail: format!("Hello names unknown channel {}", b[4]),
    })?;
    if channel != p.channel && !p.any_channel {
        return Err(TransportError::ChannelMismatch {
            peer: channel,
            ours: p.channel,
        });
    }
    let fingerprint: [u8; 32] = b[5..37].try_into().expect("32 bytes");
    if let Some(ours) = p.fingerprint {
        if ours != fingerprint {
            return Err(TransportError::FingerprintMismatch {
                peer: fingerprint,
                ours,
            });
        }
    }
    Ok(Hello {
        term: f.term,
        fingerprint,
        nonce_i: b[37..69].try_into().expect("32 bytes"),
        channel,
    })
}

/// A handshake proof: keyed BLAKE3 of `label ‖ first ‖ second ‖
/// fingerprint ‖ channel`.
fn proof(
    key: &MacKey,
    label: &[u8],
    first: &Nonce,
    second: &Nonce,
    fingerprint: &[u8; 32],
    channel: Channel,
) -> [u8; 32] {
    key.hash(&[label, first, second, fingerprint, &[channel.as_u8()]])
}

/// Sends one handshake frame before `deadline`.
fn send(
    tx: &mut Sender,
    kind: FrameKind,
    term: u64,
    payload: &[u8],
    deadline: Instant,
) -> Result<()> {
    tx.set_write_deadline(deadline)?;
    tx.send(kind, term, payload)
}

/// Receives the next handshake frame and requires it to be `want`. A
/// Refuse frame becomes [`TransportError::Refused`], even unauthenticated
/// (a peer with another key can only send those): it names the reason.
fn expect(rx: &mut Receiver, want: FrameKind, deadline: Instant) -> Result<Frame> {
    let peer = rx.peer_addr();
    rx.set_read_deadline(deadline)?;
    let raw = rx.read_raw()?;
    if !raw.mac_ok {
        if raw.header.kind == FrameKind::Refuse.as_u16() {
            let (code, reason) = parse_refuse(&raw.payload);
            return Err(TransportError::Refused {
                peer,
                code,
                reason: format!("{reason} (unauthenticated refusal: our pre-shared keys differ)"),
            });
        }
        return Err(TransportError::WrongKey {
            peer,
            detail: "its handshake frame fails authentication",
        });
    }
    let f = rx.accept_raw(raw)?;
    if f.kind == FrameKind::Refuse {
        let (code, reason) = parse_refuse(&f.payload);
        return Err(TransportError::Refused { peer, code, reason });
    }
    if f.kind != want {
        return Err(TransportError::Protocol {
            peer,
            detail: format!("expected a {want:?} frame, got {:?}", f.kind),
        });
    }
    Ok(f)
}

/// Tells the peer why we give up (best effort), then returns `err`.
fn refuse_if_needed(
    tx: &mut Sender,
    err: TransportError,
    term: u64,
    deadline: Instant,
) -> TransportError {
    let (code, reason) = match &err {
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
        e @ (TransportError::BadMagic { .. }
        | TransportError::FrameTooLarge { .. }
        | TransportError::UnknownKind { .. }
        | TransportError::BadFlags { .. }
        | TransportError::Replay { .. }) => (RefuseCode::Protocol, e.to_string()),
        _ => return err,
    };
    let mut payload = code.as_u16().to_le_bytes().to_vec();
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let _ = send(tx, FrameKind::Refuse, term, &payload, deadline);
    err
}

/// Splits a Refuse payload into its code and printable reason.
fn parse_refuse(b: &[u8]) -> (RefuseCode, String) {
    if b.len() < 2 {
        return (RefuseCode::Unknown(0), "(no reason given)".to_string());
    }
    let code = RefuseCode::from_u16(u16::from_le_bytes([b[0], b[1]]));
    let reason = String::from_utf8_lossy(&b[2..])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (code, reason)
}

/// Checks the version field every Hello and Challenge starts with. It is
/// read before anything else, so another version's layout still yields a
/// clear version mismatch.
fn check_version(b: &[u8], ours: u32, peer: SocketAddr) -> Result<()> {
    let v: [u8; 4] =
        b.get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| TransportError::Protocol {
                peer,
                detail: format!(
                    "handshake message of {} bytes has no version field",
                    b.len()
                ),
            })?;
    let theirs = u32::from_le_bytes(v);
    if theirs == ours {
        Ok(())
    } else {
        Err(TransportError::VersionMismatch { peer: theirs, ours })
    }
}

fn malformed(peer: SocketAddr, what: &str, got: usize, want: usize) -> TransportError {
    TransportError::Protocol {
        peer,
        detail: format!("malformed {what}: {got} bytes, expected {want}"),
    }
}
