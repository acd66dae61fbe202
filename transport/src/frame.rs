//! The wire format of one frame.
//!
//! All integers are little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `HSF1` |
//! | 4 | 2 | kind ([`FrameKind`]) |
//! | 6 | 2 | flags (reserved, 0) |
//! | 8 | 8 | term |
//! | 16 | 8 | seq |
//! | 24 | 4 | len: payload length |
//! | 28 | len | payload |
//! | 28 + len | 16 | MAC: keyed BLAKE3 of header ‖ payload, first 16 bytes |
//!
//! Reading a frame from a stream lives in `reader.rs`, writing one in
//! `conn.rs`; this module only encodes and checks.

use std::net::SocketAddr;

use crate::error::{Result, TransportError};
use crate::key::{ct_eq, MacKey};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HSF1";
/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// MAC length in bytes.
pub const MAC_LEN: usize = 16;
/// Default payload limit: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 << 20;

/// What a frame is. Numbers 1–15 belong to the handshake, 16–31 to the
/// epoch stream, 32–47 to liveness; the rest are free for later versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    /// Handshake: initiator's opening message.
    Hello = 1,
    /// Handshake: responder's challenge and proof.
    Challenge = 2,
    /// Handshake: initiator's proof.
    Response = 3,
    /// Handshake: responder accepts.
    Welcome = 4,
    /// Handshake: either side refuses; the payload says why.
    Refuse = 5,
    /// Start of an epoch (checkpoint).
    EpochBegin = 16,
    /// Part of an epoch.
    EpochData = 17,
    /// End of an epoch.
    EpochEnd = 18,
    /// Standby confirms an epoch.
    Ack = 19,
    /// Standby rejects an epoch.
    Nack = 20,
    /// Liveness probe.
    Heartbeat = 32,
    /// Answer to a heartbeat.
    HeartbeatAck = 33,
    /// Orderly end of the connection.
    Goodbye = 34,
}

impl FrameKind {
    /// Every kind, in number order.
    pub const ALL: [FrameKind; 13] = [
        FrameKind::Hello,
        FrameKind::Challenge,
        FrameKind::Response,
        FrameKind::Welcome,
        FrameKind::Refuse,
        FrameKind::EpochBegin,
        FrameKind::EpochData,
        FrameKind::EpochEnd,
        FrameKind::Ack,
        FrameKind::Nack,
        FrameKind::Heartbeat,
        FrameKind::HeartbeatAck,
        FrameKind::Goodbye,
    ];

    /// The kind's number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The kind with wire number `n`, if there is one.
    pub fn from_u16(n: u16) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|k| k.as_u16() == n)
    }
}

/// One received (authenticated, in-sequence) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: FrameKind,
    /// The sender's term (leadership epoch), as the sender stamped it.
    pub term: u64,
    /// Its sequence number in its direction (1, 2, 3, ...).
    pub seq: u64,
    /// The opaque payload.
    pub payload: Vec<u8>,
}

/// Receive limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes. A header claiming more is
    /// refused before anything of that size is allocated.
    pub max_payload: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// A frame header, as fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Kind number (not yet checked against [`FrameKind`]).
    pub kind: u16,
    /// Flags (must be 0 once authenticated).
    pub flags: u16,
    /// Sender's term.
    pub term: u64,
    /// Sequence number.
    pub seq: u64,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// The 28 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.kind.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.term.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses header bytes, checking the magic and the payload length
    /// against `limits` (so no buffer is sized from an unchecked length).
    pub fn parse(b: &[u8; HEADER_LEN], limits: Limits, peer: SocketAddr) -> Result<Header> {
        check_magic(b, peer)?;
        let h = Header {
            kind: u16::from_le_bytes([b[4], b[5]]),
            flags: u16::from_le_bytes([b[6], b[7]]),
            term: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
        };
        if h.len > limits.max_payload {
            return Err(TransportError::FrameTooLarge {
                peer,
                len: u64::from(h.len),
                limit: limits.max_payload,
            });
        }
        Ok(h)
    }
}

/// Fails with [`TransportError::BadMagic`] unless `prefix` (the first bytes
/// received of a frame, possibly fewer than four) agrees with the magic.
pub(crate) fn check_magic(prefix: &[u8], peer: SocketAddr) -> Result<()> {
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] == MAGIC[..n] {
        Ok(())
    } else {
        Err(TransportError::BadMagic {
            peer,
            found: prefix[..n].to_vec(),
        })
    }
}

/// The BLAKE3 hash of a frame's payload: the frame MAC covers it instead of
/// the payload itself, so a payload sent on several connections (one epoch
/// to several spares) is hashed once, and each connection MACs 60 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHash([u8; 32]);

impl PayloadHash {
    /// Hashes `payload`.
    pub fn of(payload: &[u8]) -> PayloadHash {
        PayloadHash(*blake3::hash(payload).as_bytes())
    }
}

/// The frame MAC: keyed BLAKE3 of `header ‖ BLAKE3(payload)`, first 16
/// bytes (hash-then-MAC: as strong as BLAKE3's collision resistance).
pub(crate) fn mac(key: &MacKey, header: &[u8; HEADER_LEN], payload: &[u8]) -> [u8; MAC_LEN] {
    mac_hashed(key, header, &PayloadHash::of(payload))
}

/// [`mac`] of a payload whose hash is already known.
pub(crate) fn mac_hashed(
    key: &MacKey,
    header: &[u8; HEADER_LEN],
    hash: &PayloadHash,
) -> [u8; MAC_LEN] {
    let full = key.hash(&[header, &hash.0]);
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(&full[..MAC_LEN]);
    m
}

/// Whether `tag` is the MAC of `header ‖ payload` under `key`.
pub(crate) fn verify_mac(
    key: &MacKey,
    header: &[u8; HEADER_LEN],
    payload: &[u8],
    tag: &[u8],
) -> bool {
    ct_eq(&mac(key, header, payload), tag)
}

/// The header of a frame carrying `payload`, with flags 0.
pub(crate) fn header_for(kind: FrameKind, term: u64, seq: u64, payload: &[u8]) -> Result<Header> {
    let len = u32::try_from(payload.len())
        .map_err(|_| TransportError::PayloadTooLarge { len: payload.len() })?;
    Ok(Header {
        kind: kind.as_u16(),
        flags: 0,
        term,
        seq,
        len,
    })
}

/// The complete bytes of one frame (header, payload, MAC). The connection
/// writes the same bytes without building this buffer; tests use it to
/// craft frames.
#[cfg(test)]
pub(crate) fn encode(
    key: &MacKey,
    kind: FrameKind,
    term: u64,
    seq: u64,
    payload: &[u8],
) -> Vec<u8> {
    let h = header_for(kind, term, seq, payload)
        .expect("test payload fits")
        .encode();
    encode_raw(key, &h, payload)
}

/// Frame bytes for an arbitrary header (tests craft unknown kinds, flags).
#[cfg(test)]
pub(crate) fn encode_raw(key: &MacKey, header: &[u8; HEADER_LEN], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out.extend_from_slice(&mac(key, header, payload));
    out
}
