//! Dirty bitmaps against a naive model, and the ledger's no-loss rules.

use std::collections::BTreeSet;
use std::ops::Range;

use checkpoint::{DirtyBitmap, DirtyLedger};
use proptest::prelude::*;

/// Naive model: coalesce set bits one by one.
fn model_ranges(bits: &[bool]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, &b) in bits.iter().enumerate() {
        if !b {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.end == i => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

fn bitmap_of(bits: &[bool]) -> DirtyBitmap {
    let mut b = DirtyBitmap::new(bits.len());
    for (i, _) in bits.iter().enumerate().filter(|(_, &x)| x) {
        b.set(i);
    }
    b
}

/// Bits biased towards long runs (so full words and word-crossing runs
/// are common).
fn bits() -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec((any::<bool>(), 1usize..150), 0..12).prop_map(|runs| {
        runs.into_iter()
            .flat_map(|(b, n)| std::iter::repeat_n(b, n))
            .collect()
    })
}

fn set_of(b: &DirtyBitmap) -> BTreeSet<usize> {
    b.ranges().flatten().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ranges_match_the_model(bits in bits()) {
        let b = bitmap_of(&bits);
        prop_assert_eq!(b.ranges().collect::<Vec<_>>(), model_ranges(&bits));
        prop_assert_eq!(b.count(), bits.iter().filter(|&&x| x).count());
        prop_assert_eq!(b.is_empty(), !bits.contains(&true));
        for (i, &x) in bits.iter().enumerate() {
            prop_assert_eq!(b.is_set(i), x);
        }
    }

    #[test]
    fn random_bits_match_the_model(bits in prop::collection::vec(any::<bool>(), 0..300)) {
        let b = bitmap_of(&bits);
        prop_assert_eq!(b.ranges().collect::<Vec<_>>(), model_ranges(&bits));
    }

    #[test]
    fn chunked_ranges_cover_the_same_pages(bits in bits(), max in 0usize..100) {
        let b = bitmap_of(&bits);
        let chunks: Vec<_> = b.ranges_chunked(max).collect();
        let limit = max.max(1);
        for c in &chunks {
            prop_assert!(!c.is_empty() && c.len() <= limit, "{:?} > {}", c, limit);
        }
        for w in chunks.windows(2) {
            prop_assert!(w[0].end <= w[1].start);
        }
        let pages: BTreeSet<usize> = chunks.into_iter().flatten().collect();
        prop_assert_eq!(pages, set_of(&b));
    }

    #[test]
    fn from_words_ignores_bits_beyond_npages(
        words in prop::collection::vec(any::<u64>(), 0..6),
        npages in 0usize..400,
    ) {
        match DirtyBitmap::from_words(words.clone(), npages) {
            Ok(b) => {
                let model: Vec<bool> = (0..npages)
                    .map(|i| words[i / 64] >> (i % 64) & 1 == 1)
                    .collect();
                prop_assert_eq!(b.ranges().collect::<Vec<_>>(), model_ranges(&model));
                prop_assert_eq!(b.words().len(), npages.div_ceil(64));
                prop_assert!(!b.is_set(npages));
            }
            Err(_) => prop_assert!(words.len() < npages.div_ceil(64)),
        }
    }

    #[test]
    fn set_range_matches_set(npages in 1usize..300, a in 0usize..300, b in 0usize..300) {
        let (lo, hi) = (a.min(b).min(npages), a.max(b).min(npages));
        let mut fast = DirtyBitmap::new(npages);
        fast.set_range(lo..hi);
        let mut slow = DirtyBitmap::new(npages);
        for p in lo..hi {
            slow.set(p);
        }
        prop_assert_eq!(fast, slow);
    }

    #[test]
    fn or_assign_is_union(x in bits(), y in bits()) {
        let n = x.len().max(y.len());
        let pad = |v: &[bool]| { let mut v = v.to_vec(); v.resize(n, false); v };
        let (x, y) = (pad(&x), pad(&y));
        let mut a = bitmap_of(&x);
        a.or_assign(&bitmap_of(&y)).unwrap();
        let union: Vec<bool> = x.iter().zip(&y).map(|(p, q)| *p || *q).collect();
        prop_assert_eq!(a, bitmap_of(&union));
    }

    /// Random sequences of harvest / commit / put_back against a model of
    /// the pending set: a harvest always holds fresh ∪ pending, put_back
    /// keeps every bit for the next harvest, commit forgets them.
    #[test]
    fn ledger_never_loses_a_bit(
        steps in prop::collection::vec(
            (prop::collection::vec(0usize..130, 0..10), prop::collection::vec(0usize..70, 0..10), any::<bool>()),
            1..20,
        ),
    ) {
        let sizes = [130usize, 70];
        let mut ledger = DirtyLedger::new(&sizes);
        let mut pending: [BTreeSet<usize>; 2] = Default::default();
        for (fresh0, fresh1, ok) in steps {
            let fresh = [fresh0, fresh1];
            let bitmaps: Vec<_> = sizes
                .iter()
                .zip(&fresh)
                .map(|(&n, pages)| {
                    let mut b = DirtyBitmap::new(n);
                    pages.iter().for_each(|&p| b.set(p));
                    b
                })
                .collect();
            let h = ledger.harvest(bitmaps).unwrap();
            prop_assert_eq!(ledger.pending_count(), 0);
            let mut want_count = 0;
            for r in 0..2 {
                let want: BTreeSet<usize> = pending[r].iter().chain(&fresh[r]).copied().collect();
                prop_assert_eq!(set_of(&h.regions()[r]), want.clone());
                want_count += want.len();
                pending[r] = want;
            }
            prop_assert_eq!(h.count(), want_count);
            if ok {
                ledger.commit(h);
                pending = Default::default();
            } else {
                ledger.put_back(h).unwrap();
                prop_assert_eq!(ledger.pending_count(), want_count);
            }
        }
    }
}

#[test]
fn put_back_then_harvest_contains_the_union() {
    let mut ledger = DirtyLedger::new(&[100]);
    let mut first = DirtyBitmap::new(100);
    first.set_range(10..20);
    let h = ledger.harvest(vec![first]).unwrap();
    assert_eq!(h.count(), 10);
    ledger.put_back(h).unwrap();

    let mut second = DirtyBitmap::new(100);
    second.set_range(15..30);
    let h = ledger.harvest(vec![second]).unwrap();
    assert_eq!(h.regions()[0].ranges().collect::<Vec<_>>(), vec![10..30]);
    ledger.commit(h);

    let h = ledger.harvest(vec![DirtyBitmap::new(100)]).unwrap();
    assert!(h.is_empty(), "committed bits came back: {:?}", h.regions());
    ledger.commit(h);
}

#[test]
fn commit_then_harvest_does_not_contain_committed_bits() {
    let mut ledger = DirtyLedger::new(&[64, 64]);
    let mut a = DirtyBitmap::new(64);
    a.set(5);
    let h = ledger.harvest(vec![a, DirtyBitmap::new(64)]).unwrap();
    ledger.commit(h);
    let mut b = DirtyBitmap::new(64);
    b.set(6);
    let h = ledger.harvest(vec![DirtyBitmap::new(64), b]).unwrap();
    assert!(h.regions()[0].is_empty());
    assert_eq!(h.regions()[1].ranges().collect::<Vec<_>>(), vec![6..7]);
    ledger.commit(h);
}
