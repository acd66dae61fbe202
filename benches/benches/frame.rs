//! Transport frames: encode + seal on one thread, open + decode on
//! another, over a real loopback `FramedConn` pair (after a real
//! handshake), for payloads of 4 KiB, 1 MiB and 4 MiB.
//!
//! `frame_loopback` times `iters` frames from the sender's first byte to
//! the receiver's last frame; both ends run at once, so on this 2-core
//! machine it is the pipeline's throughput (send + seal ∥ recv + open +
//! kernel copies), not the sum of the two costs.
//!
//! `record_cipher` isolates the cipher: sealing (and opening) one
//! 64 KiB Noise transport record with AES-256-GCM and with
//! ChaCha20-Poly1305, beside protocol version 3's keyed-BLAKE3 MAC.
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

/// Makes a snow crypto resolver (one library's primitives).
type MakeResolver = fn() -> Box<dyn snow::resolvers::CryptoResolver + Send>;

/// A Noise NNpsk0 transport pair with the given cipher, handshaken in
/// memory: (initiator's sending state, responder's receiving state).
fn noise_pair(
    cipher: &str,
    resolver: MakeResolver,
) -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = format!("Noise_NNpsk0_25519_{cipher}_SHA256")
        .parse()
        .expect("noise params");
    let psk = [0x5a; 32];
    let mut i = snow::Builder::with_resolver(params.clone(), resolver())
        .psk(0, &psk)
        .build_initiator()
        .expect("initiator");
    let mut r = snow::Builder::with_resolver(params, resolver())
        .psk(0, &psk)
        .build_responder()
        .expect("responder");
    let (mut m, mut out) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut m).expect("msg 1");
    r.read_message(&m[..n], &mut out).expect("read 1");
    let n = r.write_message(&[], &mut m).expect("msg 2");
    i.read_message(&m[..n], &mut out).expect("read 2");
    (
        i.into_transport_mode().expect("transport"),
        r.into_transport_mode().expect("transport"),
    )
}

/// Keyed BLAKE3 of `header ‖ payload`, first 16 bytes: protocol version
/// 3's frame MAC (authentication only), kept as the reference.
fn blake3_mac(key: &[u8; 32], header: &[u8; 28], payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(header);
    h.update(payload);
    let mut m = [0u8; 16];
    m.copy_from_slice(&h.finalize().as_bytes()[..16]);
    m
}

/// One record's worth of cipher work per iteration, in the record size the
/// transport uses (65,519 plaintext bytes, the largest Noise message):
/// seal (the sender's cost) and seal + open (both ends' cost), for
/// AES-256-GCM and ChaCha20-Poly1305, each from ring (what the transport
/// uses) and from RustCrypto (snow's default resolver), with version 3's
/// keyed-BLAKE3 MAC as the reference. This is what chose AES-GCM from ring
/// (`docs/security.md`).
fn record_cipher(c: &mut Criterion) {
    const PLAIN: usize = 65_519;
    let mut g = c.benchmark_group("record_cipher");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .throughput(Throughput::Bytes(PLAIN as u64));
    let mut plain = vec![0u8; PLAIN];
    Rng::new(7).fill(&mut plain);
    let mut sealed = vec![0u8; PLAIN + 16];
    let mut opened = vec![0u8; PLAIN];
    let resolvers: [(&str, MakeResolver); 2] = [
        // ring has no X25519 for snow: the handshake's DH falls back.
        ("ring", || {
            Box::new(snow::resolvers::FallbackResolver::new(
                Box::new(snow::resolvers::RingResolver),
                Box::new(snow::resolvers::DefaultResolver),
            ))
        }),
        ("rustcrypto", || Box::new(snow::resolvers::DefaultResolver)),
    ];
    for ((lib, resolver), cipher) in resolvers
        .into_iter()
        .flat_map(|r| ["AESGCM", "ChaChaPoly"].map(move |c| (r, c)))
    {
        let name = format!("{cipher}-{lib}");
        let (mut tx, _) = noise_pair(cipher, resolver);
        g.bench_function(BenchmarkId::new("seal", &name), |b| {
            b.iter(|| {
                tx.write_message(black_box(&plain), &mut sealed)
                    .expect("seal")
            })
        });
        let (mut tx, mut rx) = noise_pair(cipher, resolver);
        g.bench_function(BenchmarkId::new("seal_open", &name), |b| {
            b.iter(|| {
                let n = tx
                    .write_message(black_box(&plain), &mut sealed)
                    .expect("seal");
                rx.read_message(&sealed[..n], &mut opened).expect("open")
            })
        });
    }
    let key = [7u8; 32];
    let header = [1u8; 28];
    g.bench_function(BenchmarkId::new("mac_v3", "BLAKE3"), |b| {
        b.iter(|| blake3_mac(&key, &header, black_box(&plain)))
    });
    g.finish();
}

criterion_group!(benches, loopback, record_cipher);
criterion_main!(benches);
