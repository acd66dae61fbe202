//! Prints the encoded/raw size ratios of the benchmark inputs as Markdown
//! tables, for the performance doc:
//!
//! - `MemoryEncoder::encode_run` for every workload profile, compression
//!   and run length the `pages` bench uses (same inputs, same seed);
//! - the XOR-delta prototype against direct zstd (the `xor_delta` bench's
//!   inputs).
//!
//! Run: `cargo run --release -p benches --example ratios`.

use benches::xor_delta::DeltaEncoder;
use benches::{bench_pages, encode_in_runs, Content, Profile, UpdatedRun, PAGE_SIZE};
use checkpoint::{Compression, MemoryEncoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs = [1usize, 64, 2048];
    let comps = [
        ("none", Compression::None),
        ("zstd1", Compression::Zstd { level: 1 }),
        ("zstd3", Compression::Zstd { level: 3 }),
    ];

    println!("## encode_run: encoded bytes / raw bytes (record headers included)\n");
    print!("| profile |");
    for run in runs {
        for (c, _) in comps {
            print!(" {c} ×{run} |");
        }
    }
    println!();
    println!("|---|{}", "---:|".repeat(runs.len() * comps.len()));
    for p in Profile::ALL {
        print!("| {} |", p.name());
        for run in runs {
            // The same inputs as the pages bench (seed 11; runs of 1 are
            // 64 isolated pages).
            let pages = p.run(bench_pages(run), 11);
            for (_, comp) in comps {
                let mut enc = MemoryEncoder::new(comp)?;
                let mut out = Vec::new();
                encode_in_runs(&mut enc, 0x1_0000_0000, &pages, run, &mut out)?;
                print!(" {:.4} |", enc.stats().ratio());
            }
        }
        println!();
    }

    // A larger sample of the mixed profile, as the container bench uses.
    let mixed = Profile::Mixed.run((16 << 20) / PAGE_SIZE, 21);
    println!("\nMixed, 16 MiB (the container bench's guest memory), runs of 2048 pages:\n");
    println!("| compression | ratio | zero pages | raw pages | zstd pages |");
    println!("|---|---:|---:|---:|---:|");
    for (c, comp) in comps {
        let mut enc = MemoryEncoder::new(comp)?;
        let mut out = Vec::new();
        encode_in_runs(&mut enc, 0, &mixed, 2048, &mut out)?;
        let s = enc.stats();
        println!(
            "| {c} | {:.4} | {} | {} | {} |",
            s.ratio(),
            s.zero_pages,
            s.raw_pages,
            s.compressed_pages
        );
    }

    println!("\n## XOR-delta prototype: bytes / raw bytes, runs of 64 pages\n");
    println!(
        "| base page | words changed per page | direct zstd1 | XOR + zero runs | XOR + zstd1 |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut enc = DeltaEncoder::new(1)?;
    for base in [
        Content::Zero,
        Content::Text,
        Content::Structured,
        Content::Random,
    ] {
        for words in [1usize, 4, 64] {
            let run = UpdatedRun::new(base, 64, words, 3);
            let s = enc.sizes(&run.prev, &run.cur)?;
            let r = |n: usize| n as f64 / s.raw as f64;
            println!(
                "| {} | {} | {:.4} | {:.4} | {:.4} |",
                base.name(),
                words,
                r(s.direct_zstd),
                r(s.xor_sparse),
                r(s.xor_zstd)
            );
        }
    }
    Ok(())
}
