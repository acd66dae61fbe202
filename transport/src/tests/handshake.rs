//! The handshake over loopback: success, every refusal on both sides, and
//! a listener that survives bad peers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::support::*;
use crate::{Channel, FrameKind, FramedConn, HandshakeParams, RefuseCode, TransportError};

#[test]
fn handshake_succeeds_and_both_sides_learn_each_other() {
    let key = psk();
    let l = listener();
    let (c, s) = handshake(&l, &init_params(&key, 7), &resp_params(&key, Some(FP)));
    let (client, from_client) = c.unwrap();
    let (server, from_server) = s.unwrap();

    assert_eq!(from_client.addr, l.local_addr());
    assert_eq!(
        from_client.peer_term, 3,
        "initiator learns the responder's term"
    );
    assert_eq!(from_client.peer_fingerprint, FP);
    assert!(!from_client.peer_learned_fingerprint);
    assert_eq!(from_client.channel, Channel::Stream);
    assert_eq!(from_client.protocol_version, crate::PROTOCOL_VERSION);

    assert_eq!(
        from_server.peer_term, 7,
        "responder learns the initiator's term"
    );
    assert_eq!(from_server.peer_fingerprint, FP);
    assert_eq!(from_server.addr, server.peer_addr());
    assert_eq!(client.peer_addr(), l.local_addr());
}

#[test]
fn fresh_responder_learns_the_fingerprint() {
    let key = psk();
    let l = listener();
    let (c, s) = handshake(&l, &init_params(&key, 1), &resp_params(&key, None));
    let (_, from_client) = c.unwrap();
    let (_, from_server) = s.unwrap();
    assert_eq!(from_server.peer_fingerprint, FP);
    assert!(from_client.peer_learned_fingerprint);
}

/// Runs a handshake expected to fail and returns both errors.
fn refused(
    l: &crate::Listener,
    init: &HandshakeParams,
    resp: &HandshakeParams,
) -> (TransportError, TransportError) {
    let (c, s) = handshake(l, init, resp);
    (
        c.expect_err("initiator must fail"),
        s.expect_err("responder must fail"),
    )
}

fn wrong_key_case(initiator_key: &crate::Psk, responder_key: &crate::Psk) {
    let l = listener();
    let resp = resp_params(responder_key, Some(FP));
    let (ce, se) = refused(&l, &init_params(initiator_key, 1), &resp);
    assert!(
        matches!(se, TransportError::WrongKey { .. }),
        "responder: {se}"
    );
    assert!(
        se.to_string().contains("does not hold the pre-shared key"),
        "{se}"
    );
    match &ce {
        TransportError::Refused { code, reason, .. } => {
            assert_eq!(*code, RefuseCode::WrongKey);
            assert!(reason.contains("wrong pre-shared key"), "{reason}");
        }
        e => panic!("initiator: expected Refused, got {e}"),
    }
    assert!(
        ce.to_string().contains("refused: wrong pre-shared key"),
        "{ce}"
    );
    assert_listener_alive(&l, &resp);
}

#[test]
fn wrong_key_on_the_initiator_is_refused_on_both_sides() {
    wrong_key_case(&other_psk(), &psk());
}

#[test]
fn wrong_key_on_the_responder_is_refused_on_both_sides() {
    wrong_key_case(&psk(), &other_psk());
}

#[test]
fn protocol_version_mismatch_is_refused_on_both_sides() {
    let ours = crate::PROTOCOL_VERSION;
    let newer = ours + 1;
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let mut init = init_params(&key, 1);
    init.protocol_version = newer;
    let (ce, se) = refused(&l, &init, &resp);
    assert!(
        matches!(se, TransportError::VersionMismatch { peer, ours: o } if peer == newer && o == ours),
        "{se}"
    );
    assert_eq!(
        se.to_string(),
        format!("protocol version mismatch: peer speaks {newer}, we speak {ours}")
    );
    match &ce {
        TransportError::Refused { code, reason, .. } => {
            assert_eq!(*code, RefuseCode::Version);
            assert!(
                reason.contains(&format!("you speak {newer}, we speak {ours}")),
                "{reason}"
            );
        }
        e => panic!("initiator: expected Refused, got {e}"),
    }
    assert_listener_alive(&l, &resp);

    // The other way round: a newer responder.
    let l = listener();
    let mut resp = resp_params(&key, Some(FP));
    resp.protocol_version = newer + 1;
    let (ce, se) = refused(&l, &init_params(&key, 1), &resp);
    assert!(matches!(
        se,
        TransportError::VersionMismatch { peer, ours: o } if peer == ours && o == newer + 1
    ));
    assert!(matches!(
        ce,
        TransportError::Refused {
            code: RefuseCode::Version,
            ..
        }
    ));
}

#[test]
fn fingerprint_mismatch_is_refused_on_both_sides() {
    let key = psk();
    let l = listener();
    let theirs = [0x3c; 32];
    let resp = resp_params(&key, Some(theirs));
    let (ce, se) = refused(&l, &init_params(&key, 1), &resp);
    match &se {
        TransportError::FingerprintMismatch { peer, ours } => {
            assert_eq!((*peer, *ours), (FP, theirs));
        }
        e => panic!("responder: {e}"),
    }
    assert_eq!(
        se.to_string(),
        "VM fingerprint mismatch: peer has abababababab.., we have 3c3c3c3c3c3c.."
    );
    match &ce {
        TransportError::Refused { code, reason, .. } => {
            assert_eq!(*code, RefuseCode::Fingerprint);
            assert!(reason.contains("you have abababababab.."), "{reason}");
        }
        e => panic!("initiator: {e}"),
    }
    // The listener still accepts the right VM.
    assert_listener_alive(&l, &resp);
}

#[test]
fn channel_mismatch_is_refused_on_both_sides() {
    let key = psk();
    let l = listener();
    let resp = HandshakeParams::new(&key, Some(FP), Channel::Heartbeat, 0);
    let (ce, se) = refused(&l, &init_params(&key, 1), &resp);
    assert!(
        matches!(
            se,
            TransportError::ChannelMismatch {
                peer: Channel::Stream,
                ours: Channel::Heartbeat
            }
        ),
        "{se}"
    );
    assert!(
        matches!(
            ce,
            TransportError::Refused {
                code: RefuseCode::Channel,
                ..
            }
        ),
        "{ce}"
    );
    assert_listener_alive(&l, &resp);
}

#[test]
fn a_responder_serving_any_channel_accepts_both_and_reports_which() {
    let key = psk();
    let l = listener();
    let mut resp = HandshakeParams::new(&key, Some(FP), Channel::Stream, 0);
    resp.any_channel = true;
    for ch in [Channel::Heartbeat, Channel::Stream] {
        let init = HandshakeParams::new(&key, Some(FP), ch, 1);
        let (c, s) = handshake(&l, &init, &resp);
        let ((mut c, ci), (mut s, si)) = (c.expect("initiator"), s.expect("responder"));
        assert_eq!((ci.channel, si.channel), (ch, ch));
        // The session keys agree: a frame goes through.
        c.send(FrameKind::Heartbeat, 1, b"ping").unwrap();
        assert_eq!(s.recv().unwrap().payload, b"ping");
    }
}

#[test]
fn initiator_without_fingerprint_is_a_usage_error() {
    let key = psk();
    let l = listener();
    let params = HandshakeParams::new(&key, None, Channel::Stream, 1);
    let e = FramedConn::connect(l.local_addr(), &params, T).unwrap_err();
    assert!(matches!(e, TransportError::MissingFingerprint), "{e}");
}

#[test]
fn connect_to_a_closed_port_names_the_address() {
    let key = psk();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = FramedConn::connect(addr, &init_params(&key, 1), T).unwrap_err();
    assert!(matches!(e, TransportError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

/// Splits what an initiator sent during a handshake: the 12-byte
/// preamble, then `type ‖ len u16 ‖ body` messages.
fn split_handshake(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (pre, mut rest) = bytes.split_at(12);
    let mut msgs = Vec::new();
    while rest.len() >= 3 {
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        msgs.push(rest[..3 + len].to_vec());
        rest = &rest[3 + len..];
    }
    (pre.to_vec(), msgs)
}

#[test]
fn replayed_handshake_from_a_recording_is_refused() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let proxy = Proxy::start(l.local_addr());
    let (c, s) = std::thread::scope(|sc| {
        let server = sc.spawn(|| l.accept(&resp, T));
        let client = FramedConn::connect(proxy.addr, &init_params(&key, 1), T);
        (client, server.join().unwrap())
    });
    c.unwrap();
    s.unwrap();
    let (pre, msgs) = split_handshake(&proxy.recorded());
    assert_eq!(&pre[..4], b"HSN1");
    assert_eq!(
        msgs.len(),
        2,
        "the first Noise message and the confirmation"
    );

    // Replay both verbatim on a new connection: the responder answers the
    // first (it cannot tell), but the confirmation was sealed under the
    // old session's keys.
    let (outcome, answer) = std::thread::scope(|sc| {
        let server = sc.spawn(|| l.accept(&resp, T));
        let mut raw = TcpStream::connect(l.local_addr()).unwrap();
        raw.set_read_timeout(Some(T)).unwrap();
        raw.write_all(&pre).unwrap();
        raw.write_all(&msgs[0]).unwrap();
        let mut head = [0u8; 3];
        raw.read_exact(&mut head).unwrap();
        let mut reply = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
        raw.read_exact(&mut reply).unwrap();
        raw.write_all(&msgs[1]).unwrap();
        let outcome = server.join().unwrap().map(|(_, peer)| peer);
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        (outcome, (head[0], answer))
    });
    let e = outcome.expect_err("replayed handshake must be refused");
    assert!(matches!(e, TransportError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("replayed handshake"), "{e}");
    assert_eq!(answer.0, 1, "the responder's Noise reply came first");
    assert_eq!(answer.1.first(), Some(&2), "then a refusal");
    assert_listener_alive(&l, &resp);
}

/// Opens a raw connection, lets `attack` write to it, and returns the
/// listener's error for that peer.
fn raw_peer_error(
    l: &crate::Listener,
    resp: &HandshakeParams,
    timeout: Duration,
    attack: impl FnOnce(&mut TcpStream) + Send,
) -> TransportError {
    std::thread::scope(|sc| {
        let server = sc.spawn(|| l.accept(resp, timeout));
        let mut raw = TcpStream::connect(l.local_addr()).unwrap();
        attack(&mut raw);
        let r = server.join().unwrap();
        drop(raw);
        r.expect_err("bad peer must be refused")
    })
}

#[test]
fn garbage_instead_of_a_handshake_is_refused() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let e = raw_peer_error(&l, &resp, T, |s| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    });
    assert!(matches!(e, TransportError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert_listener_alive(&l, &resp);
}

#[test]
fn an_older_version_is_told_apart_from_garbage() {
    // Protocol 3 opened with a plaintext frame starting "HSF1".
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let e = raw_peer_error(&l, &resp, T, |s| s.write_all(b"HSF1\x01\x00").unwrap());
    assert!(matches!(e, TransportError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("protocol version 4 or later"), "{e}");
}

#[test]
fn truncated_preamble_is_refused() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let e = raw_peer_error(&l, &resp, T, |s| {
        s.write_all(&b"HSN1\x04\x00"[..]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
    });
    assert!(
        matches!(
            e,
            TransportError::Truncated {
                got: 2,
                want: 8,
                ..
            }
        ),
        "{e}"
    );
    assert_listener_alive(&l, &resp);
}

#[test]
fn huge_handshake_message_is_refused_before_reading_it() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let mut pre = b"HSN1".to_vec();
    pre.extend_from_slice(&crate::PROTOCOL_VERSION.to_le_bytes());
    pre.extend_from_slice(&[1, 0, 0, 0]);
    pre.extend_from_slice(&[1, 0xff, 0xff]);
    let e = raw_peer_error(&l, &resp, T, |s| s.write_all(&pre).unwrap());
    assert!(matches!(e, TransportError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("65535 bytes; at most 1024"), "{e}");
    assert_listener_alive(&l, &resp);
}

#[test]
fn a_tampered_preamble_fails_the_handshake() {
    // The preamble is the Noise prologue: flipping its reserved byte is
    // refused outright, and a channel swapped in flight (both valid) fails
    // decryption because the transcripts differ.
    let key = psk();
    let l = listener();
    let mut resp = resp_params(&key, Some(FP));
    resp.any_channel = true;
    let proxy = Proxy::start_rewriting(l.local_addr(), |b| {
        if b.len() > 8 && &b[..4] == b"HSN1" {
            b[8] = 2; // stream -> heartbeat
        }
    });
    let (c, s) = std::thread::scope(|sc| {
        let server = sc.spawn(|| l.accept(&resp, T));
        let client = FramedConn::connect(proxy.addr, &init_params(&key, 1), T);
        (client, server.join().unwrap())
    });
    let se = s.expect_err("responder must refuse");
    assert!(matches!(se, TransportError::WrongKey { .. }), "{se}");
    assert!(c.is_err(), "initiator must fail too");
}

#[test]
fn a_byte_at_a_time_peer_cannot_stretch_the_deadline() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let start = Instant::now();
    let e = raw_peer_error(&l, &resp, Duration::from_millis(400), |s| {
        for b in b"HSN1\x04\x00\x00\x00\x01\x00\x00" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(matches!(e, TransportError::HandshakeTimeout { .. }), "{e}");
    assert!(start.elapsed() < T, "safety bound");
}

#[test]
fn silent_peer_times_out_the_handshake() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let start = Instant::now();
    let e = raw_peer_error(&l, &resp, Duration::from_millis(300), |_| {});
    assert!(matches!(e, TransportError::HandshakeTimeout { .. }), "{e}");
    assert!(start.elapsed() < T, "safety bound");
    assert_listener_alive(&l, &resp);
}
