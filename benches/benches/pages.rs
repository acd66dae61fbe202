//! Page encoding hot paths: zero detection, `MemoryEncoder::encode_run`
//! and `decode_records`, for each workload profile (see
//! `benches::Profile`) on runs of 1, 64 and 2048 pages.
//!
//! Throughput is in guest (raw) bytes, so encode and decode figures read as
//! GiB of guest memory per second. The encoded/raw ratios of the same
//! inputs are printed by `cargo run --release -p benches --example ratios`.

use std::hint::black_box;
use std::time::Duration;

use benches::{bench_pages, encode_in_runs, Placed, PlacedOut, Profile, PAGE_SIZE};
use checkpoint::pages::is_zero;
use checkpoint::{decode_records, Compression, MemoryEncoder};
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};

const RUNS: [usize; 3] = [1, 64, 2048];

const COMPRESSIONS: [(&str, Compression); 3] = [
    ("none", Compression::None),
    ("zstd1", Compression::Zstd { level: 1 }),
    ("zstd3", Compression::Zstd { level: 3 }),
];

/// Where the benched run sits in guest memory (any page-aligned address).
const GPA: u64 = 0x1_0000_0000;

/// Sampling for a group whose iterations take about `run` pages of work.
fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, run: usize) {
    g.warm_up_time(Duration::from_millis(300));
    if run >= 1024 {
        // Tens of milliseconds per iteration: few, equal-sized samples.
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .measurement_time(Duration::from_millis(1500));
    } else {
        g.sample_size(30).measurement_time(Duration::from_secs(1));
    }
}

fn zero_detection(c: &mut Criterion) {
    let mut g = c.benchmark_group("is_zero");
    configure(&mut g, 256);
    // 256 pages per iteration (1 MiB, cache resident), one call per page.
    let npages = 256;
    g.throughput(Throughput::Bytes((npages * PAGE_SIZE) as u64));
    for p in Profile::ALL {
        let run = p.run(npages, 7);
        g.bench_with_input(BenchmarkId::from_parameter(p.name()), &run, |b, run| {
            b.iter(|| {
                black_box(run)
                    .chunks_exact(PAGE_SIZE)
                    .filter(|page| is_zero(page))
                    .count()
            })
        });
    }
    g.finish();
}

/// Page offset of encoder output and section payloads: where glibc puts
/// large heap blocks, as the engine's section buffers are.
const OUT_OFFSET: usize = 16;

fn encode(c: &mut Criterion) {
    for run in RUNS {
        let mut g = c.benchmark_group(format!("encode_run{run}"));
        configure(&mut g, run);
        let npages = bench_pages(run);
        g.throughput(Throughput::Bytes((npages * PAGE_SIZE) as u64));
        for p in Profile::ALL {
            // Page aligned, like guest memory.
            let pages = Placed::copy_of(&p.run(npages, 11), 0);
            for (cname, comp) in COMPRESSIONS {
                let mut enc = MemoryEncoder::new(comp).expect("encoder");
                let mut out = PlacedOut::new(pages.as_slice().len() + (64 << 10), OUT_OFFSET);
                g.bench_with_input(BenchmarkId::new(cname, p.name()), &pages, |b, pages| {
                    b.iter(|| {
                        let out = out.reset();
                        encode_in_runs(&mut enc, GPA, black_box(pages.as_slice()), run, out)
                            .expect("encode");
                        black_box(out.len())
                    })
                });
            }
        }
        g.finish();
    }
}

fn decode(c: &mut Criterion) {
    for run in RUNS {
        let mut g = c.benchmark_group(format!("decode_run{run}"));
        configure(&mut g, run);
        let npages = bench_pages(run);
        g.throughput(Throughput::Bytes((npages * PAGE_SIZE) as u64));
        for p in Profile::ALL {
            let pages = p.run(npages, 11);
            // zstd level only changes the encoder's effort: decoding level-3
            // output runs at about the speed of level-1 output, so only
            // none and zstd1 are decoded here.
            for (cname, comp) in &COMPRESSIONS[..2] {
                let mut enc = MemoryEncoder::new(*comp).expect("encoder");
                let mut payload = Vec::new();
                encode_in_runs(&mut enc, GPA, &pages, run, &mut payload).expect("encode");
                let payload = Placed::copy_of(&payload, OUT_OFFSET);
                // The sink copies into page-aligned guest memory, as a
                // restore or the standby's apply does.
                let mut guest = Placed::zeroed(pages.len(), 0);
                g.bench_with_input(
                    BenchmarkId::new(*cname, p.name()),
                    &payload,
                    |b, payload| {
                        b.iter(|| {
                            let guest = guest.as_mut_slice();
                            decode_records(black_box(payload.as_slice()), |gpa, bytes| {
                                let at = (gpa - GPA) as usize;
                                guest[at..at + bytes.len()].copy_from_slice(bytes);
                                Ok(())
                            })
                            .expect("decode");
                            black_box(guest);
                        })
                    },
                );
            }
        }
        g.finish();
    }
}

/// A plain 256 KiB `copy_from_slice` by `(dst - src) mod 4096`: shows the
/// memcpy slowdown that `benches::Placed` keeps out of the other figures.
/// 4063 is the distance of a Raw record's first byte when a section payload
/// buffer starts 16 bytes into a page and the guest page is aligned.
fn copy_distance(c: &mut Criterion) {
    let mut g = c.benchmark_group("copy_256KiB");
    configure(&mut g, 64);
    let len = 256 << 10;
    g.throughput(Throughput::Bytes(len as u64));
    let src = Placed::copy_of(&Profile::Random.run(len / PAGE_SIZE, 1), 0);
    for distance in [0usize, 4063, 64, 8, 1] {
        let mut dst = Placed::zeroed(len, distance);
        g.bench_function(BenchmarkId::new("dst_minus_src", distance), |b| {
            b.iter(|| {
                dst.as_mut_slice()
                    .copy_from_slice(black_box(src.as_slice()));
                black_box(dst.as_slice().len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, zero_detection, encode, decode, copy_distance);
criterion_main!(benches);
