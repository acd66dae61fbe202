//! The page encoder as the engine's encoder thread runs it, at the issue's
//! conditions: one epoch of 506 dirty pages scattered over a 64 MiB working
//! set, encoded page by page with batching and a 64 MiB delta cache, then
//! flushed. 72% of the pages are sparse rewrites (4 words changed since the
//! version last sent) and 28% are rewritten whole with random bytes, the
//! split `hotspare bench --profile mixed` reports (`delta_page_share`).
//!
//! The cache is primed with every page of the working set, so it is as
//! cold (a random 4 KiB of 64 MiB) as in the engine. The pages' changes are
//! made outside the timed part. Reported per epoch; divide by 506 for the
//! time per dirty page.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::{Rng, PAGE_SIZE};
use checkpoint::delta::DeltaCache;
use checkpoint::{Compression, MemoryEncoder};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Pages in the working set (64 MiB).
const WORKING_SET: usize = 16_384;
/// Dirty pages per epoch at 25k page writes/s and 20 ms epochs.
const EPOCH_PAGES: usize = 506;
/// Of every 100 dirty pages, how many are sparse rewrites.
const SPARSE_PERCENT: usize = 72;

fn scattered_epoch(c: &mut Criterion) {
    let mut g = c.benchmark_group("encoder_epoch");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .throughput(Throughput::Elements(EPOCH_PAGES as u64));
    // The sparse rewrites' entries through zstd (the default) or not.
    for runs_zstd in [true, false] {
        let name = if runs_zstd {
            "mixed_506_of_64MiB"
        } else {
            "mixed_506_of_64MiB_runs_plain"
        };
        epoch(&mut g, name, runs_zstd);
    }
    g.finish();
}

fn epoch(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    runs_zstd: bool,
) {
    let mut rng = Rng::new(0x5ca7_7e4e);
    let mut memory = vec![0u8; WORKING_SET * PAGE_SIZE];
    rng.fill(&mut memory);
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).expect("zstd");
    enc.set_batching(true);
    enc.set_runs_compression(runs_zstd);
    enc.set_delta_cache(Some(DeltaCache::with_bytes(
        (WORKING_SET * PAGE_SIZE) as u64,
    )));
    let mut out = Vec::with_capacity(4 << 20);
    for (i, p) in memory.chunks_exact(PAGE_SIZE).enumerate() {
        enc.encode_run((i * PAGE_SIZE) as u64, p, &mut out)
            .expect("encode");
    }
    enc.flush(&mut out).expect("flush");
    let mut dirty: Vec<usize> = Vec::with_capacity(EPOCH_PAGES);
    let (mut epochs, mut bytes) = (0u64, 0u64);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // This epoch's writes, untimed.
                dirty.clear();
                while dirty.len() < EPOCH_PAGES {
                    let p = rng.below(WORKING_SET);
                    if !dirty.contains(&p) {
                        dirty.push(p);
                    }
                }
                dirty.sort_unstable();
                for &p in &dirty {
                    let page = &mut memory[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
                    if rng.below(100) < SPARSE_PERCENT {
                        benches::sparse_update(page, benches::SPARSE_WORDS, &mut rng);
                    } else {
                        rng.fill(page);
                    }
                }
                out.clear();
                let t = Instant::now();
                for &p in &dirty {
                    let gpa = (p * PAGE_SIZE) as u64;
                    let page = &memory[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
                    enc.encode_run(gpa, black_box(page), &mut out)
                        .expect("encode");
                }
                enc.flush(&mut out).expect("flush");
                spent += t.elapsed();
                epochs += 1;
                bytes += out.len() as u64;
            }
            spent
        })
    });
    eprintln!(
        "{name}: {:.0} encoded bytes per dirty page",
        bytes as f64 / (epochs.max(1) * EPOCH_PAGES as u64) as f64
    );
}

criterion_group!(benches, scattered_epoch);
criterion_main!(benches);
