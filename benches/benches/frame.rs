//! Transport frames: encode + MAC on one thread, decode + MAC check on
//! another, over a real loopback `FramedConn` pair (after a real
//! handshake), for payloads of 4 KiB, 1 MiB and 4 MiB.
//!
//! `frame_loopback` times `iters` frames from the sender's first byte to
//! the receiver's last frame; both ends run at once, so on this 2-core
//! machine it is the pipeline's throughput (send + MAC ∥ recv + verify +
//! kernel copies), not the sum of the two costs.
//!
//! `frame_mac` isolates the MAC: keyed BLAKE3 of header ‖ payload, the
//! computation `transport::frame::mac` does (it is crate-private, so the
//! bench reproduces it; each frame is MACed once by the sender and once by
//! the receiver).
//!
//! Throughput is in payload bytes.

use std::hint::black_box;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use benches::Rng;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use transport::{Channel, FrameKind, FramedConn, HandshakeParams, Listener, Psk};

const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("1MiB", 1 << 20), ("4MiB", 4 << 20)];
const TIMEOUT: Duration = Duration::from_secs(30);

/// A handshaken loopback pair: (initiator, responder).
fn pair() -> (FramedConn, FramedConn) {
    let psk = Psk::from_bytes(&[0x5a; 32]).expect("psk");
    let listener = Listener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr();
    thread::scope(|s| {
        let server = s.spawn(|| {
            let params = HandshakeParams::new(&psk, None, Channel::Stream, 1);
            listener.accept(&params, TIMEOUT)
        });
        let params = HandshakeParams::new(&psk, Some([0xab; 32]), Channel::Stream, 1);
        let (client, _) = FramedConn::connect(addr, &params, TIMEOUT).expect("connect");
        let (server, _) = server.join().expect("accept thread").expect("accept");
        (client, server)
    })
}

fn payloads() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(99);
    SIZES
        .iter()
        .map(|&(_, n)| {
            let mut p = vec![0u8; n];
            rng.fill(&mut p);
            p
        })
        .collect()
}

fn loopback(c: &mut Criterion) {
    let (client, server) = pair();
    let (mut tx, _client_rx) = client.split();
    let (_server_tx, mut rx) = server.split();
    rx.set_read_timeout(Some(TIMEOUT)).expect("timeout");

    // The sending thread: on (size index, n) it sends n frames.
    let (cmd, cmds) = mpsc::channel::<(usize, u64)>();
    let sender = thread::spawn(move || {
        let payloads = payloads();
        for (idx, n) in cmds {
            for _ in 0..n {
                tx.send(FrameKind::EpochData, 1, &payloads[idx])
                    .expect("send");
            }
        }
        tx
    });

    let mut g = c.benchmark_group("frame_loopback");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for (idx, &(name, size)) in SIZES.iter().enumerate() {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                cmd.send((idx, iters)).expect("sender thread alive");
                for _ in 0..iters {
                    let f = rx.recv().expect("recv");
                    assert_eq!(f.payload.len(), size);
                    black_box(f);
                }
                start.elapsed()
            })
        });
    }
    g.finish();
    drop(cmd);
    let tx = sender.join().expect("sender thread");
    tx.shutdown();
}

/// Keyed BLAKE3 of `header ‖ payload`, first 16 bytes: the frame MAC.
fn mac(key: &[u8; 32], header: &[u8; 28], payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(header);
    h.update(payload);
    let mut m = [0u8; 16];
    m.copy_from_slice(&h.finalize().as_bytes()[..16]);
    m
}

fn mac_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_mac");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    let key = [7u8; 32];
    let header = [1u8; 28];
    for ((name, size), payload) in SIZES.iter().zip(payloads()) {
        g.throughput(Throughput::Bytes(*size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &payload, |b, p| {
            b.iter(|| mac(&key, &header, black_box(p)))
        });
    }
    g.finish();
}

criterion_group!(benches, loopback, mac_only);
criterion_main!(benches);
