//! Dirty-page bitmaps and the ledger that keeps them from losing bits.
//!
//! [`DirtyBitmap`] has the layout of `KVM_GET_DIRTY_LOG`: `u64` words, bit
//! `i` (LSB first) = page `i` of one memory region.
//!
//! [`DirtyLedger`] holds the bits that still have to reach a durable
//! checkpoint. The cycle is:
//!
//! 1. [`DirtyLedger::harvest`] ORs the freshly fetched bitmaps (KVM's dirty
//!    log plus the VMM's own writes) into whatever was put back earlier and
//!    hands the union out as a [`Harvest`]; the ledger is then empty.
//! 2. The engine captures those pages.
//! 3. If the capture became durable: [`DirtyLedger::commit`]. Otherwise
//!    (error, abort, shadow unreachable): [`DirtyLedger::put_back`], and the
//!    next harvest includes the bits again.
//!
//! A `Harvest` is `#[must_use]` and can only be consumed by `commit` or
//! `put_back`; dropping one on the floor is the only way to lose bits, and
//! the engine must never do that.

use std::ops::Range;

use crate::error::{CheckpointError, Result};

const BITS: usize = 64;

/// Dirty bits of one memory region, one bit per page.
///
/// Invariant: bits at positions `>= npages` are always zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    npages: usize,
}

impl DirtyBitmap {
    /// An all-clear bitmap for `npages` pages.
    pub fn new(npages: usize) -> Self {
        DirtyBitmap {
            words: vec![0; npages.div_ceil(BITS)],
            npages,
        }
    }

    /// Wraps a KVM-style word array. Extra words and bits beyond `npages`
    /// are ignored (cleared); too few words is an error.
    pub fn from_words(mut words: Vec<u64>, npages: usize) -> Result<Self> {
        let need = npages.div_ceil(BITS);
        if words.len() < need {
            return Err(CheckpointError::BitmapMismatch {
                what: format!("words for {npages} pages"),
                expected: need,
                got: words.len(),
            });
        }
        words.truncate(need);
        let tail = npages % BITS;
        if tail != 0 {
            if let Some(last) = words.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
        Ok(DirtyBitmap { words, npages })
    }

    /// Number of pages covered.
    pub fn npages(&self) -> usize {
        self.npages
    }

    /// The words (KVM layout).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Gives back the words.
    pub fn into_words(self) -> Vec<u64> {
        self.words
    }

    /// Marks `page` dirty.
    ///
    /// # Panics
    /// If `page >= npages()` (a page outside the region is a caller bug).
    #[track_caller]
    pub fn set(&mut self, page: usize) {
        assert!(
            page < self.npages,
            "dirty page {page} out of range for a region of {} pages",
            self.npages
        );
        self.words[page / BITS] |= 1 << (page % BITS);
    }

    /// Marks every page of `pages` dirty.
    ///
    /// # Panics
    /// If `pages.end > npages()`.
    #[track_caller]
    pub fn set_range(&mut self, pages: Range<usize>) {
        assert!(
            pages.end <= self.npages,
            "dirty pages {pages:?} out of range for a region of {} pages",
            self.npages
        );
        let mut p = pages.start;
        while p < pages.end {
            let bit = p % BITS;
            let n = (pages.end - p).min(BITS - bit);
            let mask = if n == BITS {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.words[p / BITS] |= mask;
            p += n;
        }
    }

    /// Whether `page` is dirty (`false` for pages out of range).
    pub fn is_set(&self, page: usize) -> bool {
        page < self.npages && self.words[page / BITS] & (1 << (page % BITS)) != 0
    }

    /// Number of dirty pages.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether no page is dirty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.fill(0);
    }

    /// `self |= other`. Both must cover the same number of pages.
    pub fn or_assign(&mut self, other: &DirtyBitmap) -> Result<()> {
        if other.npages != self.npages {
            return Err(CheckpointError::BitmapMismatch {
                what: "pages".into(),
                expected: self.npages,
                got: other.npages,
            });
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        Ok(())
    }

    /// Maximal ranges of consecutive dirty pages, in ascending order.
    /// Skips clear words without looking at their bits.
    pub fn ranges(&self) -> Ranges<'_> {
        Ranges {
            words: &self.words,
            idx: 0,
            cur: self.words.first().copied().unwrap_or(0),
        }
    }

    /// Like [`ranges`](Self::ranges) but splits ranges so none is longer
    /// than `max_pages` (treated as 1 if 0).
    pub fn ranges_chunked(&self, max_pages: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let max = max_pages.max(1);
        self.ranges().flat_map(move |r| {
            (r.start..r.end)
                .step_by(max)
                .map(move |s| s..(s + max).min(r.end))
        })
    }
}

/// Iterator over dirty page ranges; see [`DirtyBitmap::ranges`].
pub struct Ranges<'a> {
    words: &'a [u64],
    /// Index of the word `cur` came from.
    idx: usize,
    /// Bits of `words[idx]` not yet reported.
    cur: u64,
}

impl Iterator for Ranges<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        while self.cur == 0 {
            self.idx += 1;
            self.cur = *self.words.get(self.idx)?;
        }
        let bit = self.cur.trailing_zeros() as usize;
        let start = self.idx * BITS + bit;
        // Set bits from `bit` upwards in this word: find the first clear one.
        let run = (!(self.cur >> bit)).trailing_zeros() as usize;
        if bit + run < BITS {
            let end_bit = bit + run;
            self.cur &= !((1u64 << end_bit) - 1);
            return Some(start..self.idx * BITS + end_bit);
        }
        // The run reaches the top of this word: continue through full words.
        loop {
            self.idx += 1;
            match self.words.get(self.idx) {
                None => {
                    self.cur = 0;
                    return Some(start..self.idx * BITS);
                }
                Some(&u64::MAX) => {}
                Some(&w) => {
                    let end_bit = (!w).trailing_zeros() as usize;
                    // end_bit < 64 because w != u64::MAX.
                    self.cur = w & !((1u64 << end_bit) - 1);
                    return Some(start..self.idx * BITS + end_bit);
                }
            }
        }
    }
}

/// The dirty bits taken out of a [`DirtyLedger`] for one capture.
///
/// Must be handed back with [`DirtyLedger::commit`] (capture durable) or
/// [`DirtyLedger::put_back`] (capture failed); dropping it loses the bits.
#[must_use = "a Harvest must be passed to DirtyLedger::commit or DirtyLedger::put_back, \
              or its dirty bits are lost"]
#[derive(Debug)]
pub struct Harvest {
    regions: Vec<DirtyBitmap>,
}

impl Harvest {
    /// One bitmap per memory region, in ledger order.
    pub fn regions(&self) -> &[DirtyBitmap] {
        &self.regions
    }

    /// Total dirty pages over all regions.
    pub fn count(&self) -> usize {
        self.regions.iter().map(DirtyBitmap::count).sum()
    }

    /// Whether no page is dirty.
    pub fn is_empty(&self) -> bool {
        self.regions.iter().all(DirtyBitmap::is_empty)
    }
}

/// Pending dirty bits per memory region; see the module docs for the cycle.
#[derive(Debug)]
pub struct DirtyLedger {
    pending: Vec<DirtyBitmap>,
}

impl DirtyLedger {
    /// A ledger for regions of the given page counts, nothing pending.
    pub fn new(npages_per_region: &[usize]) -> Self {
        DirtyLedger {
            pending: npages_per_region
                .iter()
                .map(|&n| DirtyBitmap::new(n))
                .collect(),
        }
    }

    /// Number of regions.
    pub fn regions(&self) -> usize {
        self.pending.len()
    }

    /// Dirty pages pending (put back and not yet harvested again).
    pub fn pending_count(&self) -> usize {
        self.pending.iter().map(DirtyBitmap::count).sum()
    }

    fn check_shape(&self, bitmaps: &[DirtyBitmap]) -> Result<()> {
        if bitmaps.len() != self.pending.len() {
            return Err(CheckpointError::BitmapMismatch {
                what: "regions".into(),
                expected: self.pending.len(),
                got: bitmaps.len(),
            });
        }
        for (i, (p, b)) in self.pending.iter().zip(bitmaps).enumerate() {
            if p.npages != b.npages {
                return Err(CheckpointError::BitmapMismatch {
                    what: format!("pages in region {i}"),
                    expected: p.npages,
                    got: b.npages,
                });
            }
        }
        Ok(())
    }

    /// ORs `fresh` (one bitmap per region) with the pending bits and returns
    /// the union; pending becomes empty.
    ///
    /// On a shape mismatch nothing is changed and an error is returned.
    pub fn harvest(&mut self, mut fresh: Vec<DirtyBitmap>) -> Result<Harvest> {
        self.check_shape(&fresh)?;
        for (f, p) in fresh.iter_mut().zip(&mut self.pending) {
            for (a, b) in f.words.iter_mut().zip(&p.words) {
                *a |= b;
            }
            p.clear();
        }
        Ok(Harvest { regions: fresh })
    }

    /// The capture of `harvest` is durable: its bits are done with.
    pub fn commit(&mut self, harvest: Harvest) {
        drop(harvest);
    }

    /// The capture of `harvest` failed: its bits go back into pending so the
    /// next harvest includes them.
    ///
    /// Only fails for a harvest whose shape does not match this ledger (a
    /// harvest from another ledger); nothing is changed then.
    pub fn put_back(&mut self, harvest: Harvest) -> Result<()> {
        self.check_shape(&harvest.regions)?;
        for (p, h) in self.pending.iter_mut().zip(&harvest.regions) {
            for (a, b) in p.words.iter_mut().zip(&h.words) {
                *a |= b;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(b: &DirtyBitmap) -> Vec<Range<usize>> {
        b.ranges().collect()
    }

    #[test]
    fn ranges_cross_word_boundaries() {
        let mut b = DirtyBitmap::new(200);
        b.set_range(60..130);
        b.set(0);
        b.set(199);
        assert_eq!(ranges(&b), vec![0..1, 60..130, 199..200]);
        assert_eq!(b.count(), 72);
        b.set_range(0..200);
        assert_eq!(ranges(&b), vec![0..200]);
        assert_eq!(
            b.ranges_chunked(64).collect::<Vec<_>>(),
            vec![0..64, 64..128, 128..192, 192..200]
        );
    }

    #[test]
    fn full_words_at_the_end() {
        let mut b = DirtyBitmap::new(128);
        b.set_range(1..128);
        assert_eq!(ranges(&b), vec![1..128]);
        assert!(ranges(&DirtyBitmap::new(0)).is_empty());
        assert!(ranges(&DirtyBitmap::new(1000)).is_empty());
    }

    #[test]
    fn from_words_masks_and_checks_length() {
        let b = DirtyBitmap::from_words(vec![u64::MAX, u64::MAX, 7], 70).unwrap();
        assert_eq!(b.words(), &[u64::MAX, 0x3f]);
        assert_eq!(b.count(), 70);
        assert!(!b.is_set(70));
        assert_eq!(ranges(&b), vec![0..70]);
        let e = DirtyBitmap::from_words(vec![0], 65).unwrap_err();
        assert!(e.to_string().contains("expected 2, got 1"), "{e}");
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn set_out_of_range_panics() {
        DirtyBitmap::new(10).set(10);
    }

    #[test]
    fn or_and_clear() {
        let mut a = DirtyBitmap::new(100);
        let mut b = DirtyBitmap::new(100);
        a.set(3);
        b.set(99);
        a.or_assign(&b).unwrap();
        assert!(a.is_set(3) && a.is_set(99) && a.count() == 2);
        assert!(a.or_assign(&DirtyBitmap::new(101)).is_err());
        a.clear();
        assert!(a.is_empty());
    }

    #[test]
    fn ledger_shape_errors_change_nothing() {
        let mut l = DirtyLedger::new(&[10, 20]);
        let mut one = DirtyBitmap::new(10);
        one.set(1);
        assert!(l.harvest(vec![one.clone()]).is_err());
        assert!(l.harvest(vec![one.clone(), DirtyBitmap::new(21)]).is_err());
        let h = l.harvest(vec![one, DirtyBitmap::new(20)]).unwrap();
        assert_eq!(h.count(), 1);
        let other = DirtyLedger::new(&[10])
            .harvest(vec![DirtyBitmap::new(10)])
            .unwrap();
        assert!(l.put_back(other).is_err());
        l.put_back(h).unwrap();
        assert_eq!(l.pending_count(), 1);
    }
}
