//! The XOR-delta cache: the last version of each recently sent page, so a
//! page that changes again can travel as `new ^ old` (mostly zeros, which
//! zstd shrinks to a few dozen bytes) instead of as a whole page.
//!
//! The cache is direct-mapped: page frame `pfn` may live only in slot
//! `pfn % slots`, tagged with its frame number. A contiguous working set no
//! larger than the cache therefore never evicts itself, lookups and inserts
//! are O(1), and memory is bounded by `slots * 4 KiB` plus 8 bytes per slot.
//!
//! Correctness rests on one invariant the owner keeps: **a cached page is
//! byte-for-byte what the receiver holds at that address once it has applied
//! every record encoded so far.** The encoder keeps it by inserting every
//! page it sends as data and dropping every page it sends as zero; whoever
//! owns the encoder must [`clear`](DeltaCache::clear) it whenever the
//! receiver may have missed records (a new connection, a re-sync, records
//! produced by another encoder).

use crate::memcopy;
use crate::pages::PAGE_SIZE;

const EMPTY: u64 = u64::MAX;

/// A bounded, direct-mapped cache of page contents keyed by page frame.
pub struct DeltaCache {
    tags: Vec<u64>,
    pages: Vec<u8>,
}

impl DeltaCache {
    /// A cache of `slots` pages (`slots * 4 KiB` of memory, touched lazily).
    /// `slots` must be at least 1.
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        DeltaCache {
            tags: vec![EMPTY; slots],
            pages: vec![0u8; slots * PAGE_SIZE],
        }
    }

    /// A cache of at most `bytes` of page data (rounded down to whole pages,
    /// at least one).
    pub fn with_bytes(bytes: u64) -> Self {
        Self::new((bytes / PAGE_SIZE as u64) as usize)
    }

    /// Number of page slots.
    pub fn slots(&self) -> usize {
        self.tags.len()
    }

    /// Bytes of page data the cache can hold.
    pub fn capacity_bytes(&self) -> u64 {
        self.pages.len() as u64
    }

    fn slot(&self, pfn: u64) -> usize {
        (pfn % self.tags.len() as u64) as usize
    }

    /// The cached contents of page frame `pfn`, if present.
    pub fn get(&self, pfn: u64) -> Option<&[u8]> {
        let s = self.slot(pfn);
        (self.tags[s] == pfn).then(|| &self.pages[s * PAGE_SIZE..(s + 1) * PAGE_SIZE])
    }

    /// The cached contents of page frame `pfn`, if present, to update in
    /// place (they must then equal what the receiver will hold).
    pub fn get_mut(&mut self, pfn: u64) -> Option<&mut [u8]> {
        let s = self.slot(pfn);
        (self.tags[s] == pfn).then(|| &mut self.pages[s * PAGE_SIZE..(s + 1) * PAGE_SIZE])
    }

    /// Whether page frame `pfn` is cached.
    pub fn contains(&self, pfn: u64) -> bool {
        self.tags[self.slot(pfn)] == pfn
    }

    /// Records `page` (exactly one page) as the contents of `pfn`, evicting
    /// whatever shared its slot.
    pub fn insert(&mut self, pfn: u64, page: &[u8]) {
        debug_assert_eq!(page.len(), PAGE_SIZE);
        let s = self.slot(pfn);
        self.tags[s] = pfn;
        memcopy::copy(&mut self.pages[s * PAGE_SIZE..(s + 1) * PAGE_SIZE], page);
    }

    /// Forgets page frames `first .. first + count` (their contents changed
    /// in a way the cache did not see, e.g. they were sent as zero).
    pub fn invalidate(&mut self, first: u64, count: u64) {
        let slots = self.tags.len() as u64;
        if count >= slots {
            // Cheaper to scan every slot than every frame.
            let end = first.saturating_add(count);
            for t in self.tags.iter_mut() {
                if *t != EMPTY && *t >= first && *t < end {
                    *t = EMPTY;
                }
            }
            return;
        }
        for pfn in first..first + count {
            let s = (pfn % slots) as usize;
            if self.tags[s] == pfn {
                self.tags[s] = EMPTY;
            }
        }
    }

    /// Forgets everything (the receiver may not hold what was sent).
    pub fn clear(&mut self) {
        self.tags.fill(EMPTY);
    }
}

/// `out = a ^ b`, byte for byte (8 bytes at a time). All three have the same
/// length.
pub fn xor_into(out: &mut [u8], a: &[u8], b: &[u8]) {
    debug_assert!(out.len() == a.len() && a.len() == b.len());
    let mut o = out.chunks_exact_mut(8);
    let mut x = a.chunks_exact(8);
    let mut y = b.chunks_exact(8);
    for ((o, x), y) in o.by_ref().zip(x.by_ref()).zip(y.by_ref()) {
        let v = u64::from_ne_bytes(x.try_into().unwrap_or_default())
            ^ u64::from_ne_bytes(y.try_into().unwrap_or_default());
        o.copy_from_slice(&v.to_ne_bytes());
    }
    for ((o, x), y) in o
        .into_remainder()
        .iter_mut()
        .zip(x.remainder())
        .zip(y.remainder())
    {
        *o = x ^ y;
    }
}

/// `dst ^= delta`, byte for byte. Both have the same length.
pub fn xor_in_place(dst: &mut [u8], delta: &[u8]) {
    debug_assert_eq!(dst.len(), delta.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut x = delta.chunks_exact(8);
    for (d, x) in d.by_ref().zip(x.by_ref()) {
        let v = u64::from_ne_bytes((&*d).try_into().unwrap_or_default())
            ^ u64::from_ne_bytes(x.try_into().unwrap_or_default());
        d.copy_from_slice(&v.to_ne_bytes());
    }
    for (d, x) in d.into_remainder().iter_mut().zip(x.remainder()) {
        *d ^= x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE_SIZE]
    }

    #[test]
    fn insert_get_and_evict_by_slot() {
        let mut c = DeltaCache::new(4);
        assert!(c.get(1).is_none());
        c.insert(1, &page(7));
        assert_eq!(c.get(1).unwrap(), &page(7)[..]);
        // 5 maps to the same slot as 1 and evicts it.
        c.insert(5, &page(9));
        assert!(c.get(1).is_none());
        assert_eq!(c.get(5).unwrap(), &page(9)[..]);
        // A neighbour in another slot is unaffected.
        c.insert(2, &page(3));
        assert_eq!(c.get(5).unwrap(), &page(9)[..]);
        assert_eq!(c.get(2).unwrap(), &page(3)[..]);
    }

    #[test]
    fn invalidate_small_and_large_ranges() {
        let mut c = DeltaCache::new(8);
        for pfn in 0..8 {
            c.insert(pfn + 100, &page(pfn as u8));
        }
        c.invalidate(101, 2);
        assert!(c.contains(100) && !c.contains(101) && !c.contains(102) && c.contains(103));
        // A range longer than the cache takes the scan path.
        c.invalidate(0, 105);
        assert!((100..105).all(|p| !c.contains(p)));
        assert!((105..108).all(|p| c.contains(p)));
        c.clear();
        assert!((100..108).all(|p| !c.contains(p)));
    }

    #[test]
    fn xor_round_trips_including_odd_lengths() {
        let a: Vec<u8> = (0..4099u32).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..4099u32).map(|i| (i * 13 + 1) as u8).collect();
        let mut d = vec![0u8; a.len()];
        xor_into(&mut d, &a, &b);
        assert!(d
            .iter()
            .zip(a.iter().zip(&b))
            .all(|(d, (a, b))| *d == a ^ b));
        let mut back = b.clone();
        xor_in_place(&mut back, &d);
        assert_eq!(back, a);
    }
}
