//! The commit set: which spares gate the primary's output, and how far the
//! output may be released. No sockets, no clocks (like `liveness.rs`).
//!
//! Rules (`docs/spares.md`):
//! - Output of epoch e is released once every synchronous *member* has
//!   committed e. A lost member becomes *leaving*: its last commit still
//!   bounds the release until the arbiter has dropped it from the record
//!   ([`CommitSet::dropped`]).
//! - A spare joins as *joining*: it receives a live copy read from the
//!   running guest, then every epoch after its join point `from`. Its state
//!   is exact only from the first epoch captured after the copy finished
//!   reading ([`CommitSet::copied`]): epochs before that reach it as
//!   pre-copy, and its first commit (`commit_from`) is that epoch or later.
//! - A joiner becomes a member once it committed an epoch at least as new
//!   as the release point, and the release point has reached its first
//!   commit (every byte before it was released), so a member can resume
//!   without losing or contradicting anything the world saw. Only then is
//!   it recorded in the arbiter (and may it take over).
//! - While unprotected (no member) output flows freely; the primary starts
//!   holding at a capture once a synchronous joiner caught up, after
//!   recording it: it is a member from that capture on, which is its first
//!   commit ([`CommitSet::hold_from`]).
//! - Asynchronous spares never gate output while linked; their acks measure
//!   their lag. A recorded one that is lost gates (as *leaving*) until the
//!   arbiter dropped it, so it cannot claim while the primary releases.

/// A link's id (unique for the life of the replicator).
pub type SpareId = u64;

/// How a spare follows the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Epochs commit only once it acked them.
    Sync,
    /// Distant: receives every epoch, never holds output back.
    Async,
}

/// Where a spare stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Catching up; gates nothing.
    Joining,
    /// Gates output (synchronous spares only).
    Member,
    /// Lost member (or recorded asynchronous spare): its last commit still
    /// bounds the release until the arbiter dropped it.
    Leaving,
}

/// `commit_from` before it is known.
const NOT_YET: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Entry {
    id: SpareId,
    name: String,
    kind: Kind,
    role: Role,
    /// Its join point: epochs after this one reach it whole.
    from: u64,
    /// The first epoch captured after its live copy finished reading.
    consistent: Option<u64>,
    /// Its first commit: epochs before it are sent as pre-copy.
    commit_from: u64,
    /// An asynchronous spare the arbiter names.
    recorded: bool,
    acked: u64,
}

impl Entry {
    /// The newest epoch it committed (0: none).
    fn committed(&self) -> u64 {
        if self.commit_from != NOT_YET && self.acked >= self.commit_from {
            self.acked
        } else {
            0
        }
    }

    fn gates(&self) -> bool {
        matches!(self.role, Role::Member | Role::Leaving)
    }

    /// Caught up past its live copy (ready to protect an unprotected VM).
    fn caught_up(&self) -> bool {
        self.kind == Kind::Sync
            && self.role == Role::Joining
            && self.consistent.is_some_and(|c| self.acked >= c)
    }
}

/// What an ack changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Release output of epochs up to this one.
    pub release: Option<u64>,
    /// The spare became a member (record it in the arbiter).
    pub joined: bool,
}

/// What dropping lost spares changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterDrop {
    /// Members remain; release up to this epoch (`None`: nothing new).
    Protected(Option<u64>),
    /// No member is left: release everything and run unprotected.
    Unprotected,
}

/// The primary's commit set.
#[derive(Clone, Debug, Default)]
pub struct CommitSet {
    entries: Vec<Entry>,
    /// Output is released up to this epoch; `None`: unprotected (flows).
    released: Option<u64>,
}

impl CommitSet {
    /// An unprotected commit set with no spare.
    pub fn new() -> CommitSet {
        CommitSet::default()
    }

    /// A spare starts joining; it receives every epoch after `from`. `whole`:
    /// it gets no live copy (the parked start: its first epoch is a full
    /// one), so every epoch it receives is a commit.
    pub fn add(&mut self, id: SpareId, name: &str, kind: Kind, from: u64, whole: bool) {
        self.entries.retain(|e| e.id != id);
        self.entries.push(Entry {
            id,
            name: name.into(),
            kind,
            role: Role::Joining,
            from,
            consistent: whole.then_some(from),
            commit_from: if whole { from } else { NOT_YET },
            recorded: false,
            acked: 0,
        });
    }

    fn find(&mut self, id: SpareId) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// Spare `id`'s live copy finished reading before the capture of `seq`:
    /// its state is exact from `seq` on. An asynchronous spare, or a
    /// synchronous one of a VM whose output is held, commits from `seq`; a
    /// synchronous joiner of an unprotected VM only from the epoch that
    /// starts protection.
    pub fn copied(&mut self, id: SpareId, seq: u64) {
        let held = self.released.is_some();
        if let Some(e) = self.find(id) {
            if e.consistent.is_none() {
                e.consistent = Some(seq);
                if e.kind == Kind::Async || held {
                    e.commit_from = seq;
                }
            }
        }
    }

    /// Spare `id`'s first commit, once known (epochs before it go as pre-copy).
    pub fn commit_from(&self, id: SpareId) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.commit_from)
            .filter(|&c| c != NOT_YET)
    }

    /// Whether spare `id` committed an epoch (an asynchronous spare is
    /// recorded from then on).
    pub fn has_commit(&self, id: SpareId) -> bool {
        self.entries.iter().any(|e| e.id == id && e.committed() > 0)
    }

    /// The arbiter now names asynchronous spare `id`.
    pub fn recorded(&mut self, id: SpareId) {
        if let Some(e) = self.find(id) {
            e.recorded = true;
        }
    }

    /// Output is released up to this epoch (`None`: flows unprotected).
    pub fn released(&self) -> Option<u64> {
        self.released
    }

    /// Whether any member gates output.
    pub fn protected(&self) -> bool {
        self.entries.iter().any(|e| e.role == Role::Member)
    }

    /// Whether every member committed an epoch (a takeover by any of them
    /// is possible now).
    pub fn members_committed(&self) -> bool {
        self.protected()
            && self
                .entries
                .iter()
                .filter(|e| e.role == Role::Member)
                .all(|e| e.committed() > 0)
    }

    /// The members' names.
    pub fn members(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.role == Role::Member)
            .map(|e| e.name.clone())
            .collect()
    }

    /// The role of a spare, if it is in the set.
    pub fn role(&self, id: SpareId) -> Option<Role> {
        self.entries.iter().find(|e| e.id == id).map(|e| e.role)
    }

    /// The newest epoch every gating spare (member or leaving) committed;
    /// `None` without one.
    pub fn committed(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| e.gates())
            .map(Entry::committed)
            .min()
    }

    /// Unprotected, with a synchronous joiner caught up past its live copy:
    /// time to start holding output.
    pub fn ready_to_protect(&self) -> bool {
        self.released.is_none()
            && !self.entries.iter().any(Entry::gates)
            && self.entries.iter().any(Entry::caught_up)
    }

    /// The synchronous joiners caught up past their live copy.
    pub fn ready(&self) -> Vec<(SpareId, String)> {
        self.entries
            .iter()
            .filter(|e| e.caught_up())
            .map(|e| (e.id, e.name.clone()))
            .collect()
    }

    /// Output is held from now on: everything up to epoch `seq` (captured
    /// with the guest paused, at this very moment) was released freely.
    /// The synchronous joiners `recorded` (the arbiter names them) become
    /// members at once, with `seq` as their first commit; every other
    /// synchronous joiner whose copy is done commits from `seq` too.
    /// Returns the names of the spares that became members.
    pub fn hold_from(&mut self, seq: u64, recorded: &[SpareId]) -> Vec<String> {
        if self.released.is_none() {
            self.released = Some(seq);
        }
        let mut joined = Vec::new();
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            if e.kind == Kind::Sync
                && e.role == Role::Joining
                && e.consistent.is_some()
                && e.commit_from == NOT_YET
            {
                e.commit_from = seq;
            }
            // Recorded before this capture, with no commit before it (at
            // the parked start every epoch is a commit: `commit_from` 0).
            let forced = e.kind == Kind::Sync
                && e.role == Role::Joining
                && e.commit_from <= seq
                && recorded.contains(&e.id);
            if forced {
                e.role = Role::Member;
            }
            if forced || self.promote(i) {
                joined.push(self.entries[i].name.clone());
            }
        }
        joined
    }

    /// Makes entry `i` a member if it may be one now.
    fn promote(&mut self, i: usize) -> bool {
        let Some(r) = self.released else {
            return false;
        };
        let e = &mut self.entries[i];
        let c = e.committed();
        // It committed something not older than the release point, and
        // every byte before its first commit was released.
        if e.kind == Kind::Sync
            && e.role == Role::Joining
            && c > 0
            && c >= r
            && r.saturating_add(1) >= e.commit_from
        {
            e.role = Role::Member;
            return true;
        }
        false
    }

    /// Spare `id` acked epoch `seq`.
    pub fn ack(&mut self, id: SpareId, seq: u64) -> AckOutcome {
        let Some(i) = self.entries.iter().position(|e| e.id == id) else {
            return AckOutcome::default();
        };
        if self.entries[i].role == Role::Leaving {
            // A lost spare's ack that raced its loss: its bound stays.
            return AckOutcome::default();
        }
        let e = &mut self.entries[i];
        e.acked = e.acked.max(seq);
        let joined = self.promote(i);
        AckOutcome {
            release: self.advance(),
            joined,
        }
    }

    /// Raises the release point to what every gating spare committed.
    fn advance(&mut self) -> Option<u64> {
        let r = self.released?;
        let c = self.committed()?;
        if c > r {
            self.released = Some(c);
            return Some(c);
        }
        None
    }

    /// Spare `id`'s link was lost. Returns its name if the arbiter must drop
    /// it before any output it did not commit is released: a member, or an
    /// asynchronous spare the arbiter names (it becomes leaving and bounds
    /// the release). A joiner, or an unrecorded asynchronous spare, just
    /// leaves the set.
    pub fn lost(&mut self, id: SpareId) -> Option<String> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        let e = &mut self.entries[i];
        match (e.role, e.kind, e.recorded) {
            (Role::Member, _, _) | (Role::Joining, Kind::Async, true) => {
                e.role = Role::Leaving;
                Some(e.name.clone())
            }
            (Role::Leaving, _, _) => Some(e.name.clone()),
            (Role::Joining, _, _) => {
                self.entries.remove(i);
                None
            }
        }
    }

    /// The arbiter dropped these spares: leaving entries with those names go.
    pub fn dropped(&mut self, names: &[String]) -> AfterDrop {
        self.entries
            .retain(|e| !(e.role == Role::Leaving && names.contains(&e.name)));
        if self.entries.iter().any(|e| e.role == Role::Member) {
            return AfterDrop::Protected(self.advance());
        }
        if self.entries.iter().any(|e| e.role == Role::Leaving) {
            // Still waiting for another drop.
            return AfterDrop::Protected(None);
        }
        self.released = None;
        AfterDrop::Unprotected
    }

    /// How many epochs spare `id` is behind `seq` (the newest sent).
    pub fn lag(&self, id: SpareId, seq: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| seq.saturating_sub(e.acked.max(e.from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set where spares `ids` joined at the parked start (whole).
    fn started(ids: &[(SpareId, &str, Kind)]) -> CommitSet {
        let mut c = CommitSet::new();
        for &(id, name, kind) in ids {
            c.add(id, name, kind, 0, true);
        }
        c
    }

    #[test]
    fn output_waits_for_every_member() {
        let mut c = started(&[
            (1, "a", Kind::Sync),
            (2, "b", Kind::Sync),
            (3, "c", Kind::Async),
        ]);
        assert_eq!(c.hold_from(1, &[1, 2]).len(), 2);
        assert_eq!(c.ack(1, 1).release, None, "b has not committed 1");
        assert_eq!(c.ack(2, 1).release, None, "1 was released freely already");
        assert_eq!(c.ack(1, 3).release, None, "b has not acked 2 or 3");
        assert_eq!(c.ack(3, 9), AckOutcome::default(), "async never gates");
        assert_eq!(c.ack(2, 2).release, Some(2));
        assert_eq!(c.ack(2, 3).release, Some(3));
        assert_eq!(c.lag(3, 12), Some(3));
        assert!(c.members_committed());
    }

    #[test]
    fn a_lost_member_bounds_the_release_until_dropped() {
        let mut c = started(&[(1, "a", Kind::Sync), (2, "b", Kind::Sync)]);
        c.hold_from(1, &[1, 2]);
        c.ack(1, 5);
        c.ack(2, 4);
        assert_eq!(c.released(), Some(4));
        assert_eq!(c.lost(2), Some("b".into()));
        assert_eq!(c.ack(1, 8).release, None, "b may still claim from 4");
        assert_eq!(c.ack(2, 8), AckOutcome::default(), "a raced ack is ignored");
        assert_eq!(c.dropped(&["b".into()]), AfterDrop::Protected(Some(8)));
        assert_eq!(c.members(), vec!["a".to_string()]);
        c.lost(1);
        assert_eq!(c.dropped(&["a".into()]), AfterDrop::Unprotected);
        assert_eq!(c.released(), None);
        assert!(!c.protected());
    }

    #[test]
    fn a_joiner_commits_only_from_the_first_epoch_after_its_copy() {
        let mut c = started(&[(1, "a", Kind::Sync)]);
        c.hold_from(1, &[1]);
        c.ack(1, 10);
        // b joins at 10: a live copy labelled 10, then epochs 11...
        c.add(2, "b", Kind::Sync, 10, false);
        assert!(!c.ack(2, 10).joined, "the live copy's acks do not count");
        assert!(
            !c.ack(2, 12).joined,
            "epochs before the copy ended are not commits"
        );
        assert_eq!(c.commit_from(2), None);
        // The copy finished reading before the capture of 13.
        c.copied(2, 13);
        assert_eq!(c.commit_from(2), Some(13));
        c.ack(1, 15);
        assert!(
            !c.ack(2, 14).joined,
            "behind the release (15): it could take over from an older state"
        );
        assert_eq!(c.ack(1, 16).release, Some(16), "b does not gate yet");
        assert!(c.ack(2, 16).joined);
        assert_eq!(c.ack(1, 17).release, None, "now b gates");
        assert_eq!(c.ack(2, 17).release, Some(17));
    }

    #[test]
    fn a_joiner_waits_until_every_byte_before_its_first_commit_was_released() {
        let mut c = started(&[(1, "a", Kind::Sync)]);
        c.hold_from(1, &[1]);
        c.ack(1, 3);
        c.add(2, "b", Kind::Sync, 5, false);
        c.copied(2, 7);
        // b committed 7 and more while a lags: output of 4..6 is still held
        // and b's console buffer starts at 7's output.
        assert!(!c.ack(2, 9).joined);
        assert_eq!(c.ack(1, 6).release, Some(6));
        assert!(c.ack(2, 10).joined, "released 6 >= 7 - 1 and 10 >= 6");
    }

    #[test]
    fn an_unprotected_primary_holds_from_a_capture_once_a_joiner_caught_up() {
        let mut c = CommitSet::new();
        c.add(1, "a", Kind::Sync, 5, false);
        c.add(2, "z", Kind::Async, 5, false);
        c.copied(1, 7);
        c.copied(2, 7);
        assert_eq!(
            c.commit_from(1),
            None,
            "unprotected: no commit before protection"
        );
        assert_eq!(c.commit_from(2), Some(7), "async spares commit at once");
        c.ack(1, 6);
        assert!(!c.ready_to_protect(), "not caught up past its copy");
        assert!(!c.ack(1, 7).joined, "unprotected: nothing to join yet");
        assert!(c.ready_to_protect());
        assert_eq!(c.ready(), vec![(1, "a".to_string())]);
        // Recorded, then held from the capture of 9 on: its first commit.
        assert_eq!(c.hold_from(9, &[1]), vec!["a".to_string()]);
        assert_eq!(c.commit_from(1), Some(9));
        assert!(c.protected() && !c.members_committed());
        assert_eq!(c.ack(1, 8).release, None, "a pre-copy ack releases nothing");
        assert_eq!(c.ack(1, 10).release, Some(10));
        assert!(!c.ready_to_protect());
    }

    #[test]
    fn a_recorded_async_spare_that_is_lost_gates_until_dropped() {
        let mut c = started(&[(1, "a", Kind::Sync), (3, "z", Kind::Async)]);
        c.hold_from(1, &[1]);
        c.ack(3, 2);
        assert!(c.has_commit(3));
        c.recorded(3);
        c.ack(1, 4);
        assert_eq!(c.released(), Some(4));
        assert_eq!(c.lost(3), Some("z".into()));
        assert_eq!(
            c.ack(1, 6).release,
            None,
            "z could claim: nothing more flows"
        );
        assert_eq!(c.dropped(&["z".into()]), AfterDrop::Protected(Some(6)));
    }

    #[test]
    fn losing_a_joiner_or_an_unrecorded_async_spare_changes_no_release() {
        let mut c = started(&[(1, "a", Kind::Sync)]);
        c.hold_from(1, &[1]);
        c.ack(1, 3);
        c.add(2, "b", Kind::Sync, 3, false);
        c.add(3, "z", Kind::Async, 3, false);
        assert_eq!(c.lost(2), None);
        assert_eq!(c.lost(3), None);
        assert_eq!(c.role(2), None);
        assert_eq!(c.ack(1, 4).release, Some(4));
    }

    /// Random acks, copies, losses, joins and drops: the release point never
    /// passes what a gating spare committed, never goes back, and a spare
    /// becomes a member only with a commit not older than the release.
    #[test]
    fn random_schedules_never_release_past_a_gating_spare() {
        let mut next = crate::replication::xorshift(0x2545_f491_4f6c_dd1du64);
        for _ in 0..2000 {
            let mut c = started(&[
                (0, "s0", Kind::Sync),
                (1, "s1", Kind::Sync),
                (2, "s2", Kind::Sync),
            ]);
            let mut sent = 1u64;
            let mut acked = [0u64; 4];
            // Where output was last held from: released freely up to there.
            let mut held_at = 1u64;
            c.hold_from(1, &[0, 1, 2]);
            let mut last_release = 1u64;
            for _ in 0..80 {
                let id = next() % 4;
                let i = id as usize;
                match next() % 7 {
                    0 => sent += 1,
                    1 | 2 if acked[i] < sent => {
                        acked[i] += 1 + next() % (sent - acked[i]);
                        let was = c.role(id);
                        let o = c.ack(id, acked[i]);
                        if o.joined {
                            assert!(acked[i] >= last_release);
                        }
                        if let Some(r) = o.release {
                            assert!(r > last_release, "the release went back");
                            last_release = r;
                        }
                        if was == Some(Role::Leaving) {
                            assert_eq!(o, AckOutcome::default());
                        }
                    }
                    3 => {
                        c.lost(id);
                    }
                    4 => {
                        let leaving: Vec<String> = (0..4)
                            .filter(|&i| c.role(i) == Some(Role::Leaving))
                            .map(|i| format!("s{i}"))
                            .collect();
                        if let AfterDrop::Protected(Some(r)) = c.dropped(&leaving) {
                            assert!(r > last_release);
                            last_release = r;
                        }
                    }
                    5 if c.role(id).is_none() => {
                        c.add(id, &format!("s{id}"), Kind::Sync, sent, false);
                        acked[i] = sent;
                    }
                    6 => c.copied(id, sent + 1),
                    _ => {}
                }
                if c.released().is_none() {
                    if c.ready_to_protect() {
                        let ids: Vec<SpareId> = c.ready().iter().map(|r| r.0).collect();
                        sent += 1;
                        c.hold_from(sent, &ids);
                        last_release = sent;
                        held_at = sent;
                    } else {
                        last_release = 0;
                    }
                }
                if let Some(r) = c.released() {
                    for i in 0..4u64 {
                        if c.role(i) == Some(Role::Member) {
                            let from = c.commit_from(i).expect("a member has a first commit");
                            assert!(r + 1 >= from, "s{i} joined with output before it held");
                        }
                        if matches!(c.role(i), Some(Role::Member | Role::Leaving))
                            && acked[i as usize] >= c.commit_from(i).unwrap_or(u64::MAX)
                        {
                            assert!(
                                r <= acked[i as usize].max(held_at),
                                "released {r} past s{i}'s commit {}",
                                acked[i as usize]
                            );
                        }
                    }
                }
            }
        }
    }
}
