//! Failure detection and the takeover decision, free of sockets and clocks.
//!
//! Like raft-rs, the caller drives these state machines with events and
//! `Tick`s (one per [`TICK`]) and acts on the decisions they return, so
//! partitions, delays and reordering can be tested in memory.
//!
//! Rules:
//! - A standby never takes over while it still hears the primary: every
//!   heartbeat resets the silence counter, and takeover needs
//!   `timeout_ticks` consecutive silent ticks, or the heartbeat connection
//!   closing without a `Goodbye` (the kernel closes a dead process's sockets;
//!   a partition produces silence, never a close).
//! - A standby only takes over from a committed epoch: before its first
//!   commit there is nothing to resume.
//! - Every frame carries a term. A standby that took over runs in term + 1
//!   and refuses anything from an older term.
//! - Silence or a close is a suspicion, not a verdict: the standby *claims*
//!   the VM ([`StandbyDecision::Claim`]) and takes over only once the
//!   arbiter grants it (`fencing::promote`). A refusal makes its state
//!   stale; no answer keeps it a shadow, claiming again every
//!   [`CLAIM_RETRY_TICKS`], until the primary is heard again or the arbiter
//!   answers. Without an arbiter (`--arbiter none`) the caller grants every
//!   claim at once.

use std::time::Duration;

/// The period of a `Tick`.
pub const TICK: Duration = Duration::from_millis(5);

/// Ticks between two claims while the arbiter does not answer.
pub const CLAIM_RETRY_TICKS: u32 = 10;

/// What happened, from the standby's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyInput {
    /// One tick passed.
    Tick,
    /// A heartbeat from the primary in `term`.
    Heartbeat {
        /// The sender's term.
        term: u64,
    },
    /// Epoch `seq` of `term` was received, verified and staged.
    Committed {
        /// The sender's term.
        term: u64,
        /// The epoch.
        seq: u64,
    },
    /// The heartbeat connection closed without a goodbye.
    PeerClosed,
    /// The primary runs unprotected (it lost the stream): our committed
    /// state is stale and must never be resumed.
    Stale {
        /// The sender's term.
        term: u64,
    },
    /// The primary said goodbye: its guest stopped on its own.
    Goodbye {
        /// The sender's term.
        term: u64,
    },
    /// The arbiter granted the claim: the VM is ours in term + 1.
    ClaimGranted,
    /// The arbiter refused the claim: another copy owns the VM, or the
    /// primary recorded that it runs unprotected.
    ClaimRefused,
    /// The arbiter did not answer the claim.
    ClaimUnanswered,
}

/// What the standby must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyDecision {
    /// Carry on.
    Continue,
    /// The primary looks gone: ask the arbiter for term `term` (and answer
    /// with `ClaimGranted`, `ClaimRefused` or `ClaimUnanswered`).
    Claim {
        /// The term to claim.
        term: u64,
        /// The committed epoch a takeover would resume from.
        seq: u64,
    },
    /// The claim was refused: the committed state is stale; forget it.
    Forget,
    /// Take over: resume the guest from `seq` in term `term`.
    TakeOver {
        /// The new term.
        term: u64,
        /// The committed epoch to resume from.
        seq: u64,
        /// Silent ticks counted when the decision was made (0 for a close).
        silent_ticks: u32,
    },
    /// Refuse the frame: its term is older than ours.
    RefuseStale {
        /// The frame's term.
        theirs: u64,
        /// Our term.
        ours: u64,
    },
    /// The primary is gone but nothing was committed yet: wait for a new one.
    LostBeforeSync,
    /// The guest ended on the primary: stop without taking over.
    Stop,
}

/// The standby's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyState {
    /// No primary yet, or it was lost before the first commit.
    Waiting,
    /// Following a live primary.
    Following,
    /// The primary looks gone; claiming the VM from the arbiter.
    Claiming,
    /// Took over; now the primary of `term`.
    TookOver,
    /// Stopped (the guest ended on the primary).
    Stopped,
}

/// The standby's failure detector and takeover decision.
#[derive(Clone, Debug)]
pub struct StandbyFsm {
    term: u64,
    timeout_ticks: u32,
    silent: u32,
    committed: Option<u64>,
    state: StandbyState,
    /// Silent ticks when the claim started; ticks since the last claim.
    claim: (u32, u32),
}

impl StandbyFsm {
    /// A detector that declares the primary dead after `timeout_ticks` silent ticks.
    pub fn new(timeout_ticks: u32) -> StandbyFsm {
        StandbyFsm {
            term: 0,
            timeout_ticks: timeout_ticks.max(1),
            silent: 0,
            committed: None,
            state: StandbyState::Waiting,
            claim: (0, 0),
        }
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The current state.
    pub fn state(&self) -> StandbyState {
        self.state
    }

    /// The last committed epoch.
    pub fn committed(&self) -> Option<u64> {
        self.committed
    }

    /// Checks a frame's term; adopts a newer one while following.
    fn check_term(&mut self, term: u64) -> Option<StandbyDecision> {
        if term < self.term || (self.state == StandbyState::TookOver && term <= self.term) {
            return Some(StandbyDecision::RefuseStale {
                theirs: term,
                ours: self.term,
            });
        }
        self.term = term;
        None
    }

    fn lost(&mut self, silent_ticks: u32) -> StandbyDecision {
        match (self.state, self.committed) {
            (StandbyState::Following, Some(seq)) => {
                self.state = StandbyState::Claiming;
                self.claim = (silent_ticks, 0);
                StandbyDecision::Claim {
                    term: self.term.saturating_add(1),
                    seq,
                }
            }
            (StandbyState::Following, None) => {
                self.state = StandbyState::Waiting;
                StandbyDecision::LostBeforeSync
            }
            _ => StandbyDecision::Continue,
        }
    }

    /// Feeds one event; returns what to do.
    pub fn step(&mut self, input: StandbyInput) -> StandbyDecision {
        if matches!(self.state, StandbyState::TookOver | StandbyState::Stopped) {
            return match input {
                StandbyInput::Heartbeat { term }
                | StandbyInput::Committed { term, .. }
                | StandbyInput::Stale { term }
                | StandbyInput::Goodbye { term } => {
                    self.check_term(term).unwrap_or(StandbyDecision::Continue)
                }
                _ => StandbyDecision::Continue,
            };
        }
        if self.state == StandbyState::Claiming {
            if let Some(d) = self.claiming(input) {
                return d;
            }
        }
        match input {
            StandbyInput::ClaimGranted
            | StandbyInput::ClaimRefused
            | StandbyInput::ClaimUnanswered => StandbyDecision::Continue,
            StandbyInput::Tick => {
                if self.state == StandbyState::Following {
                    self.silent += 1;
                    if self.silent >= self.timeout_ticks {
                        let s = self.silent;
                        return self.lost(s);
                    }
                }
                StandbyDecision::Continue
            }
            StandbyInput::Heartbeat { term } => {
                if let Some(d) = self.check_term(term) {
                    return d;
                }
                self.silent = 0;
                self.state = StandbyState::Following;
                StandbyDecision::Continue
            }
            StandbyInput::Committed { term, seq } => {
                if let Some(d) = self.check_term(term) {
                    return d;
                }
                // A commit is proof of life too.
                self.silent = 0;
                self.state = StandbyState::Following;
                self.committed = Some(self.committed.map_or(seq, |c| c.max(seq)));
                StandbyDecision::Continue
            }
            StandbyInput::Stale { term } => {
                if let Some(d) = self.check_term(term) {
                    return d;
                }
                // Still alive, but what we hold is no longer the primary's state.
                self.silent = 0;
                self.state = StandbyState::Following;
                self.committed = None;
                StandbyDecision::Continue
            }
            StandbyInput::PeerClosed => self.lost(0),
            StandbyInput::Goodbye { term } => {
                if let Some(d) = self.check_term(term) {
                    return d;
                }
                self.state = StandbyState::Stopped;
                StandbyDecision::Stop
            }
        }
    }
}

impl StandbyFsm {
    /// Inputs while claiming; `None` for those handled as when following
    /// (a heartbeat or a commit: the primary is alive after all).
    fn claiming(&mut self, input: StandbyInput) -> Option<StandbyDecision> {
        let seq = self.committed?;
        Some(match input {
            StandbyInput::ClaimGranted => {
                self.state = StandbyState::TookOver;
                self.term = self.term.saturating_add(1);
                StandbyDecision::TakeOver {
                    term: self.term,
                    seq,
                    silent_ticks: self.claim.0,
                }
            }
            StandbyInput::ClaimRefused => {
                self.state = StandbyState::Waiting;
                self.committed = None;
                self.silent = 0;
                StandbyDecision::Forget
            }
            StandbyInput::ClaimUnanswered | StandbyInput::PeerClosed => StandbyDecision::Continue,
            StandbyInput::Tick => {
                self.claim.1 += 1;
                if self.claim.1 >= CLAIM_RETRY_TICKS {
                    self.claim.1 = 0;
                    StandbyDecision::Claim {
                        term: self.term.saturating_add(1),
                        seq,
                    }
                } else {
                    StandbyDecision::Continue
                }
            }
            // Heard again: back to following (handled below).
            StandbyInput::Heartbeat { .. }
            | StandbyInput::Committed { .. }
            | StandbyInput::Stale { .. }
            | StandbyInput::Goodbye { .. } => return None,
        })
    }
}

/// The primary's view of its shadow.
#[derive(Clone, Debug)]
pub struct ShadowMonitor {
    timeout_ticks: u32,
    silent: u32,
    alive: bool,
}

/// What the primary must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowDecision {
    /// Carry on.
    Continue,
    /// The shadow is gone: run unprotected, release held output, reconnect.
    ShadowLost,
}

impl ShadowMonitor {
    /// A monitor that declares the shadow lost after `timeout_ticks` silent ticks.
    pub fn new(timeout_ticks: u32) -> ShadowMonitor {
        ShadowMonitor {
            timeout_ticks: timeout_ticks.max(1),
            silent: 0,
            alive: true,
        }
    }

    /// A tick passed.
    pub fn tick(&mut self) -> ShadowDecision {
        if !self.alive {
            return ShadowDecision::Continue;
        }
        self.silent += 1;
        if self.silent >= self.timeout_ticks {
            self.alive = false;
            return ShadowDecision::ShadowLost;
        }
        ShadowDecision::Continue
    }

    /// The shadow answered (heartbeat ack or epoch ack).
    pub fn heard(&mut self) {
        if self.alive {
            self.silent = 0;
        }
    }

    /// The connection broke.
    pub fn closed(&mut self) -> ShadowDecision {
        if self.alive {
            self.alive = false;
            ShadowDecision::ShadowLost
        } else {
            ShadowDecision::Continue
        }
    }

    /// Whether the shadow is considered alive.
    pub fn alive(&self) -> bool {
        self.alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StandbyInput::*;

    fn following(timeout: u32) -> StandbyFsm {
        let mut f = StandbyFsm::new(timeout);
        assert_eq!(f.step(Heartbeat { term: 1 }), StandbyDecision::Continue);
        assert_eq!(
            f.step(Committed { term: 1, seq: 1 }),
            StandbyDecision::Continue
        );
        f
    }

    #[test]
    fn never_takes_over_while_heartbeats_arrive() {
        let mut f = following(10);
        for i in 0..10_000 {
            assert_eq!(f.step(Tick), StandbyDecision::Continue, "tick {i}");
            if i % 9 == 0 {
                f.step(Heartbeat { term: 1 });
            }
        }
        assert_eq!(f.state(), StandbyState::Following);
    }

    #[test]
    fn partition_takes_over_after_exactly_the_timeout() {
        let mut f = following(10);
        f.step(Committed { term: 1, seq: 7 });
        for _ in 0..9 {
            assert_eq!(f.step(Tick), StandbyDecision::Continue);
        }
        assert_eq!(f.step(Tick), StandbyDecision::Claim { term: 2, seq: 7 });
        assert_eq!(f.state(), StandbyState::Claiming);
        assert_eq!(
            f.step(ClaimGranted),
            StandbyDecision::TakeOver {
                term: 2,
                seq: 7,
                silent_ticks: 10
            }
        );
        assert_eq!(f.state(), StandbyState::TookOver);
        // Only once.
        assert_eq!(f.step(Tick), StandbyDecision::Continue);
    }

    #[test]
    fn stale_primary_is_refused_after_takeover() {
        let mut f = following(3);
        for _ in 0..3 {
            f.step(Tick);
        }
        f.step(ClaimGranted);
        assert_eq!(f.state(), StandbyState::TookOver);
        // The old primary's delayed (reordered) frames arrive after the takeover.
        assert_eq!(
            f.step(Heartbeat { term: 1 }),
            StandbyDecision::RefuseStale { theirs: 1, ours: 2 }
        );
        assert_eq!(
            f.step(Committed { term: 1, seq: 9 }),
            StandbyDecision::RefuseStale { theirs: 1, ours: 2 }
        );
        assert_eq!(
            f.committed(),
            Some(1),
            "a stale commit must not move the committed epoch"
        );
    }

    #[test]
    fn close_without_goodbye_takes_over_at_once_goodbye_stops() {
        let mut f = following(1000);
        assert_eq!(
            f.step(PeerClosed),
            StandbyDecision::Claim { term: 2, seq: 1 }
        );
        assert!(matches!(
            f.step(ClaimGranted),
            StandbyDecision::TakeOver {
                silent_ticks: 0,
                ..
            }
        ));
        let mut g = following(1000);
        assert_eq!(g.step(Goodbye { term: 1 }), StandbyDecision::Stop);
        assert_eq!(g.step(PeerClosed), StandbyDecision::Continue);
        assert_eq!(g.state(), StandbyState::Stopped);
    }

    #[test]
    fn a_stale_shadow_never_takes_over() {
        let mut f = following(3);
        f.step(Stale { term: 1 });
        for _ in 0..3 {
            f.step(Tick);
        }
        assert_eq!(
            f.state(),
            StandbyState::Waiting,
            "took over from a stale state"
        );
        let mut g = following(3);
        g.step(Stale { term: 1 });
        assert_eq!(g.step(PeerClosed), StandbyDecision::LostBeforeSync);
    }

    #[test]
    fn no_takeover_before_the_first_commit() {
        let mut f = StandbyFsm::new(2);
        f.step(Heartbeat { term: 5 });
        f.step(Tick);
        assert_eq!(f.step(Tick), StandbyDecision::LostBeforeSync);
        assert_eq!(f.state(), StandbyState::Waiting);
        // A fresh primary can connect again.
        f.step(Heartbeat { term: 5 });
        f.step(Committed { term: 5, seq: 1 });
        assert_eq!(f.state(), StandbyState::Following);
    }

    #[test]
    fn older_term_heartbeats_are_refused_while_following() {
        let mut f = following(5);
        f.step(Heartbeat { term: 3 });
        assert_eq!(f.term(), 3);
        assert_eq!(
            f.step(Heartbeat { term: 2 }),
            StandbyDecision::RefuseStale { theirs: 2, ours: 3 }
        );
        // A refused heartbeat is not proof of life.
        for _ in 0..4 {
            f.step(Tick);
        }
        assert!(matches!(
            f.step(Tick),
            StandbyDecision::Claim { term: 4, .. }
        ));
    }

    #[test]
    fn a_refused_claim_forgets_the_commit_and_never_takes_over() {
        let mut f = following(2);
        f.step(Tick);
        assert!(matches!(f.step(Tick), StandbyDecision::Claim { .. }));
        assert_eq!(f.step(ClaimRefused), StandbyDecision::Forget);
        assert_eq!((f.state(), f.committed()), (StandbyState::Waiting, None));
        for _ in 0..100 {
            assert_eq!(f.step(Tick), StandbyDecision::Continue);
        }
        // A grant arriving late (reordered) changes nothing.
        assert_eq!(f.step(ClaimGranted), StandbyDecision::Continue);
        assert_eq!(f.state(), StandbyState::Waiting);
    }

    #[test]
    fn an_unanswered_claim_is_retried_until_the_primary_is_heard_again() {
        let mut f = following(2);
        f.step(Tick);
        assert!(matches!(f.step(Tick), StandbyDecision::Claim { .. }));
        assert_eq!(f.step(ClaimUnanswered), StandbyDecision::Continue);
        let mut claims = 0;
        for _ in 0..(CLAIM_RETRY_TICKS * 3) {
            if matches!(f.step(Tick), StandbyDecision::Claim { .. }) {
                claims += 1;
            }
        }
        assert_eq!(claims, 3);
        // The primary was only paused: hearing it ends the claim.
        assert_eq!(f.step(Heartbeat { term: 1 }), StandbyDecision::Continue);
        assert_eq!(f.state(), StandbyState::Following);
        assert_eq!(f.step(ClaimGranted), StandbyDecision::Continue);
        assert_eq!(f.state(), StandbyState::Following);
    }

    /// Random interleavings: a takeover happens iff the last `timeout`
    /// events before it were silent ticks (or a close), and only from a commit.
    #[test]
    fn random_schedules_respect_the_rules() {
        let mut next = crate::replication::xorshift(0x1234_5678_9abc_def1u64);
        for _ in 0..2000 {
            let timeout = 1 + (next() % 6) as u32;
            let mut f = StandbyFsm::new(timeout);
            let mut silent = 0u32;
            let mut committed = None;
            let mut following = false;
            for _ in 0..60 {
                let input = match next() % 10 {
                    0..=5 => Tick,
                    6 | 7 => Heartbeat { term: 1 },
                    8 => Committed {
                        term: 1,
                        seq: next() % 100,
                    },
                    _ => PeerClosed,
                };
                let d = f.step(input);
                match input {
                    Tick if following => silent += 1,
                    Heartbeat { .. } | Committed { .. } => {
                        silent = 0;
                        following = true;
                    }
                    _ => {}
                }
                if let Committed { seq, .. } = input {
                    committed = Some(committed.map_or(seq, |c: u64| c.max(seq)));
                }
                if let StandbyDecision::Claim { seq, .. } = d {
                    assert!(
                        input == PeerClosed || silent >= timeout,
                        "took over while hearing the primary"
                    );
                    assert_eq!(Some(seq), committed, "took over from an uncommitted epoch");
                    break;
                }
                if d == StandbyDecision::LostBeforeSync {
                    assert!(committed.is_none());
                    following = false;
                    silent = 0;
                }
                if input == PeerClosed && following && committed.is_some() {
                    panic!("a close while following with a commit must take over");
                }
                if input == PeerClosed {
                    following = false;
                    silent = 0;
                }
            }
        }
    }

    #[test]
    fn primary_declares_the_shadow_lost_after_silence_or_close() {
        let mut m = ShadowMonitor::new(4);
        for _ in 0..3 {
            assert_eq!(m.tick(), ShadowDecision::Continue);
        }
        m.heard();
        for _ in 0..3 {
            assert_eq!(m.tick(), ShadowDecision::Continue);
        }
        assert_eq!(m.tick(), ShadowDecision::ShadowLost);
        assert!(!m.alive());
        let mut c = ShadowMonitor::new(100);
        assert_eq!(c.closed(), ShadowDecision::ShadowLost);
        assert_eq!(c.closed(), ShadowDecision::Continue);
    }
}
