//! What scattered, cold pages cost the engine, plain and prefetched, over
//! 1 GiB of guest memory (`engine::memory::Ram`, a memfd mapping, every
//! page allocated), averaged over 200 epochs of 506 dirty pages:
//!
//! 1. **The pause's copy** (`capture::copy_pages`): each dirty page copied
//!    out of guest memory into the epoch's buffer, in address order; plain,
//!    or with the first line of the page four pages ahead prefetched.
//! 2. **The shadow's apply of sparse rewrites** (`StagedEpoch::apply`):
//!    four 8-byte XOR runs per page at random words, as `XorRuns` records
//!    deliver them:
//!    - copy out, XOR, copy back (the engine before 2026-12-03, night);
//!    - in place (`Ram::xor`);
//!    - in place, the target of the run eight runs ahead prefetched first.
//!
//! Every way runs over pages the others did not touch, so all are cold.
//!
//! Run: `cargo run --release -p benches --example scattered_pages`.

use std::time::{Duration, Instant};

use engine::memory::Ram;

const PAGE: u64 = 4096;
const EPOCH_PAGES: usize = 506;
const RUNS_PER_PAGE: usize = 4;
const EPOCHS: u32 = 200;
/// Operations ahead the prefetch looks (as `StagedEpoch::apply`).
const AHEAD: usize = 8;

fn main() -> anyhow::Result<()> {
    let ram = Ram::new(1 << 30)?;
    let region = ram.regions[0];
    let pages = region.size / PAGE;
    for p in 0..pages {
        region.write(p * PAGE, &[1u8; 8]);
    }
    let mut rng = benches::Rng::new(0xa991_7c05);
    copy(&ram, &mut rng);
    let delta = [0x5au8; 8];
    let mut spent = [Duration::ZERO; 3];
    let mut tmp = Vec::new();
    for _ in 0..EPOCHS {
        for (way, spent) in spent.iter_mut().enumerate() {
            // This way's runs: four per page, at random words.
            let mut gpas = Vec::with_capacity(EPOCH_PAGES * RUNS_PER_PAGE);
            for _ in 0..EPOCH_PAGES {
                let page = rng.below(pages as usize) as u64;
                for _ in 0..RUNS_PER_PAGE {
                    gpas.push(page * PAGE + rng.below(512) as u64 * 8);
                }
            }
            let t = Instant::now();
            match way {
                0 => {
                    for &g in &gpas {
                        let (r, off) = ram.span(g, 8).expect("inside");
                        tmp.resize(8, 0);
                        r.read(off, &mut tmp);
                        checkpoint::delta::xor_in_place(&mut tmp, &delta);
                        r.write(off, &tmp);
                    }
                }
                1 => {
                    for &g in &gpas {
                        ram.xor(g, &delta)?;
                    }
                }
                _ => {
                    for (i, &g) in gpas.iter().enumerate() {
                        if let Some(&ahead) = gpas.get(i + AHEAD) {
                            ram.prefetch(ahead);
                        }
                        ram.xor(g, &delta)?;
                    }
                }
            }
            *spent += t.elapsed();
        }
    }
    let per_page = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(EPOCHS) / EPOCH_PAGES as f64;
    let base = per_page(spent[0]);
    println!("apply of {RUNS_PER_PAGE} XOR runs per page, {EPOCH_PAGES} pages of 1 GiB, {EPOCHS} epochs:");
    for (name, d) in [
        "copy out, XOR, copy back",
        "in place",
        "in place, prefetched",
    ]
    .iter()
    .zip(spent)
    {
        println!(
            "  {name:<26} {:.3} µs per dirty page ({:.2}x)",
            per_page(d),
            per_page(d) / base
        );
    }
    Ok(())
}

/// The pause's copy, plain and prefetched four pages ahead.
fn copy(ram: &Ram, rng: &mut benches::Rng) {
    let region = ram.regions[0];
    let pages = region.size / PAGE;
    let mut spent = [Duration::ZERO; 2];
    let mut buf: Vec<u8> = Vec::with_capacity(EPOCH_PAGES * PAGE as usize);
    for _ in 0..EPOCHS {
        for (way, spent) in spent.iter_mut().enumerate() {
            let mut dirty: Vec<u64> = (0..EPOCH_PAGES)
                .map(|_| rng.below(pages as usize) as u64)
                .collect();
            dirty.sort_unstable();
            buf.clear();
            let t = Instant::now();
            for (i, &p) in dirty.iter().enumerate() {
                if way == 1 {
                    if let Some(&next) = dirty.get(i + 4) {
                        region.prefetch(next * PAGE);
                    }
                }
                let at = (p * PAGE) as usize;
                buf.extend_from_slice(&region.as_slice()[at..at + PAGE as usize]);
            }
            *spent += t.elapsed();
        }
    }
    let per_page = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(EPOCHS) / EPOCH_PAGES as f64;
    println!("copy of {EPOCH_PAGES} scattered pages of 1 GiB, {EPOCHS} epochs:");
    for (name, d) in ["plain", "prefetched"].iter().zip(spent) {
        println!(
            "  {name:<26} {:.3} µs per dirty page ({:.2}x)",
            per_page(d),
            per_page(d) / per_page(spent[0])
        );
    }
}
