//! Helpers shared by the loopback tests: keys, connected pairs, a recording
//! proxy, raw frame crafting.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{Channel, FramedConn, HandshakeParams, Listener, PeerInfo, Psk, Result};

/// Generous handshake/read bound: only reached if something hangs.
pub const T: Duration = Duration::from_secs(20);

/// The fingerprint most tests use.
pub const FP: [u8; 32] = [0xab; 32];

/// The shared key most tests use.
pub fn psk() -> Psk {
    Psk::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap()
}

/// A different key of the same length.
pub fn other_psk() -> Psk {
    Psk::from_bytes(b"0123456789abcdef0123456789abcdeX").unwrap()
}

/// A listener on a free loopback port.
pub fn listener() -> Listener {
    Listener::bind("127.0.0.1:0").unwrap()
}

/// Initiator parameters (stream channel).
pub fn init_params(psk: &Psk, term: u64) -> HandshakeParams<'_> {
    HandshakeParams::new(psk, Some(FP), Channel::Stream, term)
}

/// Responder parameters (stream channel).
pub fn resp_params(psk: &Psk, fingerprint: Option<[u8; 32]>) -> HandshakeParams<'_> {
    HandshakeParams::new(psk, fingerprint, Channel::Stream, 3)
}

/// Both sides' handshake outcomes: (initiator, responder).
pub type Outcomes = (
    Result<(FramedConn, PeerInfo)>,
    Result<(FramedConn, PeerInfo)>,
);

/// Connects `init` to `listener`, which accepts with `resp`.
pub fn handshake(listener: &Listener, init: &HandshakeParams, resp: &HandshakeParams) -> Outcomes {
    thread::scope(|s| {
        let server = s.spawn(|| listener.accept(resp, T));
        let client = FramedConn::connect(listener.local_addr(), init, T);
        (client, server.join().unwrap())
    })
}

/// A connected pair with the usual parameters: (initiator, responder).
pub fn pair() -> (FramedConn, FramedConn) {
    let key = psk();
    let l = listener();
    let (c, s) = handshake(&l, &init_params(&key, 7), &resp_params(&key, Some(FP)));
    (c.unwrap().0, s.unwrap().0)
}

/// Proves `listener` (accepting with `resp`) still works: a peer with
/// matching parameters completes a handshake and a frame gets through.
pub fn assert_listener_alive(listener: &Listener, resp: &HandshakeParams) {
    let init = HandshakeParams::new(
        resp.psk,
        Some(resp.fingerprint.unwrap_or(FP)),
        resp.channel,
        1,
    );
    let (c, s) = handshake(listener, &init, resp);
    let (mut c, _) = c.expect("good peer after a bad one: initiator");
    let (mut s, _) = s.expect("good peer after a bad one: responder");
    c.send(crate::FrameKind::Heartbeat, 1, b"alive").unwrap();
    assert_eq!(s.recv().unwrap().payload, b"alive");
}

/// A TCP proxy for one connection that records what the client sends and
/// lets a test inject bytes towards the server.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    /// Starts a proxy to `target` in the background.
    pub fn start(target: SocketAddr) -> Proxy {
        Proxy::start_rewriting(target, |_| {})
    }

    /// Starts a proxy that passes each chunk the client sends through
    /// `rewrite` before forwarding it (the record keeps the original).
    pub fn start_rewriting(target: SocketAddr, rewrite: fn(&mut [u8])) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let rec = recorded.clone();
        thread::spawn(move || {
            let (client, _) = l.accept().unwrap();
            let server = TcpStream::connect(target).unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || pump(c2, s2, Some(rec), rewrite));
            pump(server, client, None, |_| {});
        });
        Proxy { addr, recorded }
    }

    /// Everything the client has sent so far.
    pub fn recorded(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

/// Copies `from` to `to` until either ends, recording if asked.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    record: Option<Arc<Mutex<Vec<u8>>>>,
    rewrite: fn(&mut [u8]),
) {
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(r) = &record {
            r.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        rewrite(&mut buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A loopback address for tests that decode without a socket.
pub fn fake_peer() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}
