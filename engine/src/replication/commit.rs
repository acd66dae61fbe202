//! The commit set: which spares gate the primary's output, and how far the
//! output may be released. No sockets, no clocks (like `liveness.rs`).
//!
//! Rules (`docs/spares.md`):
//! - Output of epoch e is released once every synchronous *member* acked e.
//!   A lost member becomes *leaving*: its last ack still bounds the release
//!   until the arbiter has dropped it from the record ([`CommitSet::dropped`]).
//! - A spare joins as *joining*: it receives a live copy, then every epoch
//!   after its join point `from`. It becomes a member on the first ack of an
//!   epoch after `from` that is at least the release point, so a member's
//!   committed state is never older than output the world has seen. Only
//!   then may the primary record it in the arbiter (and may it take over).
//! - While unprotected (no member) output flows freely; the primary starts
//!   holding at a capture once a synchronous joiner is ready
//!   ([`CommitSet::hold_from`]).
//! - Asynchronous spares never gate anything; their acks measure their lag.

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
    /// Lost member: its last ack still bounds the release until dropped.
    Leaving,
}

#[derive(Clone, Debug)]
struct Entry {
    id: SpareId,
    name: String,
    kind: Kind,
    role: Role,
    /// Its join point: epochs after this one reach it whole.
    from: u64,
    acked: u64,
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

    /// A spare starts joining; it receives every epoch after `from`.
    pub fn add(&mut self, id: SpareId, name: &str, kind: Kind, from: u64) {
        self.entries.retain(|e| e.id != id);
        self.entries.push(Entry {
            id,
            name: name.into(),
            kind,
            role: Role::Joining,
            from,
            acked: 0,
        });
    }

    /// Output is released up to this epoch (`None`: flows unprotected).
    pub fn released(&self) -> Option<u64> {
        self.released
    }

    /// Whether any member gates output.
    pub fn protected(&self) -> bool {
        self.entries.iter().any(|e| e.role == Role::Member)
    }

    /// The members' names.
    pub fn members(&self) -> Vec<String> {
        self.names(|e| e.role == Role::Member)
    }

    fn names(&self, f: impl Fn(&Entry) -> bool) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| f(e))
            .map(|e| e.name.clone())
            .collect()
    }

    /// The role of a spare, if it is in the set.
    pub fn role(&self, id: SpareId) -> Option<Role> {
        self.entries.iter().find(|e| e.id == id).map(|e| e.role)
    }

    /// The newest epoch every gating spare (member or leaving) acked;
    /// `None` without one.
    pub fn committed(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| matches!(e.role, Role::Member | Role::Leaving))
            .map(|e| e.acked)
            .min()
    }

    /// Unprotected, with a synchronous joiner that acked an epoch after its
    /// live copy: time to start holding output.
    pub fn ready_to_protect(&self) -> bool {
        self.released.is_none()
            && !self
                .entries
                .iter()
                .any(|e| matches!(e.role, Role::Member | Role::Leaving))
            && self
                .entries
                .iter()
                .any(|e| e.kind == Kind::Sync && e.role == Role::Joining && e.acked > e.from)
    }

    /// Synchronous joiners past their live copy (ready to protect the VM).
    pub fn ready(&self) -> Vec<String> {
        self.names(|e| e.kind == Kind::Sync && e.role == Role::Joining && e.acked > e.from)
    }

    /// The ids of the synchronous joiners.
    pub fn sync_joiners(&self) -> Vec<SpareId> {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Sync && e.role == Role::Joining)
            .map(|e| e.id)
            .collect()
    }

    /// Output is held from now on: everything up to epoch `seq` (captured
    /// with the guest paused, at this very moment) was released freely.
    /// Returns the names of spares that became members at once.
    pub fn hold_from(&mut self, seq: u64) -> Vec<String> {
        if self.released.is_none() {
            self.released = Some(seq);
        }
        let mut joined = Vec::new();
        for i in 0..self.entries.len() {
            if self.promote(i) {
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
        if e.kind == Kind::Sync && e.role == Role::Joining && e.acked > e.from && e.acked >= r {
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

    /// Raises the release point to what every gating spare acked.
    fn advance(&mut self) -> Option<u64> {
        let r = self.released?;
        let c = self.committed()?;
        if c > r {
            self.released = Some(c);
            return Some(c);
        }
        None
    }

    /// Spare `id`'s link was lost. Returns its name if it was a member: the
    /// arbiter must drop it before any output it did not ack is released.
    /// A joining or asynchronous spare just leaves the set.
    pub fn lost(&mut self, id: SpareId) -> Option<String> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        match self.entries[i].role {
            Role::Member => {
                self.entries[i].role = Role::Leaving;
                Some(self.entries[i].name.clone())
            }
            Role::Leaving => Some(self.entries[i].name.clone()),
            Role::Joining => {
                self.entries.remove(i);
                None
            }
        }
    }

    /// The arbiter dropped these spares: leaving entries with those names go.
    pub fn dropped(&mut self, names: &[String]) -> AfterDrop {
        self.entries
            .retain(|e| !(e.role == Role::Leaving && names.contains(&e.name)));
        if self
            .entries
            .iter()
            .any(|e| matches!(e.role, Role::Member | Role::Leaving))
        {
            return AfterDrop::Protected(self.advance());
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

    #[test]
    fn output_waits_for_every_member() {
        let mut c = CommitSet::new();
        c.add(1, "a", Kind::Sync, 0);
        c.add(2, "b", Kind::Sync, 0);
        c.add(3, "c", Kind::Async, 0);
        assert!(c.hold_from(0).is_empty());
        assert!(c.ack(1, 1).joined);
        assert_eq!(c.released(), Some(1), "a alone is a member and acked 1");
        assert!(c.ack(2, 1).joined);
        assert_eq!(c.ack(1, 3).release, None, "b has not acked 2 or 3");
        assert_eq!(c.ack(3, 9), AckOutcome::default(), "async never gates");
        assert_eq!(c.ack(2, 2).release, Some(2));
        assert_eq!(c.ack(2, 3).release, Some(3));
        assert_eq!(c.lag(3, 12), Some(3));
    }

    #[test]
    fn a_lost_member_bounds_the_release_until_dropped() {
        let mut c = CommitSet::new();
        c.add(1, "a", Kind::Sync, 0);
        c.add(2, "b", Kind::Sync, 0);
        c.hold_from(0);
        c.ack(1, 1);
        c.ack(2, 1);
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
    fn a_joiner_becomes_a_member_only_once_it_is_not_behind_the_release() {
        let mut c = CommitSet::new();
        c.add(1, "a", Kind::Sync, 0);
        c.hold_from(0);
        c.ack(1, 10);
        // b joins at 10 (live copy labelled 10, then epochs 11...).
        c.add(2, "b", Kind::Sync, 10);
        assert!(!c.ack(2, 10).joined, "the live copy's acks do not count");
        c.ack(1, 14);
        assert!(
            !c.ack(2, 12).joined,
            "behind the release (14): it could take over from an older state"
        );
        assert_eq!(c.ack(1, 16).release, Some(16), "b does not gate yet");
        assert!(c.ack(2, 16).joined);
        assert_eq!(c.ack(1, 17).release, None, "now b gates");
        assert_eq!(c.ack(2, 17).release, Some(17));
    }

    #[test]
    fn an_unprotected_primary_holds_from_a_capture_once_a_joiner_is_ready() {
        let mut c = CommitSet::new();
        c.add(1, "a", Kind::Sync, 5);
        c.add(2, "z", Kind::Async, 5);
        assert!(!c.ready_to_protect(), "nothing acked after the copy");
        c.ack(1, 5);
        c.ack(2, 7);
        assert!(
            !c.ready_to_protect(),
            "only the async spare is past its copy"
        );
        assert!(!c.ack(1, 7).joined, "unprotected: nothing to join yet");
        assert!(c.ready_to_protect());
        // Held from the capture of 8 on: output up to 8 flowed.
        assert!(c.hold_from(8).is_empty());
        assert!(!c.ack(1, 7).joined);
        assert!(c.ack(1, 8).joined);
        assert!(c.protected());
        assert!(!c.ready_to_protect());
    }

    #[test]
    fn losing_a_joiner_or_an_async_spare_changes_no_release() {
        let mut c = CommitSet::new();
        c.add(1, "a", Kind::Sync, 0);
        c.hold_from(0);
        c.ack(1, 3);
        c.add(2, "b", Kind::Sync, 3);
        c.add(3, "z", Kind::Async, 3);
        assert_eq!(c.lost(2), None);
        assert_eq!(c.lost(3), None);
        assert_eq!(c.role(2), None);
        assert_eq!(c.ack(1, 4).release, Some(4));
    }

    /// Random acks, losses, joins and drops: the release point never passes
    /// what a member or leaving spare acked, never goes back, and a member
    /// never holds less than what was released when it joined.
    #[test]
    fn random_schedules_never_release_past_a_gating_spare() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut c = CommitSet::new();
            let mut sent = 0u64;
            let mut acked = [0u64; 4];
            let mut last_release = 0u64;
            for id in 0..3u64 {
                c.add(id, &format!("s{id}"), Kind::Sync, 0);
            }
            c.hold_from(0);
            for _ in 0..60 {
                let id = next() % 4;
                match next() % 6 {
                    0 => sent += 1,
                    1 | 2 if acked[id as usize] < sent => {
                        acked[id as usize] += 1 + next() % (sent - acked[id as usize]);
                        let was = c.role(id);
                        let o = c.ack(id, acked[id as usize]);
                        if o.joined {
                            assert!(acked[id as usize] >= last_release);
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
                        if c.released().is_none() {
                            last_release = 0;
                        }
                    }
                    5 if c.role(id).is_none() => {
                        c.add(id, &format!("s{id}"), Kind::Sync, sent);
                        acked[id as usize] = sent;
                        if c.released().is_none() {
                            c.hold_from(sent);
                            last_release = sent;
                        }
                    }
                    _ => {}
                }
                if let Some(r) = c.released() {
                    for i in 0..4 {
                        if matches!(c.role(i), Some(Role::Member | Role::Leaving)) {
                            assert!(
                                r <= acked[i as usize],
                                "released {r} past s{i}'s ack {}",
                                acked[i as usize]
                            );
                        }
                    }
                }
            }
        }
    }
}
