//! Dirty-bitmap hot paths: turning a 1 GiB region's bitmap into page
//! ranges at several densities, and the ledger's harvest/commit cycle.
//!
//! Throughput is in pages of the region (262144 per 1 GiB), so the figures
//! read as pages scanned per second whatever the density.

use std::hint::black_box;
use std::time::Duration;

use benches::{dirty_bitmap, Density, GIB_PAGES};
use checkpoint::{DirtyBitmap, DirtyLedger};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

const DENSITIES: [Density; 5] = [
    Density::Random(10),
    Density::Random(1000),
    Density::Random(25_000),
    Density::Clustered {
        pages: 25_000,
        run: 64,
    },
    Density::All,
];

fn ranges(c: &mut Criterion) {
    let mut g = c.benchmark_group("bitmap_ranges_1GiB");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(GIB_PAGES as u64));
    for d in DENSITIES {
        let b = dirty_bitmap(GIB_PAGES, d, 42);
        // Sum of range lengths and count, so the iterator cannot be skipped.
        g.bench_with_input(BenchmarkId::new("ranges", d.name()), &b, |bench, b| {
            bench.iter(|| {
                let mut n = 0usize;
                let mut pages = 0usize;
                for r in black_box(b).ranges() {
                    n += 1;
                    pages += r.len();
                }
                black_box((n, pages))
            })
        });
    }
    // What the engine does with them: runs of at most 2048 pages.
    for d in [Density::Random(25_000), Density::All] {
        let b = dirty_bitmap(GIB_PAGES, d, 42);
        g.bench_with_input(
            BenchmarkId::new("ranges_chunked_2048", d.name()),
            &b,
            |bench, b| {
                bench.iter(|| {
                    black_box(b)
                        .ranges_chunked(checkpoint::pages::RECOMMENDED_RUN_PAGES)
                        .fold(0usize, |acc, r| acc + r.len())
                })
            },
        );
    }
    g.bench_function("count/random_25000", |bench| {
        let b = dirty_bitmap(GIB_PAGES, Density::Random(25_000), 42);
        bench.iter(|| black_box(&b).count())
    });
    g.finish();
}

/// One epoch's bookkeeping: KVM's words become a bitmap, are harvested
/// (ORed with what was put back) and committed — or put back.
fn ledger(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_cycle");
    // The untimed per-iteration setup (cloning the words) takes wall time
    // too: fewer samples keep the group inside its budget.
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    // 1 GiB as one region, and a 16 GiB guest as 16 regions of 1 GiB.
    for regions in [1usize, 16] {
        let sizes = vec![GIB_PAGES; regions];
        let words: Vec<Vec<u64>> = (0..regions)
            .map(|i| dirty_bitmap(GIB_PAGES, Density::Random(25_000), i as u64).into_words())
            .collect();
        g.throughput(Throughput::Elements((regions * GIB_PAGES) as u64));
        let name = format!("{regions}GiB");
        let mut l = DirtyLedger::new(&sizes);
        g.bench_function(
            BenchmarkId::new("from_words+harvest+commit", &name),
            |bench| {
                bench.iter_batched(
                    || words.clone(),
                    |words| {
                        let fresh: Vec<DirtyBitmap> = words
                            .into_iter()
                            .map(|w| DirtyBitmap::from_words(w, GIB_PAGES).expect("sized"))
                            .collect();
                        let h = l.harvest(fresh).expect("shape");
                        black_box(h.regions().len());
                        l.commit(h);
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let mut l = DirtyLedger::new(&sizes);
        g.bench_function(
            BenchmarkId::new("from_words+harvest+put_back", &name),
            |bench| {
                bench.iter_batched(
                    || words.clone(),
                    |words| {
                        let fresh: Vec<DirtyBitmap> = words
                            .into_iter()
                            .map(|w| DirtyBitmap::from_words(w, GIB_PAGES).expect("sized"))
                            .collect();
                        let h = l.harvest(fresh).expect("shape");
                        l.put_back(h).expect("shape");
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, ranges, ledger);
criterion_main!(benches);
