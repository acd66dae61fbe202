//! Property tests of the record layer and the resumable reader, on an
//! in-memory Noise session.

use std::io::{self, Read};
use std::sync::Arc;

use proptest::prelude::*;

use super::support::fake_peer;
use crate::frame::{Header, Limits, FIRST_PAYLOAD, HEADER_LEN, MAX_PLAINTEXT};
use crate::record::{seal_frame, FrameReader, SealBuffers, Session};
use crate::{Frame, FrameKind, TransportError};

/// Both ends of an NNpsk0 session run in memory: (initiator, responder).
fn sessions() -> (Session, Session) {
    let (i, r) = crate::cipher::memory_pair(&[0x5a; 32], b"test").unwrap();
    (Arc::new(i), Arc::new(r))
}

/// The records of `frames`, sealed by `s` from record 0 on.
fn seal_all(s: &Session, frames: &[(FrameKind, u64, Vec<u8>)]) -> Vec<u8> {
    let mut nonce = 0;
    let mut bufs = SealBuffers::default();
    let mut wire = Vec::new();
    for (kind, term, payload) in frames {
        let h = Header::for_payload(*kind, *term, payload).unwrap();
        seal_frame(s, &mut nonce, (&h, payload), &mut bufs, usize::MAX, |out| {
            wire.extend_from_slice(out);
            Ok(())
        })
        .unwrap();
    }
    wire
}

fn any_frame() -> impl Strategy<Value = (FrameKind, u64, Vec<u8>)> {
    (
        proptest::sample::select(FrameKind::ALL.to_vec()),
        any::<u64>(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            // Around the record boundaries.
            (0usize..3, any::<u8>()).prop_map(|(k, b)| vec![
                b;
                FIRST_PAYLOAD - 1
                    + k
                    + MAX_PLAINTEXT * (k % 2)
            ]),
        ],
    )
}

/// A reader that hands out the bytes in the given chunk sizes, with a
/// timeout (`WouldBlock`) before every chunk.
struct Choppy {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    blocked: bool,
}

impl Read for Choppy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.data.len() {
            return Ok(0);
        }
        if !self.blocked {
            self.blocked = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.blocked = false;
        let chunk = self.chunks.pop().unwrap_or(usize::MAX).max(1);
        let n = chunk.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn frames_survive_arbitrary_chunking_and_timeouts(
        frames in proptest::collection::vec(any_frame(), 1..5),
        chunks in proptest::collection::vec(1usize..5000, 0..64),
    ) {
        let (i, r) = sessions();
        let data = seal_all(&i, &frames);
        let mut reader = FrameReader::new(
            Choppy { data, pos: 0, chunks, blocked: false },
            fake_peer(),
            r,
            0,
            Limits::default(),
        );
        let mut got: Vec<Frame> = Vec::new();
        while got.len() < frames.len() {
            match reader.read() {
                Ok(f) => got.push(f),
                Err(TransportError::Timeout) => continue,
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
        }
        for (n, (f, (kind, term, payload))) in got.iter().zip(&frames).enumerate() {
            prop_assert_eq!(f.kind, *kind);
            prop_assert_eq!(f.term, *term);
            prop_assert_eq!(f.seq, n as u64 + 1);
            prop_assert!(&f.payload == payload);
        }
        prop_assert!(matches!(reader.read(), Err(TransportError::Closed)));
    }

    #[test]
    fn any_single_byte_corruption_or_cut_is_detected(
        frame in any_frame(),
        at in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<bool>(),
    ) {
        let (i, r) = sessions();
        let mut data = seal_all(&i, std::slice::from_ref(&frame));
        let at = at.index(data.len());
        if cut {
            data.truncate(at);
        } else {
            data[at] ^= flip;
        }
        let mut reader = FrameReader::new(&data[..], fake_peer(), r, 0, Limits::default());
        match reader.read() {
            Err(TransportError::Auth { .. })
            | Err(TransportError::Truncated { .. })
            | Err(TransportError::BadRecord { .. }) => {}
            Err(TransportError::Closed) if cut && at == 0 => {}
            other => return Err(TestCaseError::fail(format!("undetected: {other:?}"))),
        }
    }

    #[test]
    fn frame_kind_numbers_round_trip(n in any::<u16>()) {
        match FrameKind::from_u16(n) {
            Some(k) => prop_assert_eq!(k.as_u16(), n),
            None => prop_assert!(FrameKind::ALL.iter().all(|k| k.as_u16() != n)),
        }
    }
}

#[test]
fn frame_kind_numbers_are_the_documented_ones() {
    let numbers: Vec<u16> = FrameKind::ALL.iter().map(|k| k.as_u16()).collect();
    assert_eq!(numbers, [16, 17, 18, 19, 20, 32, 33, 34]);
}

#[test]
fn header_layout_is_little_endian_and_16_bytes() {
    let h = Header {
        kind: FrameKind::Ack,
        term: 0x0102_0304_0506_0708,
        len: 0x0a0b_0c0d,
    };
    let b = h.encode();
    assert_eq!(b.len(), HEADER_LEN);
    assert_eq!(b[0..2], [19, 0]);
    assert_eq!(b[2..4], [0, 0]);
    assert_eq!(b[4..12], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(b[12..16], [0x0d, 0x0c, 0x0b, 0x0a]);
}
