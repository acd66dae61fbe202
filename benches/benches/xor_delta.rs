//! XOR-delta page encoding. The `xor_*` cases measure the methods on their
//! own (the `benches::xor_delta` prototype that chose XOR + zstd); the
//! `encoder_*` cases measure the engine's `MemoryEncoder` as the sender
//! thread runs it, with and without its `DeltaCache`: each iteration
//! encodes the previous version of the run, then the current one, so the
//! delta case pays its cache inserts and XOR for real.
//!
//! For runs of 64 dirty pages of which only a few words changed since the
//! previous epoch, compares:
//! - `direct_zstd1`: zstd level 1 of the pages (today's `MemoryEncoder`);
//! - `xor_zero_runs`: XOR against the previous version + zero-run encoding;
//! - `xor_zstd1`: XOR against the previous version + zstd level 1 of the
//!   delta.
//!
//! Throughput is in guest bytes. The sizes each method produces are printed
//! once at start-up (and by the `ratios` example).

use std::hint::black_box;
use std::time::Duration;

use benches::xor_delta::DeltaEncoder;
use benches::{Content, UpdatedRun, PAGE_SIZE};
use checkpoint::delta::DeltaCache;
use checkpoint::{Compression, MemoryEncoder};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const RUN_PAGES: usize = 64;
const BASES: [Content; 3] = [Content::Text, Content::Structured, Content::Random];
const WORDS_CHANGED: [usize; 2] = [4, 64];

fn xor_delta(c: &mut Criterion) {
    let mut g = c.benchmark_group("xor_delta_run64");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .throughput(Throughput::Bytes((RUN_PAGES * PAGE_SIZE) as u64));
    let mut enc = DeltaEncoder::new(1).expect("zstd");
    eprintln!(
        "xor_delta sizes for {RUN_PAGES} pages ({} bytes):",
        RUN_PAGES * PAGE_SIZE
    );
    for base in BASES {
        for words in WORDS_CHANGED {
            let run = UpdatedRun::new(base, RUN_PAGES, words, 3);
            let s = enc.sizes(&run.prev, &run.cur).expect("zstd");
            eprintln!(
                "  {:>10} {:>2} words/page: direct zstd1 {:>7} ({:.4}), xor+zero-runs {:>6} ({:.4}), xor+zstd1 {:>6} ({:.4})",
                base.name(),
                words,
                s.direct_zstd,
                s.direct_zstd as f64 / s.raw as f64,
                s.xor_sparse,
                s.xor_sparse as f64 / s.raw as f64,
                s.xor_zstd,
                s.xor_zstd as f64 / s.raw as f64,
            );
            let case = format!("{}_{}w", base.name(), words);
            let mut out = Vec::with_capacity(RUN_PAGES * PAGE_SIZE);
            g.bench_with_input(BenchmarkId::new("direct_zstd1", &case), &run, |b, run| {
                b.iter(|| enc.direct_zstd(black_box(&run.cur)).expect("zstd"))
            });
            g.bench_with_input(BenchmarkId::new("xor_zero_runs", &case), &run, |b, run| {
                b.iter(|| enc.xor_sparse(black_box(&run.prev), black_box(&run.cur), &mut out))
            });
            g.bench_with_input(BenchmarkId::new("xor_zstd1", &case), &run, |b, run| {
                b.iter(|| {
                    enc.xor_zstd(black_box(&run.prev), black_box(&run.cur))
                        .expect("zstd")
                })
            });
            for (name, cache) in [("encoder_plain", false), ("encoder_delta", true)] {
                let mut me = MemoryEncoder::new(Compression::Zstd { level: 1 }).expect("zstd");
                if cache {
                    me.set_delta_cache(Some(DeltaCache::new(RUN_PAGES)));
                }
                g.bench_with_input(BenchmarkId::new(name, &case), &run, |b, run| {
                    b.iter(|| {
                        out.clear();
                        me.encode_run(0, black_box(&run.prev), &mut out)
                            .expect("encode");
                        me.encode_run(0, black_box(&run.cur), &mut out)
                            .expect("encode");
                        out.len()
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, xor_delta);
criterion_main!(benches);
