//! The console output a shadow keeps for a takeover (`docs/failover.md`).
//!
//! Every committed epoch brings the console bytes the guest wrote in it
//! and the position up to which the primary had released output. The
//! shadow keeps the committed bytes after that position: after a takeover
//! it re-emits them, because the primary may have died between the commit
//! and its release. Bounded like the frames of `netout.rs`. No sockets:
//! fed by the standby's commit, tested in memory.

/// Most bytes kept. A primary releases a commit's output as soon as it
/// reads the ack, so more means a primary that never reports releasing:
/// the oldest are dropped (and said).
pub const MAX_KEPT_BYTES: usize = 16 << 20;

/// Committed console output the primary may not have released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommittedOutput {
    /// The console position of the first kept byte.
    base: u64,
    bytes: Vec<u8>,
}

impl CommittedOutput {
    /// The console position after the last kept byte.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.bytes.len() as u64)
    }

    /// Adds a committed epoch's output, which starts at `start` (checked
    /// with `bounds::check_output` before the ack), and drops what the
    /// primary says it released up to `released`. `full` for a new sync:
    /// output before it was released by the primary while unprotected.
    /// Returns how many of the oldest bytes were dropped past
    /// [`MAX_KEPT_BYTES`] (0 with a primary that releases).
    pub fn commit(&mut self, full: bool, start: u64, output: &[u8], released: u64) -> usize {
        if full || self.end() != start {
            // A new sync (or the first epoch, or a gap): nothing older is owed.
            self.base = start;
            self.bytes.clear();
        }
        self.bytes.extend_from_slice(output);
        let gone = released
            .saturating_sub(self.base)
            .min(self.bytes.len() as u64) as usize;
        let over = (self.bytes.len() - gone).saturating_sub(MAX_KEPT_BYTES);
        self.bytes.drain(..gone + over);
        self.base = self.base.saturating_add((gone + over) as u64);
        over
    }

    /// Takes the kept output: (position of its first byte, bytes).
    pub fn take(&mut self) -> (u64, Vec<u8>) {
        let base = self.base;
        (base, std::mem::take(&mut self.bytes))
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_kept_until_the_primary_says_it_released_it() {
        let mut c = CommittedOutput::default();
        assert_eq!(c.commit(true, 100, b"abc", 100), 0);
        assert_eq!((c.end(), c.len()), (103, 3));
        // The next epoch comes after the primary released the first.
        c.commit(false, 103, b"de", 103);
        assert_eq!(c.take(), (103, b"de".to_vec()));
        assert!(c.is_empty());
    }

    #[test]
    fn a_gap_or_a_full_sync_forgets_what_came_before() {
        let mut c = CommittedOutput::default();
        c.commit(true, 0, b"abc", 0);
        // Bytes 3..9 were released unprotected (a resync): nothing is owed.
        c.commit(false, 9, b"x", 3);
        assert_eq!(c.clone().take(), (9, b"x".to_vec()));
        c.commit(true, 10, b"y", 0);
        assert_eq!(c.take(), (10, b"y".to_vec()));
        // A primary claiming to have released more than it produced.
        let mut c = CommittedOutput::default();
        c.commit(true, 5, b"ab", u64::MAX);
        assert_eq!(c.take(), (7, Vec::new()));
    }

    #[test]
    fn a_primary_that_never_releases_cannot_grow_the_shadow_without_bound() {
        let mut c = CommittedOutput::default();
        let chunk = vec![b'z'; 1 << 20];
        let mut at = 0u64;
        let mut dropped = 0;
        for i in 0..(MAX_KEPT_BYTES / chunk.len() + 5) {
            dropped += c.commit(i == 0, at, &chunk, 0);
            at += chunk.len() as u64;
        }
        assert_eq!(c.len(), MAX_KEPT_BYTES);
        assert_eq!(dropped, 5 << 20);
        // The kept bytes still end where the console is.
        assert_eq!(c.end(), at);
    }
}
