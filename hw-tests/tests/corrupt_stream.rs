//! A corrupt frame mid-stream, with every optimisation on (XOR deltas
//! against the 64 MiB cache, zstd): a proxy between primary and standby
//! flips one byte of the epoch stream once armed. The standby must refuse
//! it, the primary must resynchronise from scratch (new connection, new
//! encoder and delta cache), the shadow's memory must still equal the
//! primary's at every commit after that (`--verify-memory`), and a
//! failover afterwards must agree with everything the primary showed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GuestSpec, Proc, Rng, TempDir};

/// Forwards TCP to `target`; once armed, flips one byte in the next chunk
/// of at least 64 KiB going to the standby (only epoch data is that large),
/// `skip` bytes into it.
struct FlipProxy {
    addr: String,
    armed: Arc<AtomicBool>,
    flipped: Arc<AtomicU64>,
}

impl FlipProxy {
    fn start(target: String, skip: usize) -> FlipProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(false));
        let flipped = Arc::new(AtomicU64::new(0));
        let (a, f) = (armed.clone(), flipped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (a, f) = (a.clone(), f.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client, server, Some((a, f, skip))));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        FlipProxy {
            addr,
            armed,
            flipped,
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    flip: Option<(Arc<AtomicBool>, Arc<AtomicU64>, usize)>,
) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((armed, flipped, skip)) = &flip {
            if n >= 64 << 10 && armed.swap(false, Ordering::SeqCst) {
                let i = skip % n;
                buf[i] ^= 0x40;
                flipped.fetch_add(1, Ordering::SeqCst);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

fn count(p: &Proc, needle: &str) -> usize {
    p.stderr().lines().filter(|l| l.contains(needle)).count()
}

fn wait_count(p: &mut Proc, needle: &str, n: usize, t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if count(p, needle) >= n {
            return true;
        }
        if p.child.try_wait().unwrap().is_some() {
            return count(p, needle) >= n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_flipped_byte_is_refused_the_primary_resyncs_and_a_failover_still_agrees() {
    if !common::kvm_available() {
        return;
    }
    let mut rng = Rng::from_env("corrupt-stream");
    let dir = TempDir::new("corrupt");
    let key = common::key_file(&dir, "key", rng.next());
    let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
    let (mut standby, addr) = common::spawn_standby(&key, &scon, "127.0.0.1:0");
    let proxy = FlipProxy::start(addr, rng.range(0, 1 << 20) as usize);
    let spec = GuestSpec::new(
        "memtest",
        "rounds=1600 pages=1024 writes=2000 tsc=1 sleep=4",
    );
    let mut c = spec.run_cmd(&pcon);
    c.args(["--shadow", &proxy.addr, "--key-file"])
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key))
        .args(["--interval-ms", "25", "--verify-memory"])
        .stdin(Stdio::null());
    let mut primary = Proc::spawn(c);
    assert!(
        wait_count(&mut standby, "standby in sync", 1, Duration::from_secs(30)),
        "never synced:\n{}\n{}",
        primary.stderr(),
        standby.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    proxy.armed.store(true, Ordering::SeqCst);
    // The standby refuses the frame, the primary loses the link, records
    // itself unprotected, reconnects and syncs again from scratch.
    assert!(
        wait_count(&mut standby, "standby in sync", 2, Duration::from_secs(60)),
        "no second sync after the corrupt frame (flipped {}):\nprimary:\n{}\nstandby:\n{}",
        proxy.flipped.load(Ordering::SeqCst),
        primary.stderr(),
        standby.stderr()
    );
    assert_eq!(proxy.flipped.load(Ordering::SeqCst), 1);
    assert!(
        primary.stderr().contains("SHADOW LOST"),
        "{}",
        primary.stderr()
    );
    assert!(
        primary.child.try_wait().unwrap().is_none(),
        "the guest finished before the failover: the trial proves nothing"
    );
    std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
    assert!(
        primary.child.try_wait().unwrap().is_none(),
        "the guest finished before the kill: the trial proves nothing"
    );
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (err, at) = common::finished_takeover(&mut standby, "corrupt stream");
    let v = err
        .lines()
        .find(|l| l.contains("shadow memory matched"))
        .unwrap_or_else(|| panic!("no memory verification reported:\n{err}"));
    assert!(!v.contains("DIVERGED"), "{v}");
    let first = std::fs::read(&pcon).unwrap_or_default();
    let second = std::fs::read(&scon).unwrap_or_default();
    common::check_agrees("corrupt stream", &first, at, &second);
}
