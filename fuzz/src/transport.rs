//! `frame_reader` and `handshake`: the transport's decoders of network
//! bytes (`transport::fuzzing` holds the entry points).
//!
//! The harness plays the other side with real Noise state, so the fuzzer's
//! choices reach past the AEAD: which plaintexts are sealed, which nonces
//! are replayed or skipped, which bytes are corrupted, what the handshake
//! payloads hold. Oracles: a handshake succeeds exactly when the script is
//! untampered and well-formed; frames come back as sealed; a frame is never
//! over the limit; raw bytes never complete a handshake.

use transport::fuzzing::{
    initiate_against_responder, read_pieces, respond_raw, respond_to_initiator, round_trip,
    InitiatorScript, Piece, ResponderScript, FINGERPRINT,
};
use transport::{FrameKind, PROTOCOL_VERSION};

/// Reads an input front to back; past the end every read is zero.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A corruption (byte index, xor mask) if `on`.
    fn corruption(&mut self, on: bool) -> Option<(usize, u8)> {
        on.then(|| (usize::from(self.u16()), self.u8()))
    }
}

/// `handshake`: selector byte 0 raw bytes to the responder, 1 a scripted
/// initiator against the real responder, 2 a scripted responder against
/// the real initiator. Returns whether the handshake succeeded.
pub fn handshake(data: &[u8]) -> bool {
    let mut b = Bytes(data);
    let sel = b.u8();
    let flags = b.u8();
    let chunk = usize::from(b.u8() % 64) + 1;
    match sel % 3 {
        0 => {
            let (r, wrote) = respond_raw(b.0, chunk, flags & 1 == 1);
            assert!(r.is_err(), "raw bytes completed a handshake");
            // At most one refusal: type, length, code and a capped reason.
            assert!(
                wrote.len() <= 3 + 2 + 512,
                "the responder wrote {} bytes",
                wrote.len()
            );
            false
        }
        1 => {
            let version = if flags & 0x10 != 0 {
                b.u32()
            } else {
                PROTOCOL_VERSION
            };
            let channel = if flags & 0x20 != 0 { b.u8() } else { 1 };
            let reserved = if flags & 0x40 != 0 {
                [b.u8(), b.u8(), b.u8()]
            } else {
                [0; 3]
            };
            let payload = if flags & 1 != 0 {
                let mut p = FINGERPRINT.to_vec();
                p.extend_from_slice(&b.u64().to_le_bytes());
                p
            } else {
                let n = usize::from(b.u8());
                b.take(n)
            };
            let confirm = if flags & 2 != 0 {
                b"hotspare confirm".to_vec()
            } else {
                let n = usize::from(b.u8());
                b.take(n)
            };
            let corrupt_msg1 = b.corruption(flags & 4 != 0);
            let corrupt_confirm = b.corruption(flags & 8 != 0);
            let s = InitiatorScript {
                version,
                channel,
                reserved,
                payload,
                confirm,
                corrupt_msg1,
                corrupt_confirm,
                tail: b.0.to_vec(),
                chunk,
            };
            let r = respond_to_initiator(&s);
            assert_eq!(r.is_ok(), s.is_valid(), "{s:?}: {r:?}");
            r.is_ok()
        }
        _ => {
            let payload = if flags & 1 != 0 {
                let mut p = vec![b.u8()];
                p.extend_from_slice(&FINGERPRINT);
                p.extend_from_slice(&b.u64().to_le_bytes());
                p
            } else {
                let n = usize::from(b.u8());
                b.take(n)
            };
            let corrupt_msg2 = b.corruption(flags & 4 != 0);
            let raw = (flags & 8 != 0).then(|| b.0.to_vec());
            let s = ResponderScript {
                payload,
                corrupt_msg2,
                raw,
                chunk,
            };
            let r = initiate_against_responder(&s);
            assert_eq!(r.is_ok(), s.is_valid(), "{s:?}: {r:?}");
            r.is_ok()
        }
    }
}

/// `frame_reader`: a header byte chooses the round-trip mode (frames
/// sealed as a sender seals them must come back equal) or the pieces mode
/// (records, replays, skipped nonces and raw bytes, read until the error
/// that ends the stream). Returns how many frames were read.
pub fn frame_reader(data: &[u8]) -> usize {
    let mut b = Bytes(data);
    let mode = b.u8();
    let mut chunk = usize::from(b.u16() % 8192) + 1;
    let stall = mode & 2 != 0;
    if mode & 1 != 0 {
        let mut frames = Vec::new();
        while !b.is_empty() && frames.len() < 4 {
            let kind = FrameKind::ALL[usize::from(b.u8()) % FrameKind::ALL.len()];
            let term = b.u64();
            // Small lengths, and lengths around the first and second record
            // boundaries (65,503 and 131,022 payload bytes).
            let near =
                |base: usize, b: &mut Bytes| (base + usize::from(b.u8())).saturating_sub(128);
            let len = match b.u8() % 4 {
                0 => near(65_503, &mut b),
                1 => near(131_022, &mut b),
                _ => usize::from(b.u16() % 2048),
            };
            let fill = b.u8();
            frames.push((kind, term, vec![fill; len]));
        }
        // At most about 256 reads per frame: the reader's resumption is
        // what is tested, not the speed of one-byte reads.
        let total: usize = frames.iter().map(|f| f.2.len()).sum();
        chunk = chunk.max(total / 1024);
        round_trip(&frames, chunk, stall);
        return frames.len();
    }
    let max_payload = b.u32() >> (b.u8() % 32);
    let mut pieces = Vec::new();
    while !b.is_empty() && pieces.len() < 64 {
        let tag = b.u8();
        let n = usize::from(b.u16() % 2048);
        pieces.push(match tag % 5 {
            0 => Piece::Record(b.take(n)),
            1 => {
                // A first record with a header the fuzzer chose.
                let mut p = Vec::with_capacity(16 + n);
                let kind = if tag & 0x80 != 0 {
                    b.u16()
                } else {
                    FrameKind::ALL[usize::from(b.u8()) % 8].as_u16()
                };
                p.extend_from_slice(&kind.to_le_bytes());
                p.extend_from_slice(&(if tag & 0x40 != 0 { b.u16() } else { 0 }).to_le_bytes());
                p.extend_from_slice(&b.u64().to_le_bytes());
                p.extend_from_slice(&b.u32().to_le_bytes());
                p.extend_from_slice(&b.take(n));
                Piece::Record(p)
            }
            2 => Piece::Replay(b.take(n)),
            3 => Piece::Skip,
            _ => Piece::Raw(b.take(n)),
        });
    }
    let (frames, _end) = read_pieces(&pieces, max_payload, chunk, stall);
    for f in &frames {
        assert!(f.payload.len() <= max_payload as usize);
    }
    frames.len()
}
