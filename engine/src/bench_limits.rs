//! The machine's limits, measured in the same run as the bench: memory
//! bandwidth, the page encoder, loopback TCP and the record cipher, and the
//! costs that set the engine's floor per epoch and per page on this host:
//! the CPU a thread spends to wake up (after a timed sleep, and when handed
//! a message by another thread) and a 4 KiB copy from memory not in cache.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The machine's limits, measured in the same run: memcpy, the page encoder
/// (zstd level 1 on half text-like, half random pages) and loopback TCP.
pub(crate) fn machine_limits() -> Value {
    use std::io::{Read, Write};
    const MIB: f64 = (1 << 20) as f64;
    let best = |n: usize, mut f: Box<dyn FnMut() -> f64>| (0..n).map(|_| f()).fold(0.0, f64::max);
    // memcpy of 64 MiB (both buffers faulted in first).
    let src = vec![7u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    let memcpy = best(
        5,
        Box::new(move || {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            (64 << 20) as f64 / t.elapsed().as_secs_f64() / MIB
        }),
    );
    // The page encoder on 16 MiB of mixed pages.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut pages = Vec::with_capacity(16 << 20);
    for p in 0..4096 {
        for i in 0..4096 {
            let r = xorshift(&mut x);
            pages.push(if p % 2 == 0 {
                b"lorem ipsum dolor sit amet "[i % 27]
            } else {
                r as u8
            });
        }
    }
    let encode = best(
        3,
        Box::new(move || {
            let mut enc =
                match checkpoint::pages::MemoryEncoder::new(checkpoint::pages::Compression::Zstd {
                    level: 1,
                }) {
                    Ok(e) => e,
                    Err(_) => return 0.0,
                };
            let mut out = Vec::new();
            let t = Instant::now();
            if enc.encode_run(0, &pages, &mut out).is_err() {
                return 0.0;
            }
            (16 << 20) as f64 / t.elapsed().as_secs_f64() / MIB
        }),
    );
    // Loopback TCP: 256 MiB in 1 MiB writes.
    let tcp = (|| -> std::io::Result<f64> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let rx = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = l.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            while s.read(&mut buf)? > 0 {}
            Ok(())
        });
        let mut s = std::net::TcpStream::connect(addr)?;
        let chunk = vec![1u8; 1 << 20];
        let t = Instant::now();
        for _ in 0..256 {
            s.write_all(&chunk)?;
        }
        drop(s);
        let _ = rx.join();
        Ok(256.0 / t.elapsed().as_secs_f64())
    })()
    .unwrap_or(0.0);
    // The transport's cipher: seal then open of 64 KiB records.
    let seal_open = transport::measure::seal_open_mib_s(64).unwrap_or(0.0);
    let wakes = wake_costs();
    // One cold source for both copy benches (faulting in 256 MiB costs
    // this host up to a second).
    let cold = vec![3u8; COLD_BYTES];
    json!({
        "timed_wake_cpu_us": wakes.timed_us,
        "handoff_cpu_us": wakes.handoff_us,
        "cold_page_copy_us": cold_page_copy_us(&cold),
        "offset_page_copy_us": offset_page_copy_us(&cold),
        "memcpy_mib_s": memcpy,
        "encode_zstd1_mixed_mib_s": encode,
        "loopback_tcp_mib_s": tcp,
        "seal_open_mib_s": seal_open,
    })
}

/// CPU per wake-up, in µs.
struct WakeCosts {
    /// A thread sleeping 1 ms and waking up: its own CPU per wake.
    timed_us: f64,
    /// A message handed over a crossbeam channel (the engine's hand-off) to
    /// a parked thread: the CPU of both threads per message.
    handoff_us: f64,
}

fn wake_costs() -> WakeCosts {
    const SLEEPS: u32 = 200;
    let timed = std::thread::spawn(|| {
        let t = engine::cpu::thread_cpu_time();
        for _ in 0..SLEEPS {
            std::thread::sleep(Duration::from_millis(1));
        }
        (engine::cpu::thread_cpu_time() - t).as_secs_f64() * 1e6 / f64::from(SLEEPS)
    })
    .join()
    .unwrap_or(0.0);
    // The receiver is parked when each message comes (the sender sleeps
    // first), as the engine's threads are between epochs: its CPU per
    // message, plus the sender's CPU inside `send` (the wake-up call).
    const ROUNDS: u32 = 200;
    let (tx, rx) = crossbeam::channel::bounded::<u32>(1);
    let receiver = std::thread::spawn(move || {
        let t = engine::cpu::thread_cpu_time();
        let n = rx.iter().count() as u32;
        (engine::cpu::thread_cpu_time() - t, n)
    });
    let mut sending = Duration::ZERO;
    for i in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(1));
        let t = engine::cpu::thread_cpu_time();
        if tx.send(i).is_err() {
            break;
        }
        sending += engine::cpu::thread_cpu_time() - t;
    }
    drop(tx);
    let (receiving, n) = receiver.join().unwrap_or_default();
    let handoff = if n == ROUNDS {
        (sending + receiving).as_secs_f64() * 1e6 / f64::from(ROUNDS)
    } else {
        0.0
    };
    WakeCosts {
        timed_us: timed,
        handoff_us: handoff,
    }
}

/// Where the copy benches read: 256 MiB, faulted in, so random pages of it
/// are not in cache.
const COLD_BYTES: usize = 256 << 20;

/// Times `copies` calls of `copy(i, page)`, each with a random 4 KiB page of
/// `src` (drawn from the xorshift stream `x`); returns µs per call.
fn random_page_copies(
    src: &[u8],
    x: &mut u64,
    copies: usize,
    mut copy: impl FnMut(usize, &[u8]),
) -> f64 {
    const PAGE: usize = 4096;
    let pages = src.len() / PAGE;
    let t = Instant::now();
    for i in 0..copies {
        let p = (xorshift(x) % pages as u64) as usize * PAGE;
        copy(i, &src[p..p + PAGE]);
    }
    t.elapsed().as_secs_f64() * 1e6 / copies as f64
}

/// A 4 KiB copy from a random page of `cold` ([`COLD_BYTES`]): what every
/// read of a dirty page that is not in cache costs.
fn cold_page_copy_us(cold: &[u8]) -> f64 {
    let mut dst = vec![0u8; 4096];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    random_page_copies(cold, &mut x, 20_000, |_, page| {
        dst.copy_from_slice(page);
        std::hint::black_box(&mut dst);
    })
}

/// 4 KiB pages copied from random pages of `cold` (page-aligned, not in
/// cache) into consecutive pages of a 2 MiB buffer that starts 16 bytes
/// past a page boundary, as the pause copies a dirty page into its batch
/// (a large `Vec` from `malloc` starts there): with libc's `memcpy`
/// (`copy_from_slice`) and with [`checkpoint::memcopy`]. On a CPU whose
/// `rep movsb` slows down when the two addresses' offsets differ, the
/// first is several times the second (docs/performance.md, "Copies that do
/// not depend on alignment").
fn offset_page_copy_us(cold: &[u8]) -> Value {
    const PAGE: usize = 4096;
    const BATCH: usize = 512;
    const COPIES: usize = 8 * BATCH;
    let skip = (PAGE - cold.as_ptr() as usize % PAGE) % PAGE;
    let src = &cold[skip..skip + (cold.len() - PAGE) / PAGE * PAGE];
    let mut dst_buf = vec![0u8; (BATCH + 2) * PAGE];
    let d_skip = (PAGE - dst_buf.as_ptr() as usize % PAGE) % PAGE + 16;
    let dst = &mut dst_buf[d_skip..d_skip + BATCH * PAGE];
    // One stream for both: the second reads other pages than the first.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut time = |f: &dyn Fn(&mut [u8], &[u8])| {
        let us = random_page_copies(src, &mut x, COPIES, |i, page| {
            let d = (i % BATCH) * PAGE;
            f(&mut dst[d..d + PAGE], page);
        });
        std::hint::black_box(&mut *dst);
        us
    };
    let libc = time(&|d, s| d.copy_from_slice(s));
    let ours = time(&|d, s| checkpoint::memcopy::copy(d, s));
    json!({ "libc": libc, "memcopy": ours })
}

/// The next value of a xorshift64 stream (test data and addresses, not
/// randomness anyone relies on).
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
