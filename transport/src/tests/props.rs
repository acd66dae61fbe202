//! Property tests of the frame format and the resumable reader.

use std::io::{self, Read};

use proptest::prelude::*;

use super::support::fake_peer;
use crate::frame::{encode, Limits, HEADER_LEN, MAC_LEN};
use crate::key::MacKey;
use crate::reader::FrameReader;
use crate::{Frame, FrameKind, TransportError};

fn key() -> MacKey {
    MacKey([0x5a; 32])
}

/// A reader over `bytes` expecting sequence number 1 first.
fn reader(bytes: &[u8]) -> FrameReader<&[u8]> {
    FrameReader::new(bytes, fake_peer(), key(), Limits::default())
}

fn any_kind() -> impl Strategy<Value = FrameKind> {
    proptest::sample::select(FrameKind::ALL.to_vec())
}

fn any_frame() -> impl Strategy<Value = (FrameKind, u64, Vec<u8>)> {
    (
        any_kind(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
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
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_round_trip((kind, term, payload) in any_frame()) {
        let bytes = encode(&key(), kind, term, 1, &payload);
        prop_assert_eq!(bytes.len(), HEADER_LEN + payload.len() + MAC_LEN);
        let mut r = reader(&bytes);
        let f = r.read().unwrap();
        prop_assert_eq!(f, Frame { kind, term, seq: 1, payload });
        // Nothing left: the next read is a clean end of stream.
        prop_assert!(matches!(r.read(), Err(TransportError::Closed)));
    }

    #[test]
    fn any_single_byte_corruption_is_detected(
        (kind, term, payload) in any_frame(),
        pos in any::<proptest::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = encode(&key(), kind, term, 1, &payload);
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        let mut r = reader(&bytes);
        let got = r.read();
        prop_assert!(got.is_err(), "corruption at byte {} of {} accepted", i, bytes.len());
    }

    #[test]
    fn any_truncation_is_detected((kind, term, payload) in any_frame(), cut in any::<proptest::sample::Index>()) {
        let bytes = encode(&key(), kind, term, 1, &payload);
        let n = cut.index(bytes.len());
        let mut r = reader(&bytes[..n]);
        match r.read() {
            Err(TransportError::Closed) => prop_assert_eq!(n, 0),
            Err(TransportError::Truncated { got, .. }) => prop_assert_eq!(got, n),
            other => prop_assert!(false, "cut at {}: {:?}", n, other),
        }
    }

    #[test]
    fn frames_survive_arbitrary_chunking_and_timeouts(
        frames in proptest::collection::vec(any_frame(), 1..8),
        chunks in proptest::collection::vec(1usize..100, 0..200),
    ) {
        let mut data = Vec::new();
        for (i, (kind, term, payload)) in frames.iter().enumerate() {
            data.extend(encode(&key(), *kind, *term, i as u64 + 1, payload));
        }
        let choppy = Choppy { data, pos: 0, chunks, blocked: false };
        let mut r = FrameReader::new(choppy, fake_peer(), key(), Limits::default());
        for (i, (kind, term, payload)) in frames.into_iter().enumerate() {
            let f = loop {
                match r.read() {
                    Err(TransportError::Timeout) => continue,
                    other => break other.unwrap(),
                }
            };
            prop_assert_eq!(f, Frame { kind, term, seq: i as u64 + 1, payload });
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
    assert_eq!(numbers, [1, 2, 3, 4, 5, 16, 17, 18, 19, 20, 32, 33, 34]);
}

#[test]
fn header_layout_is_little_endian_and_28_bytes() {
    let h = crate::frame::Header {
        kind: 0x0102,
        flags: 0x0304,
        term: 0x1112_1314_1516_1718,
        seq: 0x2122_2324_2526_2728,
        len: 0x3132_3334,
    };
    let b = h.encode();
    assert_eq!(&b[..4], b"HSF1");
    assert_eq!(&b[4..6], &[0x02, 0x01]);
    assert_eq!(&b[6..8], &[0x04, 0x03]);
    assert_eq!(&b[8..16], &0x1112_1314_1516_1718u64.to_le_bytes());
    assert_eq!(&b[16..24], &0x2122_2324_2526_2728u64.to_le_bytes());
    assert_eq!(&b[24..28], &[0x34, 0x33, 0x32, 0x31]);
    let parsed = crate::frame::Header::parse(
        &b,
        Limits {
            max_payload: u32::MAX,
        },
        fake_peer(),
    )
    .unwrap();
    assert_eq!(parsed, h);
}
