//! A joining spare's catch-up round (`docs/spares.md`, "Catch-up"): while
//! its live copy is read, the epochs the primary takes are not encoded for
//! it but kept as a set of written units (pages and disk blocks); the first
//! epoch captured after the copy was read switches: the set is read once
//! from the running guest and sent as one more pre-copy round, then every
//! epoch from the switch on goes to the spare as usual. (Any switch point
//! is exact; the capture time, not the encoder's, decides it so that an
//! encoder running late does not shrink the round into whole epochs.)
//!
//! Queueing the epochs instead cost the primary fresh memory for every
//! container (about 100 MB, 0.47 s of CPU zeroing it, for a 1 GiB guest
//! at 25k pages/s) and the spare one application per epoch, a page written
//! in ten epochs applied ten times (`docs/perf-round2.md`, row 6).
//!
//! **Exact**, for the same reason the copy is: the round is read after the
//! switch epoch's pause, so a unit written after its read is dirty in the
//! switch epoch or a later one, which the spare receives whole and applies
//! after the round. The spare's first commit is an epoch captured after
//! the round finished reading (`CommitSet::copied`). The switch epoch's
//! pages must not be XOR deltas against what the encoder remembers of
//! earlier epochs (the spare holds what the round read instead): the
//! encoder forgets its delta cache at a switch.
//!
//! A decision core with no threads, sockets or clocks, like `liveness.rs`:
//! the encoder asks [`JoinRoute::epoch`] about each epoch, the link's
//! sender reports [`JoinRoute::copy_read`]; tested in memory against a
//! guest that writes while it is copied.

use crate::memory::PAGE_SIZE;

/// Runs of 4 KiB units, `(start byte, units)`, gathered from many epochs.
/// They are sorted and merged whenever their count doubled since the last
/// merge, so the list stays within about twice the distinct runs.
#[derive(Clone, Debug, Default)]
pub(super) struct Runs {
    runs: Vec<(u64, u64)>,
    /// Length of the list after its last merge.
    merged: usize,
}

/// Runs kept unmerged before the first merge.
const MERGE_FLOOR: usize = 4096;

impl Runs {
    pub(super) fn add(&mut self, runs: impl IntoIterator<Item = (u64, u64)>) {
        self.runs.extend(runs.into_iter().filter(|r| r.1 > 0));
        if self.runs.len() >= 2 * self.merged.max(MERGE_FLOOR) {
            self.merge();
        }
    }

    fn merge(&mut self) {
        self.runs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len());
        for &(at, n) in &self.runs {
            let end = at.saturating_add(n.saturating_mul(PAGE_SIZE));
            if let Some(last) = out.last_mut() {
                let last_end = last.0 + last.1 * PAGE_SIZE;
                if at <= last_end {
                    if end > last_end {
                        last.1 = (end - last.0) / PAGE_SIZE;
                    }
                    continue;
                }
            }
            out.push((at, n));
        }
        self.merged = out.len();
        self.runs = out;
    }

    /// The distinct runs, in address order, adjacent ones joined.
    pub(super) fn into_runs(mut self) -> Vec<(u64, u64)> {
        self.merge();
        self.runs
    }
}

/// What the epochs withheld from a joiner wrote: guest pages by address,
/// and per disk, blocks by byte offset.
#[derive(Clone, Debug, Default)]
pub(super) struct UnitSet {
    pub(super) memory: Runs,
    pub(super) disks: Vec<Runs>,
}

impl UnitSet {
    pub(super) fn add_memory(&mut self, runs: impl IntoIterator<Item = (u64, u64)>) {
        self.memory.add(runs);
    }

    pub(super) fn add_disk(&mut self, disk: usize, runs: impl IntoIterator<Item = (u64, u64)>) {
        if self.disks.len() <= disk {
            self.disks.resize_with(disk + 1, Runs::default);
        }
        self.disks[disk].add(runs);
    }
}

/// The catch-up round a joiner's sender reads and sends before the switch
/// epoch: pre-copy containers labelled `label` (the epoch before the
/// switch, which the switch epoch applies on top of).
#[derive(Debug)]
pub(super) struct CatchUpRound {
    pub(super) label: u64,
    pub(super) set: UnitSet,
}

/// What the encoder does with one epoch for one link.
#[derive(Debug)]
pub(super) enum Route {
    /// Not for this link: before its join point, or kept in its set.
    Withhold,
    /// Sent to it.
    Send,
    /// Sent to it after the catch-up round (the switch epoch).
    CatchUp(CatchUpRound),
}

/// One link's route through the epochs.
#[derive(Debug)]
pub(super) enum JoinRoute {
    /// Its live copy is under way: epochs after `from` (the join point)
    /// are kept in `set`; once `read`, the next one switches.
    Copying { from: u64, set: UnitSet, read: bool },
    /// Every epoch after `from` goes to it.
    Streaming { from: u64 },
}

impl JoinRoute {
    /// A link that needs no copy, sent the epochs after `from`.
    pub(super) fn streaming(from: u64) -> Self {
        JoinRoute::Streaming { from }
    }

    /// A joiner whose live copy is labelled `from`.
    pub(super) fn copying(from: u64) -> Self {
        JoinRoute::Copying {
            from,
            set: UnitSet::default(),
            read: false,
        }
    }

    /// Its live copy finished reading guest memory and disks.
    pub(super) fn copy_read(&mut self) {
        if let JoinRoute::Copying { read, .. } = self {
            *read = true;
        }
    }

    /// Routes epoch `seq` (encoded in order); `written` adds what the
    /// epoch wrote to a set, and is called only if the set keeps it.
    pub(super) fn epoch(&mut self, seq: u64, written: impl FnOnce(&mut UnitSet)) -> Route {
        match self {
            JoinRoute::Streaming { from } if seq > *from => Route::Send,
            JoinRoute::Streaming { .. } => Route::Withhold,
            // Captured before the copy's plan: the copy reads its pages.
            JoinRoute::Copying { from, .. } if seq <= *from => Route::Withhold,
            JoinRoute::Copying { set, read, .. } => {
                if !*read {
                    written(set);
                    return Route::Withhold;
                }
                let set = std::mem::take(set);
                let label = seq - 1;
                *self = JoinRoute::Streaming { from: label };
                Route::CatchUp(CatchUpRound { label, set })
            }
        }
    }

    /// Whether epoch `seq` goes to the link (as last routed).
    pub(super) fn sends(&self, seq: u64) -> bool {
        matches!(self, JoinRoute::Streaming { from } if seq > *from)
    }
}

#[cfg(test)]
#[path = "catchup_tests.rs"]
mod tests;
