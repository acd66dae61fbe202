//! Frames flowing over established connections: both directions, split
//! halves on threads, the two-connection design, timeouts, limits.

use std::io::Write;
use std::thread;
use std::time::Duration;

use super::support::*;
use crate::frame::{Limits, FIRST_PAYLOAD, MAX_PLAINTEXT};
use crate::{Channel, Frame, FrameKind, HandshakeParams, Received, TransportError};

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn frames_flow_both_ways_with_their_kind_term_seq_and_payload() {
    let (mut client, mut server) = pair();
    let sizes = [0usize, 1, 28, 65_535, 65_536, 65_537, 3 << 20];
    thread::scope(|s| {
        s.spawn(|| {
            for (i, &n) in sizes.iter().enumerate() {
                client
                    .send(FrameKind::EpochData, 7, &payload(n, i as u8))
                    .unwrap();
            }
        });
        for (i, &n) in sizes.iter().enumerate() {
            let f = server.recv().unwrap();
            assert_eq!(
                (f.kind, f.term, f.seq),
                (FrameKind::EpochData, 7, i as u64 + 1)
            );
            assert!(f.payload == payload(n, i as u8), "payload {i} differs");
        }
    });
    // And back, with every non-handshake kind.
    let kinds = [
        FrameKind::EpochBegin,
        FrameKind::EpochEnd,
        FrameKind::Ack,
        FrameKind::Nack,
        FrameKind::Heartbeat,
        FrameKind::HeartbeatAck,
        FrameKind::Goodbye,
    ];
    for (i, k) in kinds.iter().enumerate() {
        server.send(*k, 3, &[i as u8; 5]).unwrap();
    }
    for (i, k) in kinds.iter().enumerate() {
        let f = client.recv().unwrap();
        assert_eq!(
            f,
            Frame {
                kind: *k,
                term: 3,
                seq: i as u64 + 1,
                payload: vec![i as u8; 5]
            }
        );
    }
}

#[test]
fn split_halves_work_from_separate_threads_in_both_directions() {
    const N: u32 = 500;
    let (client, server) = pair();
    let (mut ctx, mut crx) = client.split();
    let (mut stx, mut srx) = server.split();
    thread::scope(|s| {
        // Server: echo every frame back as an Ack until Goodbye.
        s.spawn(move || loop {
            let f = srx.recv().unwrap();
            if f.kind == FrameKind::Goodbye {
                stx.send(FrameKind::Goodbye, 1, b"").unwrap();
                break;
            }
            stx.send(FrameKind::Ack, 1, &f.payload).unwrap();
        });
        // Client sender thread.
        s.spawn(move || {
            for i in 0..N {
                ctx.send(
                    FrameKind::EpochData,
                    9,
                    &payload(i as usize % 3000, i as u8),
                )
                .unwrap();
            }
            ctx.send(FrameKind::Goodbye, 9, b"").unwrap();
        });
        // Client receiver (this thread).
        for i in 0..N {
            let f = crx.recv().unwrap();
            assert_eq!((f.kind, f.seq), (FrameKind::Ack, u64::from(i) + 1));
            assert!(f.payload == payload(i as usize % 3000, i as u8));
        }
        assert_eq!(crx.recv().unwrap().kind, FrameKind::Goodbye);
    });
}

#[test]
fn heartbeats_flow_while_the_stream_connection_is_clogged() {
    let key = psk();
    let (stream_l, hb_l) = (listener(), listener());
    let stream_resp = resp_params(&key, None);
    let hb_resp = HandshakeParams::new(&key, None, Channel::Heartbeat, 3);
    let (c, s) = handshake(&stream_l, &init_params(&key, 1), &stream_resp);
    let (mut stream_c, mut stream_s) = (c.unwrap().0, s.unwrap().0);
    let hb_init = HandshakeParams::new(&key, Some(FP), Channel::Heartbeat, 1);
    let (c, s) = handshake(&hb_l, &hb_init, &hb_resp);
    let (mut hb_c, mut hb_s) = (c.unwrap().0, s.unwrap().0);

    // 48 MiB is more than the socket buffers hold: the send blocks until
    // the standby reads, which it only does after the heartbeats.
    let big = payload(48 << 20, 1);
    thread::scope(|s| {
        s.spawn(|| stream_c.send(FrameKind::EpochData, 1, &big).unwrap());
        for i in 0..5u8 {
            hb_c.send(FrameKind::Heartbeat, 1, &[i]).unwrap();
            let f = hb_s.recv().unwrap();
            assert_eq!(
                (f.kind, f.payload.as_slice()),
                (FrameKind::Heartbeat, &[i][..])
            );
            hb_s.send(FrameKind::HeartbeatAck, 3, &[i]).unwrap();
            assert_eq!(hb_c.recv().unwrap().kind, FrameKind::HeartbeatAck);
        }
        let f = stream_s.recv().unwrap();
        assert!(f.payload == big);
    });
}

#[test]
fn read_timeout_is_distinct_and_not_fatal() {
    let (mut client, mut server) = pair();
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let e = server.recv().unwrap_err();
    assert!(matches!(e, TransportError::Timeout), "{e}");
    assert!(!e.is_fatal());
    client.send(FrameKind::Heartbeat, 7, b"late").unwrap();
    server.set_read_timeout(Some(T)).unwrap();
    let f = server.recv().unwrap();
    assert_eq!((f.seq, f.payload.as_slice()), (1, &b"late"[..]));
}

#[test]
fn timeout_mid_frame_keeps_the_partial_frame() {
    let (client, mut server) = pair();
    let mut raw = client.test_raw();
    // Three records: cut inside the length prefix, inside the first
    // record, and between records.
    let payload = payload(FIRST_PAYLOAD + MAX_PLAINTEXT + 10, 5);
    let frame = raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &payload);
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let between = 2 + MAX_PLAINTEXT + 16;
    for part in [&frame[..1], &frame[1..40], &frame[40..between]] {
        raw.stream.write_all(part).unwrap();
        let e = server.recv().unwrap_err();
        assert!(matches!(e, TransportError::Timeout), "{e}");
    }
    raw.stream.write_all(&frame[between..]).unwrap();
    server.set_read_timeout(Some(T)).unwrap();
    let f = server.recv().unwrap();
    assert_eq!(f.seq, 1);
    assert!(f.payload == payload);
}

#[test]
fn peer_closing_between_frames_is_closed() {
    let (client, mut server) = pair();
    drop(client);
    let e = server.recv().unwrap_err();
    assert!(matches!(e, TransportError::Closed), "{e}");
}

#[test]
fn shutdown_unblocks_a_receiver_on_another_thread() {
    let (client, server) = pair();
    let (tx, mut rx) = server.split();
    thread::scope(|s| {
        let h = s.spawn(move || rx.recv());
        // Whether the receiver is already blocked or not, it must see Closed.
        tx.shutdown();
        let e = h.join().unwrap().unwrap_err();
        assert!(matches!(e, TransportError::Closed), "{e}");
    });
    drop(client);
}

#[test]
fn payload_limit_is_inclusive_and_configurable() {
    let (mut client, mut server) = pair();
    server.set_limits(Limits { max_payload: 1024 });
    client.send(FrameKind::EpochData, 7, &[1u8; 1024]).unwrap();
    assert_eq!(server.recv().unwrap().payload.len(), 1024);
    client.send(FrameKind::EpochData, 7, &[1u8; 1025]).unwrap();
    let e = server.recv().unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::FrameTooLarge {
                len: 1025,
                limit: 1024,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn failed_connection_stays_failed_on_both_sides() {
    let (mut client, mut server) = pair();
    let mut raw = client.test_raw();
    // A record length, then bytes that are no record of this session.
    raw.stream.write_all(&[32, 0]).unwrap();
    raw.stream
        .write_all(b"not a record at all, just garbage")
        .unwrap();
    let e = server.recv().unwrap_err();
    assert!(matches!(e, TransportError::Auth { .. }), "{e}");
    assert!(e.is_fatal());
    // This side is done, and the peer is told by the shutdown.
    assert!(matches!(server.recv(), Err(TransportError::Closed)));
    assert!(matches!(client.recv(), Err(TransportError::Closed)));
    assert!(
        server.send(FrameKind::Heartbeat, 1, b"x").is_err(),
        "sending on a shut-down connection must fail"
    );
}

#[test]
fn payloads_of_every_record_boundary_size_arrive_whole() {
    let (mut client, mut server) = pair();
    let sizes = [
        0,
        1,
        FIRST_PAYLOAD - 1,
        FIRST_PAYLOAD,
        FIRST_PAYLOAD + 1,
        FIRST_PAYLOAD + MAX_PLAINTEXT,
        FIRST_PAYLOAD + MAX_PLAINTEXT + 1,
        3 << 20,
    ];
    thread::scope(|s| {
        s.spawn(|| {
            for (i, n) in sizes.iter().enumerate() {
                client
                    .send(FrameKind::EpochData, 9, &payload(*n, i as u8))
                    .unwrap();
            }
        });
        for (i, n) in sizes.iter().enumerate() {
            let f = server.recv().unwrap();
            assert_eq!(f.payload.len(), *n);
            assert!(f.payload == payload(*n, i as u8), "payload {i} differs");
        }
    });
}

#[test]
fn recv_into_appends_routed_payloads_and_returns_the_rest_as_frames() {
    let (mut client, mut server) = pair();
    let sizes = [
        0,
        1,
        FIRST_PAYLOAD,
        FIRST_PAYLOAD + 1,
        FIRST_PAYLOAD + MAX_PLAINTEXT + 1,
        3 << 20,
    ];
    thread::scope(|s| {
        s.spawn(|| {
            for (i, n) in sizes.iter().enumerate() {
                client
                    .send(FrameKind::EpochData, 9, &payload(*n, i as u8))
                    .unwrap();
                client.send(FrameKind::EpochEnd, 9, &[i as u8; 3]).unwrap();
            }
            // Data too long for the route below: a frame of its own.
            client
                .send(FrameKind::EpochData, 9, &payload(100_000, 77))
                .unwrap();
        });
        let mut out = b"kept".to_vec();
        let mut want = out.clone();
        let mut seq = 0;
        for (i, n) in sizes.iter().enumerate() {
            let route = |k: FrameKind, len: usize| k == FrameKind::EpochData && len <= 4 << 20;
            seq += 1;
            match server.recv_into(&mut out, route).unwrap() {
                Received::Appended {
                    kind,
                    term,
                    seq: s,
                    len,
                } => assert_eq!((kind, term, s, len), (FrameKind::EpochData, 9, seq, *n)),
                other => panic!("frame {i} was not appended: {other:?}"),
            }
            want.extend_from_slice(&payload(*n, i as u8));
            assert!(out == want, "the buffer after payload {i} differs");
            seq += 1;
            match server.recv_into(&mut out, route).unwrap() {
                Received::Frame(f) => {
                    assert_eq!((f.kind, f.seq), (FrameKind::EpochEnd, seq));
                    assert_eq!(f.payload, vec![i as u8; 3]);
                }
                other => panic!("EpochEnd {i} was appended: {other:?}"),
            }
            assert_eq!(
                out.len(),
                want.len(),
                "a frame not routed left the buffer alone"
            );
        }
        match server.recv_into(&mut out, |_, len| len <= 65_536).unwrap() {
            Received::Frame(f) => assert!(f.payload == payload(100_000, 77)),
            other => panic!("a frame longer than the route allows was appended: {other:?}"),
        }
        assert_eq!(out.len(), want.len());
    });
}

#[test]
fn recv_into_continues_a_frame_after_a_timeout_only_in_the_same_buffer() {
    for changed in [false, true] {
        let (client, mut server) = pair();
        let mut raw = client.test_raw();
        let payload = payload(FIRST_PAYLOAD + 2 * MAX_PLAINTEXT + 10, 3);
        let frame = raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &payload);
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut out = vec![1, 2, 3];
        let between = 2 + MAX_PLAINTEXT + 16;
        // Cut inside the first record, then between records.
        for part in [&frame[..40], &frame[40..between]] {
            raw.stream.write_all(part).unwrap();
            let e = server.recv_into(&mut out, |_, _| true).unwrap_err();
            assert!(matches!(e, TransportError::Timeout), "{e}");
        }
        assert_eq!(out.len(), 3 + FIRST_PAYLOAD, "the first record is appended");
        raw.stream.write_all(&frame[between..]).unwrap();
        server.set_read_timeout(Some(T)).unwrap();
        if changed {
            // Another buffer: the frame cannot be completed, and no call
            // returns half of it as a frame.
            let e = server.recv().unwrap_err();
            assert!(matches!(e, TransportError::BufferChanged), "{e}");
            assert!(matches!(server.recv(), Err(TransportError::Closed)));
        } else {
            let r = server.recv_into(&mut out, |_, _| false).unwrap();
            assert!(matches!(r, Received::Appended { seq: 1, .. }), "{r:?}");
            assert!(out[..3] == [1, 2, 3] && out[3..] == payload[..]);
        }
    }
}

/// Cut inside a continuation record's ciphertext and inside its tag: the
/// caller's buffer holds the ciphertext so far and never the tag (never
/// more than the frame's payload), the frame completes in the same buffer,
/// and a buffer cut back to what was authenticated is refused.
#[test]
fn recv_into_resumes_inside_a_continuation_record_and_its_tag() {
    for trimmed in [false, true] {
        let (client, mut server) = pair();
        let mut raw = client.test_raw();
        // The last record is short: its tag starts before MAX_PLAINTEXT.
        let payload = payload(FIRST_PAYLOAD + MAX_PLAINTEXT + 1000, 5);
        let frame = raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &payload);
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut out = vec![1, 2, 3];
        let second = 2 + MAX_PLAINTEXT + 16;
        let third = second + 2 + MAX_PLAINTEXT + 16;
        // (cut, bytes of the frame in `out` after it)
        let cuts = [
            (second + 2 + 500, FIRST_PAYLOAD + 500),
            (
                second + 2 + MAX_PLAINTEXT + 7,
                FIRST_PAYLOAD + MAX_PLAINTEXT,
            ),
            (third + 2 + 999, FIRST_PAYLOAD + MAX_PLAINTEXT + 999),
            (third + 2 + 1000 + 15, payload.len()),
        ];
        let mut sent = 0;
        for (cut, held) in cuts {
            raw.stream.write_all(&frame[sent..cut]).unwrap();
            sent = cut;
            let e = server.recv_into(&mut out, |_, _| true).unwrap_err();
            assert!(matches!(e, TransportError::Timeout), "{e}");
            assert_eq!(out.len(), 3 + held, "cut at {cut}");
        }
        raw.stream.write_all(&frame[sent..]).unwrap();
        server.set_read_timeout(Some(T)).unwrap();
        if trimmed {
            out.truncate(3 + FIRST_PAYLOAD + MAX_PLAINTEXT);
            let e = server.recv_into(&mut out, |_, _| true).unwrap_err();
            assert!(matches!(e, TransportError::BufferChanged), "{e}");
        } else {
            let r = server.recv_into(&mut out, |_, _| false).unwrap();
            assert!(matches!(r, Received::Appended { seq: 1, .. }), "{r:?}");
            assert!(out[..3] == [1, 2, 3] && out[3..] == payload[..]);
        }
    }
}

#[test]
fn recv_into_leaves_nothing_of_a_frame_that_fails_authentication() {
    let (client, mut server) = pair();
    let mut raw = client.test_raw();
    let payload = payload(FIRST_PAYLOAD + MAX_PLAINTEXT + 10, 9);
    let mut frame = raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &payload);
    // A byte of the second record's ciphertext: the first record (and
    // its payload bytes) arrive intact, the second fails its tag.
    // The first record: length prefix, header and payload start, tag.
    let second = (2 + MAX_PLAINTEXT + 16) + 2 + 100;
    frame[second] ^= 1;
    raw.stream.write_all(&frame).unwrap();
    let mut out = vec![1, 2, 3];
    let e = server.recv_into(&mut out, |_, _| true).unwrap_err();
    assert!(matches!(e, TransportError::Auth { .. }), "{e}");
    assert_eq!(out, vec![1, 2, 3], "bytes of the failed frame stayed");
}
