//! The serving listener: hostile peers never delay a real one.

use std::io::Write;
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::support::*;
use crate::{Accepted, FrameKind, FramedConn, Incoming, ServeConfig, TransportError};

fn serve(tweak: impl FnOnce(&mut ServeConfig)) -> Incoming {
    let mut c = ServeConfig::new(Arc::new(psk()), Arc::new(|| Some(FP)));
    c.handshake_timeout = Duration::from_secs(30);
    tweak(&mut c);
    listener().serve(c).unwrap()
}

/// Connects a real primary and waits for its connection to come out;
/// returns how long that took and the refusals reported meanwhile.
fn real_primary(incoming: &Incoming) -> (Duration, Vec<String>) {
    let key = psk();
    let start = Instant::now();
    let mut refusals = Vec::new();
    let (mut c, _) = FramedConn::connect(incoming.local_addr(), &init_params(&key, 1), T)
        .expect("the real primary's handshake");
    loop {
        match incoming
            .next(T)
            .unwrap()
            .expect("a connection within the bound")
        {
            Accepted::Conn(mut s, info) => {
                assert_eq!(info.peer_fingerprint, FP);
                c.send(FrameKind::Heartbeat, 1, b"hi").unwrap();
                assert_eq!(s.recv().unwrap().payload, b"hi");
                return (start.elapsed(), refusals);
            }
            Accepted::Refused { error, .. } => refusals.push(error.to_string()),
        }
    }
}

/// A peer that sends the magic one byte at a time, slowly, then idles.
fn slow_peer(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"H").unwrap();
    s
}

#[test]
fn fifty_slow_and_idle_peers_do_not_delay_a_real_primary() {
    let incoming = serve(|_| {});
    let mut hostile: Vec<TcpStream> = (0..25).map(|_| slow_peer(incoming.local_addr())).collect();
    hostile.extend((0..25).map(|_| TcpStream::connect(incoming.local_addr()).unwrap()));
    std::thread::sleep(Duration::from_millis(100));
    let (took, _) = real_primary(&incoming);
    // Each hostile handshake would hold the listener 30 s if they were
    // served one at a time.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(hostile);
}

#[test]
fn at_the_per_source_bound_the_oldest_pending_handshake_is_cut() {
    let incoming = serve(|c| {
        c.max_per_source = 3;
        c.max_pending = 100;
    });
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(incoming.local_addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (took, mut refusals) = real_primary(&incoming);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The first idle connection was cut to make room.
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 64];
    let n = std::io::Read::read(&mut idle[0], &mut b).unwrap_or(0);
    assert_eq!(n, 0, "the oldest idle connection is closed");
    // The refusal is reported, naming why.
    while let Some(a) = incoming.next(Duration::from_millis(200)).unwrap() {
        if let Accepted::Refused { error, .. } = a {
            refusals.push(error.to_string());
        }
    }
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("too many handshakes pending")),
        "a cut is reported: {refusals:?}"
    );
}

#[test]
fn an_allowlist_closes_other_addresses_before_reading() {
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let incoming = serve(|c| c.allow = Some(vec![other]));
    let key = psk();
    let e = FramedConn::connect(incoming.local_addr(), &init_params(&key, 1), T).unwrap_err();
    assert!(e.is_fatal(), "{e}");
    match incoming.next(T).unwrap() {
        Some(Accepted::Refused { error, .. }) => {
            assert!(
                matches!(error, TransportError::NotAdmitted { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("allowlist"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn refusals_are_rate_limited_and_counted() {
    // No cuts here: each connection is refused exactly once.
    let incoming = serve(|c| c.max_per_source = 100);
    for _ in 0..40 {
        let mut s = TcpStream::connect(incoming.local_addr()).unwrap();
        let _ = s.write_all(b"garbage!");
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut reported = 0;
    let mut suppressed = 0;
    while let Some(a) = incoming.next(Duration::from_millis(300)).unwrap() {
        if let Accepted::Refused { suppressed: s, .. } = a {
            reported += 1;
            suppressed += s;
        }
    }
    assert!(
        reported <= 2 * crate::listener::REPORTS_PER_SECOND,
        "{reported} reported"
    );
    assert!(reported >= 1);
    // Those not yet summed up are reported with the next refusal.
    let mut s = TcpStream::connect(incoming.local_addr()).unwrap();
    let _ = s.write_all(b"garbage!");
    std::thread::sleep(Duration::from_millis(1100));
    let mut s2 = TcpStream::connect(incoming.local_addr()).unwrap();
    let _ = s2.write_all(b"garbage!");
    while let Some(a) = incoming.next(Duration::from_millis(500)).unwrap() {
        if let Accepted::Refused { suppressed: s, .. } = a {
            reported += 1;
            suppressed += s;
        }
    }
    assert_eq!(
        reported as u64 + suppressed,
        42,
        "every refusal is reported or counted"
    );
}
