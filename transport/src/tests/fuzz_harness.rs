//! The fuzz targets' harness (`crate::fuzzing`) has working oracles: an
//! untampered script succeeds, one flipped bit fails, records read back.

use crate::frame::Header;
use crate::fuzzing::*;
use crate::{FrameKind, TransportError};

fn initiator() -> InitiatorScript {
    let mut payload = FINGERPRINT.to_vec();
    payload.extend_from_slice(&9u64.to_le_bytes());
    InitiatorScript {
        version: crate::PROTOCOL_VERSION,
        channel: 1,
        reserved: [0; 3],
        payload,
        confirm: b"hotspare confirm".to_vec(),
        corrupt_msg1: None,
        corrupt_confirm: None,
        tail: Vec::new(),
        chunk: 5,
    }
}

fn responder() -> ResponderScript {
    let mut payload = vec![1];
    payload.extend_from_slice(&FINGERPRINT);
    payload.extend_from_slice(&4u64.to_le_bytes());
    ResponderScript {
        payload,
        corrupt_msg2: None,
        raw: None,
        chunk: 3,
    }
}

#[test]
fn a_scripted_initiator_is_accepted_only_untampered() {
    let s = initiator();
    assert!(s.is_valid());
    assert_eq!(respond_to_initiator(&s).unwrap().peer_term, 9);
    for tweak in [
        |s: &mut InitiatorScript| s.corrupt_confirm = Some((20, 1)),
        |s: &mut InitiatorScript| s.corrupt_msg1 = Some((40, 0x80)),
        |s: &mut InitiatorScript| s.confirm[0] ^= 1,
        |s: &mut InitiatorScript| s.payload[0] ^= 1,
        |s: &mut InitiatorScript| s.reserved[1] = 1,
        |s: &mut InitiatorScript| s.version = 3,
    ] {
        let mut bad = initiator();
        tweak(&mut bad);
        assert!(!bad.is_valid());
        assert!(respond_to_initiator(&bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn a_scripted_responder_is_accepted_only_untampered() {
    let s = responder();
    assert!(s.is_valid());
    assert_eq!(initiate_against_responder(&s).unwrap().peer_term, 4);
    let mut bad = responder();
    bad.corrupt_msg2 = Some((7, 4));
    assert!(initiate_against_responder(&bad).is_err());
    let mut bad = responder();
    bad.raw = Some(b"\x02\x05\x00\x01\x00abc".to_vec());
    assert!(matches!(
        initiate_against_responder(&bad),
        Err(TransportError::Refused { .. })
    ));
}

#[test]
fn raw_garbage_to_the_responder_is_refused_in_clear() {
    let (r, wrote) = respond_raw(b"GET / HTTP/1.0\r\n", 2, false);
    assert!(matches!(r, Err(TransportError::BadMagic { .. })));
    assert_eq!(wrote.first(), Some(&2), "a Refuse message was sent");
}

#[test]
fn pieces_read_back_and_a_replay_ends_the_stream() {
    let payload = b"abc".to_vec();
    let h = Header::for_payload(FrameKind::Ack, 3, &payload).unwrap();
    let mut first = h.encode().to_vec();
    first.extend_from_slice(&payload);
    let pieces = [Piece::Record(first.clone()), Piece::Replay(first.clone())];
    let (frames, end) = read_pieces(&pieces, 1 << 20, 4, true);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, payload);
    assert!(matches!(end, TransportError::Auth { .. }), "{end}");
    let (frames, end) = read_pieces(&[Piece::Skip, Piece::Record(first)], 1 << 20, 9, false);
    assert!(frames.is_empty());
    assert!(matches!(end, TransportError::Auth { .. }), "{end}");
}

#[test]
fn round_trip_through_short_reads_and_timeouts() {
    round_trip(
        &[
            (FrameKind::EpochData, 1, vec![7; 200_000]),
            (FrameKind::Heartbeat, 2, Vec::new()),
            (FrameKind::EpochEnd, 3, vec![1; 65_503]),
        ],
        4093,
        true,
    );
}
