//! XOR-delta encoding: a receiver that applies every record in order always
//! ends up with exactly the sender's pages, whatever the mix of rewrites,
//! zeroings and cache evictions; sparse rewrites shrink at least tenfold;
//! readers without base pages refuse deltas with a clear error.

use checkpoint::delta::{xor_in_place, DeltaCache};
use checkpoint::pages::{decode_records_with_deltas, decode_records_zero_aware};
use checkpoint::{decode_records, CheckpointError, Compression, MemoryEncoder, PAGE_SIZE};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// A receiver's memory: applies records the way the standby does.
fn apply(mem: &mut [u8], payload: &[u8]) -> checkpoint::Result<()> {
    let cell = std::cell::RefCell::new(mem);
    decode_records_with_deltas(
        payload,
        |gpa, b| {
            let g = gpa as usize;
            cell.borrow_mut()[g..g + b.len()].copy_from_slice(b);
            Ok(())
        },
        |gpa, len| {
            let g = gpa as usize;
            cell.borrow_mut()[g..g + len as usize].fill(0);
            Ok(())
        },
        |gpa, d| {
            let g = gpa as usize;
            xor_in_place(&mut cell.borrow_mut()[g..g + d.len()], d);
            Ok(())
        },
    )
}

fn encoder(cache_pages: usize) -> MemoryEncoder {
    let mut e = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
    e.set_delta_cache(Some(DeltaCache::new(cache_pages)));
    e
}

fn batching_encoder(cache_pages: usize) -> MemoryEncoder {
    let mut e = encoder(cache_pages);
    e.set_batching(true);
    e
}

/// One epoch's change to page `p` of the sender's memory.
#[derive(Clone, Debug)]
enum Change {
    /// A few words rewritten.
    Sparse(usize, u64),
    /// The whole page rewritten with random bytes.
    Random(usize, u64),
    /// The page cleared.
    Zero(usize),
}

fn change(pages: usize) -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..pages, any::<u64>()).prop_map(|(p, s)| Change::Sparse(p, s)),
        2 => (0..pages, any::<u64>()).prop_map(|(p, s)| Change::Random(p, s)),
        1 => (0..pages).prop_map(Change::Zero),
    ]
}

fn mutate(mem: &mut [u8], c: &Change) -> usize {
    match *c {
        Change::Sparse(p, seed) => {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..4 {
                let off = p * PAGE_SIZE + r.gen_range(0..PAGE_SIZE / 8) * 8;
                mem[off..off + 8].copy_from_slice(&r.gen::<u64>().to_le_bytes());
            }
            p
        }
        Change::Random(p, seed) => {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            r.fill(&mut mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
            p
        }
        Change::Zero(p) => {
            mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].fill(0);
            p
        }
    }
}

/// Encodes the dirty pages as runs of consecutive pages, like a capture.
fn encode_dirty(enc: &mut MemoryEncoder, mem: &[u8], dirty: &mut [usize]) -> Vec<u8> {
    dirty.sort_unstable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < dirty.len() {
        let start = dirty[i];
        let mut end = start + 1;
        while i + 1 < dirty.len() && dirty[i + 1] <= end {
            end = end.max(dirty[i + 1] + 1);
            i += 1;
        }
        enc.encode_run(
            (start * PAGE_SIZE) as u64,
            &mem[start * PAGE_SIZE..end * PAGE_SIZE],
            &mut out,
        )
        .unwrap();
        i += 1;
    }
    enc.flush(&mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Epoch after epoch of mixed changes, with a cache small enough to
    /// evict, the receiver matches the sender after every epoch.
    #[test]
    fn receiver_always_matches_sender(
        epochs in prop::collection::vec(prop::collection::vec(change(24), 1..12), 1..10),
        cache_pages in 1usize..32,
        batching in any::<bool>(),
    ) {
        let pages = 24;
        let mut sender = vec![0u8; pages * PAGE_SIZE];
        let mut receiver = vec![0u8; pages * PAGE_SIZE];
        // Start from a populated memory, sent whole: sparse contents, so a
        // delta against a stale version of a page can still look cheap.
        for p in 0..pages {
            mutate(&mut sender, &Change::Sparse(p, p as u64));
        }
        let mut enc = if batching { batching_encoder(cache_pages) } else { encoder(cache_pages) };
        let mut all: Vec<usize> = (0..pages).collect();
        apply(&mut receiver, &encode_dirty(&mut enc, &sender, &mut all)).unwrap();
        prop_assert!(receiver == sender);
        for epoch in &epochs {
            let mut dirty: Vec<usize> = epoch.iter().map(|c| mutate(&mut sender, c)).collect();
            dirty.dedup();
            let payload = encode_dirty(&mut enc, &sender, &mut dirty);
            apply(&mut receiver, &payload).unwrap();
            prop_assert!(receiver == sender, "receiver diverged");
        }
    }
}

#[test]
fn sparse_rewrites_cost_under_a_tenth_and_random_ones_stay_raw() {
    let pages = 512;
    let mut mem = vec![0u8; pages * PAGE_SIZE];
    // Text-like contents: compressible but not trivially so.
    let words = ["hot", "spare", "epoch", "shadow", "page", "commit", "kvm"];
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    for b in mem.chunks_mut(8) {
        let w = words[r.gen_range(0..words.len())].as_bytes();
        let n = w.len().min(b.len());
        b[..n].copy_from_slice(&w[..n]);
    }
    let mut receiver = vec![0u8; mem.len()];
    let mut enc = encoder(pages);
    let mut all: Vec<usize> = (0..pages).collect();
    apply(&mut receiver, &encode_dirty(&mut enc, &mem, &mut all)).unwrap();
    enc.take_stats();

    // Sparse: 4 words per page.
    let mut dirty: Vec<usize> = (0..pages)
        .map(|p| mutate(&mut mem, &Change::Sparse(p, p as u64)))
        .collect();
    let out = encode_dirty(&mut enc, &mem, &mut dirty);
    let s = enc.take_stats();
    assert_eq!(
        s.delta_pages, pages as u64,
        "every page should go as a delta"
    );
    assert!(s.ratio() <= 0.1, "sparse ratio {} above 1/10", s.ratio());
    apply(&mut receiver, &out).unwrap();
    assert!(receiver == mem);

    // Random rewrites: deltas do not pay, the pages go raw at about 1x.
    let mut dirty: Vec<usize> = (0..pages)
        .map(|p| mutate(&mut mem, &Change::Random(p, 1000 + p as u64)))
        .collect();
    let out = encode_dirty(&mut enc, &mem, &mut dirty);
    let s = enc.take_stats();
    assert_eq!(s.delta_pages, 0);
    assert!(s.ratio() <= 1.01, "random ratio {} above 1.01", s.ratio());
    apply(&mut receiver, &out).unwrap();
    assert!(receiver == mem);
}

#[test]
fn readers_without_base_pages_refuse_deltas() {
    let mut mem = vec![0u8; 4 * PAGE_SIZE];
    rand::rngs::StdRng::seed_from_u64(3).fill(&mut mem[..]);
    let mut enc = encoder(4);
    enc.encode_run(0, &mem, &mut Vec::new()).unwrap();
    mem[100] ^= 1;
    let mut out = Vec::new();
    enc.encode_run(0, &mem, &mut out).unwrap();
    assert_eq!(enc.stats().delta_pages, 4);
    for e in [
        decode_records(&out, |_, _| Ok(())).unwrap_err(),
        decode_records_zero_aware(&out, |_, _| Ok(()), |_, _| Ok(())).unwrap_err(),
    ] {
        match e {
            CheckpointError::BadRecord { offset, reason } => {
                assert_eq!(offset, 0);
                assert!(reason.contains("XorZstd"), "{reason}");
            }
            other => panic!("unexpected error {other}"),
        }
    }
}

#[test]
fn reset_forgets_every_page() {
    let mut mem = vec![0u8; 2 * PAGE_SIZE];
    rand::rngs::StdRng::seed_from_u64(4).fill(&mut mem[..]);
    let mut enc = encoder(8);
    enc.encode_run(0, &mem, &mut Vec::new()).unwrap();
    enc.reset_delta();
    mem[0] ^= 1;
    enc.take_stats();
    let mut out = Vec::new();
    enc.encode_run(0, &mem, &mut out).unwrap();
    assert_eq!(enc.stats().delta_pages, 0);
    // And a plain reader takes it: no delta record in it.
    decode_records(&out, |_, _| Ok(())).unwrap();
}

#[test]
fn without_compression_no_deltas_are_made() {
    let mut mem = vec![0u8; 2 * PAGE_SIZE];
    rand::rngs::StdRng::seed_from_u64(5).fill(&mut mem[..]);
    let mut enc = MemoryEncoder::new(Compression::None).unwrap();
    enc.set_delta_cache(Some(DeltaCache::new(8)));
    enc.encode_run(0, &mem, &mut Vec::new()).unwrap();
    mem[0] ^= 1;
    let mut out = Vec::new();
    enc.encode_run(0, &mem, &mut out).unwrap();
    assert_eq!(enc.stats().delta_pages, 0);
    decode_records(&out, |_, _| Ok(())).unwrap();
}

#[test]
fn incompressible_pages_elsewhere_do_not_stop_deltas() {
    let cached = 64;
    let mut mem = vec![0u8; cached * PAGE_SIZE];
    for p in 0..cached {
        mutate(&mut mem, &Change::Sparse(p, p as u64));
    }
    let mut enc = encoder(4096);
    enc.encode_run(0, &mem, &mut Vec::new()).unwrap();
    // Fresh random pages far away (and in other cache slots): zstd fails
    // on every record, so the plain-compression skip kicks in.
    let mut noise = vec![0u8; 256 * PAGE_SIZE];
    for i in 0..8u64 {
        rand::rngs::StdRng::seed_from_u64(100 + i).fill(&mut noise[..]);
        enc.encode_run((1 << 30) + (i + 1) * (1 << 20), &noise, &mut Vec::new())
            .unwrap();
    }
    assert!(
        enc.stats().skipped_records > 0,
        "the plain skip should be on"
    );
    enc.take_stats();
    let mut dirty: Vec<usize> = (0..cached)
        .map(|p| mutate(&mut mem, &Change::Sparse(p, 500 + p as u64)))
        .collect();
    encode_dirty(&mut enc, &mem, &mut dirty);
    assert_eq!(enc.stats().delta_pages, cached as u64);
}

#[test]
fn scattered_pages_batch_into_few_records_and_stay_within_targets() {
    let pages = 2048;
    let mut mem = vec![0u8; pages * PAGE_SIZE];
    for p in 0..pages {
        rand::rngs::StdRng::seed_from_u64(p as u64)
            .fill(&mut mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE]);
    }
    let mut receiver = vec![0u8; mem.len()];
    let mut enc = batching_encoder(pages);
    let mut all: Vec<usize> = (0..pages).collect();
    apply(&mut receiver, &encode_dirty(&mut enc, &mem, &mut all)).unwrap();
    enc.take_stats();
    // Every 4th page, sparse rewrites: scattered single-page runs.
    let mut dirty: Vec<usize> = (0..pages)
        .step_by(4)
        .map(|p| mutate(&mut mem, &Change::Sparse(p, 7 + p as u64)))
        .collect();
    let out = encode_dirty(&mut enc, &mem, &mut dirty);
    let s = enc.take_stats();
    assert_eq!(s.delta_pages, (pages / 4) as u64);
    assert!(
        s.records <= 2,
        "{} records for 512 scattered pages",
        s.records
    );
    assert!(s.ratio() <= 0.1, "sparse batched ratio {}", s.ratio());
    apply(&mut receiver, &out).unwrap();
    assert!(receiver == mem);
    // Scattered random rewrites stay raw, about 1x.
    let mut dirty: Vec<usize> = (0..pages)
        .step_by(4)
        .map(|p| mutate(&mut mem, &Change::Random(p, 99 + p as u64)))
        .collect();
    let out = encode_dirty(&mut enc, &mem, &mut dirty);
    let s = enc.take_stats();
    assert_eq!(s.delta_pages, 0);
    assert!(s.ratio() <= 1.01, "random batched ratio {}", s.ratio());
    apply(&mut receiver, &out).unwrap();
    assert!(receiver == mem);
    // Plain readers refuse the record of deltas (XorRuns).
    let mut dirty = vec![0usize];
    mutate(&mut mem, &Change::Sparse(0, 1));
    let out = encode_dirty(&mut enc, &mem, &mut dirty);
    let e = decode_records(&out, |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("XOR delta"), "{e}");
}
