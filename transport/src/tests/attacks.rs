//! Hostile bytes after the handshake: tampering, replay, reordering,
//! dropping, truncation, reflection, lying lengths; and what a wire capture
//! shows.

use std::io::Write;
use std::thread;

use super::support::*;
use crate::frame::{Header, Limits, FIRST_PAYLOAD, HEADER_LEN, MAX_PLAINTEXT, TAG_LEN};
use crate::{FrameKind, FramedConn, TransportError};

/// Bytes of one sealed record: its 2-byte length, then ciphertext and tag.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let n = 2 + u16::from_le_bytes([rest[0], rest[1]]) as usize;
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// One record sealing `plain` as the client's next record.
fn seal_plain(raw: &crate::conn::TestRaw, plain: &[u8]) -> Vec<u8> {
    let ct = plain.len() + TAG_LEN;
    let mut out = (ct as u16).to_le_bytes().to_vec();
    out.extend_from_slice(plain);
    let tag = raw
        .session
        .seal_in_place(raw.next_send_nonce, &mut out[2..])
        .unwrap();
    out.extend_from_slice(&tag);
    out
}

/// Writes what `craft` makes (given the client's raw side) to the server
/// and returns the server's error.
fn inject(craft: impl FnOnce(&crate::conn::TestRaw) -> Vec<u8>) -> TransportError {
    let (client, mut server) = pair();
    let mut raw = client.test_raw();
    let bytes = craft(&raw);
    raw.stream.write_all(&bytes).unwrap();
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let e = server
        .recv()
        .expect_err("the hostile bytes must be refused");
    assert!(e.is_fatal(), "{e}");
    assert!(
        matches!(server.recv(), Err(TransportError::Closed)),
        "a refused connection stays closed"
    );
    e
}

#[test]
fn one_flipped_bit_anywhere_is_refused() {
    let payload = [0x42u8; 100];
    let len = {
        let (client, _server) = pair();
        let raw = client.test_raw();
        raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &payload)
            .len()
    };
    for at in 0..len {
        let e = inject(|raw| {
            let mut f = raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &payload);
            f[at] ^= 1 << (at % 8);
            f
        });
        let ok = if at < 2 {
            // The length prefix: a shorter record fails authentication, a
            // longer one is cut by the end of the stream.
            matches!(
                e,
                TransportError::Auth { .. } | TransportError::Truncated { .. }
            )
        } else {
            matches!(e, TransportError::Auth { .. })
        };
        assert!(ok, "bit flipped at byte {at}: {e}");
    }
}

#[test]
fn a_replayed_record_is_refused() {
    let (mut client, mut server) = pair();
    let proxy_bytes = {
        let raw = client.test_raw();
        raw.seal(raw.next_send_nonce, FrameKind::Heartbeat, 1, b"once")
    };
    let mut raw = client.test_raw();
    raw.stream.write_all(&proxy_bytes).unwrap();
    assert_eq!(server.recv().unwrap().payload, b"once");
    // The same bytes again: record number 1 is expected to be new.
    raw.stream.write_all(&proxy_bytes).unwrap();
    let e = server.recv().unwrap_err();
    assert!(matches!(e, TransportError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("replayed"), "{e}");
    assert!(client.recv().is_err(), "the connection is shut down");
}

#[test]
fn reordered_and_dropped_records_are_refused() {
    let big = vec![3u8; FIRST_PAYLOAD + 2 * MAX_PLAINTEXT];
    // Swap the second and third records of one frame.
    let e = inject(|raw| {
        let r = records(&raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &big));
        assert_eq!(r.len(), 3);
        [r[0].clone(), r[2].clone(), r[1].clone()].concat()
    });
    assert!(matches!(e, TransportError::Auth { .. }), "reordered: {e}");
    // Drop the second record: the third arrives under the wrong number.
    let e = inject(|raw| {
        let r = records(&raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &big));
        [r[0].clone(), r[2].clone()].concat()
    });
    assert!(matches!(e, TransportError::Auth { .. }), "dropped: {e}");
    // Drop a whole frame: the next one is sealed under a later number.
    let e = inject(|raw| {
        let n = raw.next_send_nonce;
        raw.seal(n + 1, FrameKind::Heartbeat, 7, b"second")
    });
    assert!(
        matches!(e, TransportError::Auth { .. }),
        "dropped frame: {e}"
    );
}

#[test]
fn a_truncated_record_is_refused_as_truncated() {
    let e = inject(|raw| {
        let f = raw.seal(raw.next_send_nonce, FrameKind::EpochData, 7, &[1u8; 500]);
        f[..200].to_vec()
    });
    assert!(
        matches!(e, TransportError::Truncated { got: 200, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("closed mid-frame"), "{e}");
}

#[test]
fn a_record_from_another_session_is_refused() {
    let recorded = {
        let (client, _server) = pair();
        let raw = client.test_raw();
        raw.seal(raw.next_send_nonce, FrameKind::Heartbeat, 1, b"old session")
    };
    let e = inject(|_| recorded);
    assert!(matches!(e, TransportError::Auth { .. }), "{e}");
}

#[test]
fn a_record_reflected_to_its_sender_is_refused() {
    let (client, server) = pair();
    let raw_server = server.test_raw();
    // What the server would send to the client, written back to the server.
    let mine = raw_server.seal(raw_server.next_send_nonce, FrameKind::Ack, 1, b"ack");
    let mut raw_client = client.test_raw();
    raw_client.stream.write_all(&mine).unwrap();
    let mut server = server;
    let e = server.recv().unwrap_err();
    assert!(matches!(e, TransportError::Auth { .. }), "{e}");
}

#[test]
fn an_authenticated_huge_length_is_refused_before_allocating() {
    // A peer holding the key claims 2 GiB in a one-record frame: refused
    // at the header, never waited for.
    let (client, mut server) = pair();
    server.set_limits(Limits { max_payload: 1024 });
    let mut raw = client.test_raw();
    let h = Header {
        kind: FrameKind::EpochData,
        term: 7,
        len: 1 << 31,
    };
    // Only the first record of such a frame, header alone.
    raw.stream
        .write_all(&seal_plain(&raw, &h.encode()))
        .unwrap();
    let e = server.recv().unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::FrameTooLarge {
                len: 0x8000_0000,
                limit: 1024,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn authenticated_unknown_kind_flags_and_bad_layout_are_refused() {
    let mut header = Header {
        kind: FrameKind::Ack,
        term: 1,
        len: 0,
    }
    .encode();
    header[0] = 99;
    let e = inject(|raw| seal_plain(raw, &header));
    assert!(
        matches!(e, TransportError::UnknownKind { kind: 99, .. }),
        "{e}"
    );
    header[0] = FrameKind::Ack.as_u16() as u8;
    header[2] = 1;
    let e = inject(|raw| seal_plain(raw, &header));
    assert!(
        matches!(e, TransportError::BadFlags { flags: 1, .. }),
        "{e}"
    );
    // A header claiming 10 payload bytes, sealed with 3.
    header[2] = 0;
    header[12] = 10;
    let mut short = header.to_vec();
    short.extend_from_slice(b"abc");
    let e = inject(|raw| seal_plain(raw, &short));
    assert!(matches!(e, TransportError::BadRecord { .. }), "{e}");
    // A first record shorter than a header.
    let e = inject(|raw| seal_plain(raw, &header[..HEADER_LEN - 1]));
    assert!(matches!(e, TransportError::BadRecord { .. }), "{e}");
    // A record too short to hold a tag.
    let e = inject(|_| vec![5, 0, 1, 2, 3, 4, 5]);
    assert!(matches!(e, TransportError::BadRecord { .. }), "{e}");
}

#[test]
fn a_wire_capture_shows_no_payload_and_no_key() {
    let key = psk();
    let l = listener();
    let resp = resp_params(&key, Some(FP));
    let proxy = Proxy::start(l.local_addr());
    // A page-like pattern a guest might hold.
    let page: Vec<u8> = b"SECRET-GUEST-PAGE-"
        .iter()
        .copied()
        .cycle()
        .take(4096 * 8)
        .collect();
    thread::scope(|sc| {
        let server = sc.spawn(|| {
            let (mut s, _) = l.accept(&resp, T).unwrap();
            s.recv().unwrap()
        });
        let (mut c, _) = FramedConn::connect(proxy.addr, &init_params(&key, 1), T).unwrap();
        c.send(FrameKind::EpochData, 1, &page).unwrap();
        assert!(server.join().unwrap().payload == page);
    });
    let wire = proxy.recorded();
    assert!(wire.len() > page.len(), "the capture holds the frame");
    let needle = b"SECRET-GUEST";
    assert!(
        !wire.windows(needle.len()).any(|w| w == needle),
        "guest bytes visible in clear on the wire"
    );
    let k = b"0123456789abcdef";
    assert!(!wire.windows(k.len()).any(|w| w == k), "key on the wire");
}
