//! Frames: what the replication layer sends, and how a frame is laid out
//! in encrypted records.
//!
//! After the handshake each direction is a sequence of Noise transport
//! messages ("records", `docs/protocol.md`):
//!
//! | size | field |
//! | --- | --- |
//! | 2 | ciphertext length n, little-endian (17 ..= 65535) |
//! | n | AEAD ciphertext of the record's plaintext, then its 16-byte tag |
//!
//! The nonce is the record's number in its direction, never sent: a
//! replayed, reordered, dropped or forged record fails decryption.
//!
//! A frame starts a new record. The first record's plaintext is the frame
//! header then the first payload bytes; further records carry the rest of
//! the payload, each as full as the 65535-byte message limit allows. The
//! header (all little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | kind ([`FrameKind`]) |
//! | 2 | 2 | flags (reserved, 0) |
//! | 4 | 8 | term |
//! | 12 | 4 | len: payload length |

use std::net::SocketAddr;

use crate::error::{Result, TransportError};

/// Longest Noise message (ciphertext and tag).
pub const MAX_RECORD: usize = 65535;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Most plaintext bytes in one record.
pub const MAX_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Frame header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Payload bytes the first record of a frame holds at most.
pub const FIRST_PAYLOAD: usize = MAX_PLAINTEXT - HEADER_LEN;
/// Default payload limit: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 64 << 20;

/// What a frame is. Numbers 16–31 belong to the epoch stream, 32–47 to
/// liveness; the rest are free for later versions (1–15 were the
/// handshake frames of protocol versions 1 to 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
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
    pub const ALL: [FrameKind; 8] = [
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

/// One received (authenticated, in-order) frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: FrameKind,
    /// The sender's term (leadership epoch), as the sender stamped it.
    pub term: u64,
    /// Its number in its direction (1, 2, 3, ...), counted by the receiver.
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
pub struct Header {
    /// The kind.
    pub kind: FrameKind,
    /// Sender's term.
    pub term: u64,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// The header of a frame carrying `payload`.
    pub fn for_payload(kind: FrameKind, term: u64, payload: &[u8]) -> Result<Header> {
        let len = u32::try_from(payload.len())
            .map_err(|_| TransportError::PayloadTooLarge { len: payload.len() })?;
        Ok(Header { kind, term, len })
    }

    /// The 16 header bytes (flags 0).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&self.kind.as_u16().to_le_bytes());
        b[4..12].copy_from_slice(&self.term.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Parses an authenticated header: flags must be 0, the kind known and
    /// the length within `limits` (checked before any buffer is sized from
    /// it).
    pub fn parse(b: &[u8], limits: Limits, peer: SocketAddr) -> Result<Header> {
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| TransportError::BadRecord {
                peer,
                detail: format!(
                    "a frame's first record holds {} bytes, less than its {HEADER_LEN}-byte header",
                    b.len()
                ),
            })?;
        let kind = u16::from_le_bytes([b[0], b[1]]);
        let flags = u16::from_le_bytes([b[2], b[3]]);
        let term = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        if flags != 0 {
            return Err(TransportError::BadFlags { peer, flags });
        }
        let kind = FrameKind::from_u16(kind).ok_or(TransportError::UnknownKind { peer, kind })?;
        if len > limits.max_payload {
            return Err(TransportError::FrameTooLarge {
                peer,
                len: u64::from(len),
                limit: limits.max_payload,
            });
        }
        Ok(Header { kind, term, len })
    }

    /// How many plaintext bytes the frame's first record holds.
    pub fn first_record_len(&self) -> usize {
        HEADER_LEN + (self.len as usize).min(FIRST_PAYLOAD)
    }
}

/// The record ciphertext lengths of a frame with a `len`-byte payload, in
/// order (used by tests and by the sender to size its buffer).
pub fn record_count(len: usize) -> usize {
    if len <= FIRST_PAYLOAD {
        1
    } else {
        1 + (len - FIRST_PAYLOAD).div_ceil(MAX_PLAINTEXT)
    }
}
