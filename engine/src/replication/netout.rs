//! The frames a shadow keeps for a takeover (`docs/network.md`).
//!
//! Every committed epoch brings, per NIC, the frames the guest transmitted
//! in it and the frame number up to which the primary had sent frames. The
//! shadow keeps the committed frames the primary may not have sent yet:
//! after a takeover it sends them before the guest runs on, because the
//! primary may have died between the commit and its release. No sockets,
//! no clocks: fed by the standby's commit, tested in memory.

use std::collections::VecDeque;

use super::wire::NetOutput;

/// Most bytes kept per NIC. A primary releases a commit's frames as soon as
/// it reads the ack, and its own gate holds at most 4 MiB, so more means a
/// primary that never reports releasing: the oldest are dropped (and said).
pub const MAX_KEPT_BYTES: usize = 16 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Nic {
    /// The number of the first kept frame.
    base: u64,
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Nic {
    fn end(&self) -> u64 {
        self.base.saturating_add(self.frames.len() as u64)
    }

    fn drop_front(&mut self, n: usize) {
        for f in self.frames.drain(..n) {
            self.bytes -= f.len();
        }
        self.base = self.base.saturating_add(n as u64);
    }
}

/// Committed, possibly unsent frames of every NIC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommittedFrames {
    nics: Vec<Nic>,
}

impl CommittedFrames {
    /// Adds a committed epoch: `full` for a new sync (everything before it
    /// was sent by the primary unprotected), its frames, and the primary's
    /// released positions. Returns the frame numbers at which each NIC's
    /// frames end, to check against the device records.
    pub fn commit(&mut self, full: bool, out: &[NetOutput], released: &[u64]) -> Vec<u64> {
        if self.nics.len() < out.len() {
            self.nics.resize(out.len(), Nic::default());
        }
        let mut ends = Vec::with_capacity(out.len());
        for (i, o) in out.iter().enumerate() {
            let nic = &mut self.nics[i];
            if full || nic.end() != o.start {
                // A new sync, or frames before this epoch that the primary
                // sent unprotected: nothing older is owed.
                *nic = Nic {
                    base: o.start,
                    ..Nic::default()
                };
            }
            for f in &o.frames {
                nic.bytes += f.len();
                nic.frames.push_back(f.clone());
            }
            let rel = released.get(i).copied().unwrap_or(0);
            let n = rel.saturating_sub(nic.base).min(nic.frames.len() as u64) as usize;
            nic.drop_front(n);
            let (mut over, mut bytes) = (0, nic.bytes);
            while bytes > MAX_KEPT_BYTES && over < nic.frames.len() {
                bytes -= nic.frames[over].len();
                over += 1;
            }
            nic.drop_front(over);
            if over > 0 {
                tracing::warn!(
                    "NIC {i}: the primary reports no release for more than {MAX_KEPT_BYTES} bytes of committed frames; the {over} oldest are no longer kept for a takeover"
                );
            }
            ends.push(nic.end());
        }
        ends
    }

    /// Forgets everything (a resync whose epochs carry no NICs).
    pub fn clear(&mut self) {
        self.nics.clear();
    }

    /// The frames a takeover sends, per NIC, in order.
    pub fn take(&mut self) -> Vec<Vec<Vec<u8>>> {
        std::mem::take(&mut self.nics)
            .into_iter()
            .map(|n| n.frames.into())
            .collect()
    }

    /// Kept frames per NIC.
    pub fn kept(&self) -> Vec<usize> {
        self.nics.iter().map(|n| n.frames.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(start: u64, tags: &[u8]) -> NetOutput {
        NetOutput {
            start,
            frames: tags.iter().map(|&t| vec![t; 60]).collect(),
        }
    }

    #[test]
    fn frames_are_kept_until_the_primary_says_it_sent_them() {
        let mut c = CommittedFrames::default();
        assert_eq!(c.commit(true, &[out(5, &[1, 2])], &[5]), vec![7]);
        assert_eq!(c.kept(), vec![2]);
        // Epoch 2 arrives after the primary sent epoch 1's frames.
        assert_eq!(c.commit(false, &[out(7, &[3])], &[7]), vec![8]);
        assert_eq!(c.kept(), vec![1]);
        let t = c.take();
        assert_eq!(t, vec![vec![vec![3u8; 60]]]);
        assert_eq!(c.kept(), Vec::<usize>::new());
    }

    #[test]
    fn a_gap_or_a_full_sync_forgets_what_came_before() {
        let mut c = CommittedFrames::default();
        c.commit(true, &[out(0, &[1, 2, 3])], &[0]);
        // Frames 3..9 were sent unprotected (a resync): nothing is owed.
        assert_eq!(c.commit(false, &[out(9, &[4])], &[3]), vec![10]);
        assert_eq!(c.take(), vec![vec![vec![4u8; 60]]]);
        c.commit(false, &[out(10, &[5])], &[10]);
        assert_eq!(c.commit(true, &[out(10, &[6])], &[10]), vec![11]);
        assert_eq!(c.take(), vec![vec![vec![6u8; 60]]]);
    }

    #[test]
    fn nics_are_independent_and_releases_beyond_the_end_are_clamped() {
        let mut c = CommittedFrames::default();
        let ends = c.commit(true, &[out(0, &[1]), out(100, &[7, 8])], &[0, 101]);
        assert_eq!(ends, vec![1, 102]);
        assert_eq!(c.kept(), vec![1, 1]);
        // A primary claiming more than it ever produced.
        c.commit(false, &[out(1, &[]), out(102, &[])], &[u64::MAX, u64::MAX]);
        assert_eq!(c.kept(), vec![0, 0]);
    }

    #[test]
    fn a_primary_that_never_releases_cannot_grow_the_shadow_without_bound() {
        let mut c = CommittedFrames::default();
        let big = NetOutput {
            start: 0,
            frames: vec![vec![0u8; 60_000]; 100],
        };
        c.commit(true, &[big], &[0]);
        let mut at = 100;
        for _ in 0..10 {
            let o = NetOutput {
                start: at,
                frames: vec![vec![0u8; 60_000]; 100],
            };
            c.commit(false, &[o], &[0]);
            at += 100;
        }
        let kept = c.kept()[0];
        assert!(kept * 60_000 <= MAX_KEPT_BYTES, "{kept} frames kept");
        assert!(kept > 0);
    }
}
