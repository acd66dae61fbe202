//! Bad frames on an established connection, each refused with its own
//! error: corruption anywhere, huge lengths, replays, frames from another
//! session, wrong sequence numbers, unknown kinds and flags.

use std::io::Write;
use std::net::Shutdown;
use std::time::Instant;

use super::support::*;
use crate::frame::{encode, encode_raw, Header, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
use crate::{FrameKind, FramedConn, TransportError};

/// A fresh pair; `bytes(raw)` is written raw from the initiator's socket
/// (optionally followed by closing its write side); returns the
/// responder's error.
fn inject(
    close_after: bool,
    bytes: impl FnOnce(&crate::conn::TestRaw) -> Vec<u8>,
) -> TransportError {
    let (client, mut server) = pair();
    let mut raw = client.test_raw();
    let b = bytes(&raw);
    raw.stream.write_all(&b).unwrap();
    if close_after {
        raw.stream.shutdown(Shutdown::Write).unwrap();
    }
    server.set_read_timeout(Some(T)).unwrap();
    let e = server.recv().expect_err("bad frame must be refused");
    drop(client);
    e
}

/// A valid next frame from the initiator with an 8-byte payload.
fn good_frame(raw: &crate::conn::TestRaw) -> Vec<u8> {
    encode(
        &raw.send_key,
        FrameKind::EpochData,
        7,
        raw.next_send_seq,
        b"payload!",
    )
}

#[test]
fn one_flipped_bit_anywhere_is_refused() {
    // (byte, bit, what the flip hits, expected error)
    type Check = fn(&TransportError) -> bool;
    let cases: [(usize, u8, &str, Check); 10] = [
        (0, 0, "magic", |e| {
            matches!(e, TransportError::BadMagic { .. })
        }),
        (4, 0, "kind (17 -> 16, still a valid kind)", |e| {
            matches!(e, TransportError::Mac { .. })
        }),
        (5, 7, "kind (unknown kind)", |e| {
            matches!(e, TransportError::Mac { .. })
        }),
        (6, 0, "flags", |e| matches!(e, TransportError::Mac { .. })),
        (9, 3, "term", |e| matches!(e, TransportError::Mac { .. })),
        (16, 1, "seq", |e| matches!(e, TransportError::Mac { .. })),
        (24, 3, "len (8 -> 0)", |e| {
            matches!(e, TransportError::Mac { .. })
        }),
        (27, 7, "len (+2^31)", |e| {
            matches!(e, TransportError::FrameTooLarge { .. })
        }),
        (HEADER_LEN + 3, 5, "payload", |e| {
            matches!(e, TransportError::Mac { .. })
        }),
        (HEADER_LEN + 8 + 15, 0, "MAC", |e| {
            matches!(e, TransportError::Mac { .. })
        }),
    ];
    for (byte, bit, what, check) in cases {
        let e = inject(false, |raw| {
            let mut f = good_frame(raw);
            f[byte] ^= 1 << bit;
            f
        });
        assert!(check(&e), "flip in {what}: got {e}");
    }
    // A length one larger waits for a byte that never comes.
    let e = inject(true, |raw| {
        let mut f = good_frame(raw);
        f[24] ^= 1;
        f
    });
    assert!(
        matches!(
            e,
            TransportError::Truncated {
                got: 52,
                want: 53,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn mac_mismatch_names_the_peer() {
    let (client, mut server) = pair();
    let mut raw = client.test_raw();
    let mut f = good_frame(&raw);
    f[HEADER_LEN] ^= 0x80;
    raw.stream.write_all(&f).unwrap();
    let e = server.recv().unwrap_err();
    let local = raw.stream.local_addr().unwrap();
    assert_eq!(
        e.to_string(),
        format!("frame from {local}: MAC mismatch (forged or corrupt)")
    );
}

#[test]
fn garbage_after_the_handshake_is_bad_magic() {
    let e = inject(false, |_| {
        b"\x00\x01\x02\x03garbage garbage garbage garbage".to_vec()
    });
    assert!(
        matches!(e, TransportError::BadMagic { ref found, .. } if found == &[0, 1, 2, 3]),
        "{e}"
    );
}

#[test]
fn truncated_frames_are_refused_as_truncated() {
    let e = inject(true, |raw| good_frame(raw)[..HEADER_LEN + 3].to_vec());
    assert!(
        matches!(
            e,
            TransportError::Truncated {
                got: 31,
                want: 52,
                ..
            }
        ),
        "{e}"
    );
    let e = inject(true, |raw| good_frame(raw)[..12].to_vec());
    assert!(
        matches!(
            e,
            TransportError::Truncated {
                got: 12,
                want: 28,
                ..
            }
        ),
        "{e}"
    );
    let e = inject(true, |raw| good_frame(raw)[..HEADER_LEN + 8 + 4].to_vec());
    assert!(
        matches!(
            e,
            TransportError::Truncated {
                got: 40,
                want: 52,
                ..
            }
        ),
        "mid-MAC: {e}"
    );
}

#[test]
fn huge_length_is_refused_without_waiting_for_or_allocating_the_payload() {
    let start = Instant::now();
    // The stream stays open and no payload follows: reading (or allocating
    // for) the claimed 2 GiB would block until the read timeout instead.
    let e = inject(false, |raw| {
        Header {
            kind: FrameKind::EpochData.as_u16(),
            flags: 0,
            term: 7,
            seq: raw.next_send_seq,
            len: 1 << 31,
        }
        .encode()
        .to_vec()
    });
    assert!(
        matches!(
            e,
            TransportError::FrameTooLarge {
                len: 0x8000_0000,
                limit: DEFAULT_MAX_PAYLOAD,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("2147483648 bytes, limit 67108864"),
        "{e}"
    );
    assert!(start.elapsed() < T, "safety bound");
}

#[test]
fn replayed_frame_bytes_are_refused_as_replay() {
    let key = psk();
    let l = listener();
    let proxy = Proxy::start(l.local_addr());
    let (c, s) = std::thread::scope(|sc| {
        let server = sc.spawn(|| l.accept(&resp_params(&key, Some(FP)), T));
        let client = FramedConn::connect(proxy.addr, &init_params(&key, 7), T);
        (client, server.join().unwrap())
    });
    let (mut client, mut server) = (c.unwrap().0, s.unwrap().0);
    client.send(FrameKind::EpochData, 7, b"first").unwrap();
    client.send(FrameKind::EpochData, 7, b"second").unwrap();
    assert_eq!(server.recv().unwrap().payload, b"first");
    assert_eq!(server.recv().unwrap().payload, b"second");

    let frames = split_frames(&proxy.recorded());
    assert_eq!(frames.len(), 4, "Hello, Response, first, second");
    proxy.inject(&frames[2]);
    let e = server.recv().unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Replay {
                expected: 3,
                got: 1
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "replayed frame: sequence number 1, expected 3"
    );
    // The replay ended the connection for both sides.
    assert!(matches!(client.recv(), Err(TransportError::Closed)));
}

#[test]
fn frame_recorded_from_another_session_is_refused_as_mac_mismatch() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let via_proxy = || {
        let proxy = Proxy::start(l.local_addr());
        let (c, s) = std::thread::scope(|sc| {
            let server = sc.spawn(|| l.accept(&resp, T));
            let client = FramedConn::connect(proxy.addr, &init_params(&key, 7), T);
            (client, server.join().unwrap())
        });
        (proxy, c.unwrap().0, s.unwrap().0)
    };
    let (old_proxy, mut old_client, mut old_server) = via_proxy();
    old_client
        .send(FrameKind::EpochData, 7, b"old session")
        .unwrap();
    old_server.recv().unwrap();
    let recorded = split_frames(&old_proxy.recorded());

    // Same key, same seq (1), same term: only the session key differs.
    let (proxy, _client, mut server) = via_proxy();
    proxy.inject(&recorded[2]);
    let e = server.recv().unwrap_err();
    assert!(matches!(e, TransportError::Mac { .. }), "{e}");
}

#[test]
fn wrong_sequence_numbers_are_refused() {
    let e = inject(false, |raw| {
        encode(
            &raw.send_key,
            FrameKind::EpochData,
            7,
            raw.next_send_seq + 1,
            b"skip",
        )
    });
    assert!(
        matches!(
            e,
            TransportError::Replay {
                expected: 1,
                got: 2
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("reordered or dropped"), "{e}");

    let e = inject(false, |raw| {
        encode(&raw.send_key, FrameKind::EpochData, 7, 0, b"zero")
    });
    assert!(
        matches!(
            e,
            TransportError::Replay {
                expected: 1,
                got: 0
            }
        ),
        "{e}"
    );

    // The same frame twice: the second is a replay.
    let (client, mut server) = pair();
    let mut raw = client.test_raw();
    let f = good_frame(&raw);
    raw.stream.write_all(&f).unwrap();
    raw.stream.write_all(&f).unwrap();
    assert_eq!(server.recv().unwrap().seq, 1);
    let e = server.recv().unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::Replay {
                expected: 2,
                got: 1
            }
        ),
        "{e}"
    );
}

#[test]
fn frames_under_the_handshake_key_are_refused_after_it() {
    let key = psk();
    let e = inject(false, |raw| {
        encode(
            &key.handshake_mac_key(),
            FrameKind::EpochData,
            7,
            raw.next_send_seq,
            b"x",
        )
    });
    assert!(matches!(e, TransportError::Mac { .. }), "{e}");
    // Nor is the other direction's key accepted (no reflection).
    let e = inject(false, |raw| {
        encode(
            &raw.recv_key,
            FrameKind::EpochData,
            7,
            raw.next_send_seq,
            b"x",
        )
    });
    assert!(matches!(e, TransportError::Mac { .. }), "{e}");
}

#[test]
fn authenticated_unknown_kind_and_flags_are_refused() {
    let e = inject(false, |raw| {
        let h = Header {
            kind: 999,
            flags: 0,
            term: 7,
            seq: raw.next_send_seq,
            len: 0,
        };
        encode_raw(&raw.send_key, &h.encode(), b"")
    });
    assert!(
        matches!(e, TransportError::UnknownKind { kind: 999, .. }),
        "{e}"
    );
    assert!(e.to_string().ends_with("unknown frame kind 999"), "{e}");

    let e = inject(false, |raw| {
        let h = Header {
            kind: FrameKind::Ack.as_u16(),
            flags: 0x0001,
            term: 7,
            seq: raw.next_send_seq,
            len: 0,
        };
        encode_raw(&raw.send_key, &h.encode(), b"")
    });
    assert!(
        matches!(e, TransportError::BadFlags { flags: 1, .. }),
        "{e}"
    );
}
