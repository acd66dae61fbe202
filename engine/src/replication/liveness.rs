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

    /// How many `Tick`s in a row (with no other input) it takes before one
    /// decides something: the timeout while following, the next claim while
    /// claiming; `None` in states where ticks decide nothing. A caller may
    /// sleep that many ticks, and feed the ticks that passed before the
    /// next input: fewer than this many cannot change a decision.
    pub fn ticks_to_decision(&self) -> Option<u32> {
        match self.state {
            StandbyState::Following => Some(self.timeout_ticks.saturating_sub(self.silent).max(1)),
            StandbyState::Claiming => Some(CLAIM_RETRY_TICKS.saturating_sub(self.claim.1).max(1)),
            StandbyState::Waiting | StandbyState::TookOver | StandbyState::Stopped => None,
        }
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

/// When the primary's heartbeat thread sends a `Heartbeat`: every
/// `interval`, except while the link's epochs are acknowledged. An epoch ack
/// proves both ends alive more strongly than a heartbeat (the shadow
/// committed, and feeds `Committed` to its [`StandbyFsm`], which resets its
/// silence like a heartbeat does), so while acks keep arriving within
/// `interval`, a heartbeat is sent only every `keepalive` (a quarter of the
/// timeout, at least `interval`), which keeps the heartbeat connection in
/// use. A heartbeat still goes every `interval` when acks stop (a long epoch
/// clogging the stream, a partition) and whenever the primary runs
/// unprotected (the heartbeat then carries `protected = false`, which only a
/// heartbeat can say). No sockets or clocks: the caller passes the time since
/// it last sent and since the last ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatPlan {
    interval: Duration,
    keepalive: Duration,
}

impl HeartbeatPlan {
    /// The plan for heartbeats every `interval` and a peer `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> HeartbeatPlan {
        HeartbeatPlan {
            interval,
            keepalive: (timeout / 4).max(interval),
        }
    }

    /// The heartbeat interval: how often the thread checks.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The longest gap between heartbeats while epochs are acknowledged.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Whether to send a heartbeat now, `since_sent` after the last one and
    /// `since_ack` after the link's last epoch ack (`None`: none yet).
    pub fn due(&self, since_sent: Duration, since_ack: Option<Duration>, protected: bool) -> bool {
        let acks_flow = protected && since_ack.is_some_and(|a| a < self.interval);
        since_sent
            >= if acks_flow {
                self.keepalive
            } else {
                self.interval
            }
    }
}

/// The primary's heartbeat thread for one link, checked every interval:
/// an epoch ack since the last check counts as the shadow's answer, the
/// [`HeartbeatPlan`] says whether to send a heartbeat, and the
/// [`ShadowMonitor`] declares the shadow lost after a timeout's worth of
/// checks without an answer. No sockets or clocks, like the plan.
#[derive(Clone, Debug)]
pub struct PrimaryHeartbeat {
    plan: HeartbeatPlan,
    monitor: ShadowMonitor,
}

impl PrimaryHeartbeat {
    /// Heartbeats every `interval`, the shadow lost after `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> PrimaryHeartbeat {
        let ticks = (timeout.as_micros() / interval.as_micros().max(1)).max(1) as u32;
        PrimaryHeartbeat {
            plan: HeartbeatPlan::new(interval, timeout),
            monitor: ShadowMonitor::new(ticks),
        }
    }

    /// One check: `since_sent` after the last heartbeat, `since_ack` after
    /// the link's last epoch ack, `acked_since_check` if that ack came
    /// after the previous check. Returns whether to send a heartbeat now,
    /// and what the monitor decided.
    pub fn check(
        &mut self,
        since_sent: Duration,
        since_ack: Option<Duration>,
        acked_since_check: bool,
        protected: bool,
    ) -> (bool, ShadowDecision) {
        if acked_since_check {
            self.monitor.heard();
        }
        let send = self.plan.due(since_sent, since_ack, protected);
        (send, self.monitor.tick())
    }

    /// The shadow answered a heartbeat.
    pub fn answered(&mut self) {
        self.monitor.heard();
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

    /// On random schedules: fewer ticks than `ticks_to_decision` never
    /// decide anything, and exactly that many do (a claim, or the loss of
    /// a primary before the first commit).
    #[test]
    fn ticks_to_decision_is_exact_on_random_schedules() {
        let mut next = crate::replication::xorshift(0x5eed_0f71_c4c4);
        for _ in 0..500 {
            let mut f = StandbyFsm::new(1 + (next() % 8) as u32);
            for _ in 0..40 {
                let input = match next() % 12 {
                    0..=5 => Tick,
                    6 | 7 => Heartbeat { term: 1 },
                    8 => Committed {
                        term: 1,
                        seq: next() % 50,
                    },
                    9 => ClaimUnanswered,
                    10 => PeerClosed,
                    _ => ClaimGranted,
                };
                if let StandbyDecision::Claim { .. } = f.step(input) {
                    f.step(ClaimUnanswered);
                }
                let Some(n) = f.ticks_to_decision() else {
                    let mut g = f.clone();
                    for _ in 0..20 {
                        assert_eq!(g.step(Tick), StandbyDecision::Continue, "{f:?}");
                    }
                    continue;
                };
                let mut g = f.clone();
                for i in 1..n {
                    assert_eq!(
                        g.step(Tick),
                        StandbyDecision::Continue,
                        "tick {i} of {n}: {f:?}"
                    );
                }
                let d = g.step(Tick);
                assert!(
                    matches!(
                        d,
                        StandbyDecision::Claim { .. } | StandbyDecision::LostBeforeSync
                    ),
                    "tick {n} of {n} gave {d:?}: {f:?}"
                );
            }
        }
    }

    #[test]
    fn heartbeats_thin_out_only_while_acks_arrive_and_the_primary_is_protected() {
        let ms = Duration::from_millis;
        let p = HeartbeatPlan::new(ms(10), ms(300));
        assert_eq!((p.interval(), p.keepalive()), (ms(10), ms(75)));
        // No ack yet, an old ack, or unprotected: every interval.
        for (ack, protected) in [(None, true), (Some(ms(10)), true), (Some(ms(1)), false)] {
            assert!(!p.due(ms(9), ack, protected), "{ack:?} {protected}");
            assert!(p.due(ms(10), ack, protected), "{ack:?} {protected}");
        }
        // A fresh ack stands in for the heartbeat, up to the keepalive.
        assert!(!p.due(ms(10), Some(ms(9)), true));
        assert!(!p.due(ms(74), Some(ms(0)), true));
        assert!(p.due(ms(75), Some(ms(0)), true));
        // The keepalive is never shorter than the interval.
        let q = HeartbeatPlan::new(ms(50), ms(100));
        assert_eq!(q.keepalive(), ms(50));
    }

    /// One simulated link, in 1 ms steps: the primary checks its
    /// [`PrimaryHeartbeat`] every interval (10 ms, timeout 300 ms), as
    /// `link::heartbeat` does; the shadow commits an epoch every 20 ms while the
    /// stream flows, and its [`StandbyFsm`] ticks every 5 ms. Heartbeats,
    /// answers and acks each take a random delay of up to `max_delay_ms`
    /// (host stalls). Returns the ms the standby claimed at and the ms it
    /// last heard the primary; the ms the primary declared the shadow lost
    /// at and the ms it last heard the shadow; and the heartbeats sent.
    fn simulate(
        seed: u64,
        max_delay_ms: u64,
        stream_stops_ms: u64,
        partition_ms: u64,
        end_ms: u64,
    ) -> Outcome {
        let (interval, timeout) = (10u64, 300u64);
        let mut hb = PrimaryHeartbeat::new(
            Duration::from_millis(interval),
            Duration::from_millis(timeout),
        );
        let mut next = crate::replication::xorshift(seed);
        let mut fsm = StandbyFsm::new((timeout / 5) as u32);
        // In-flight messages: (arrival ms, what).
        #[derive(Clone, Copy, PartialEq)]
        enum Msg {
            Heartbeat,
            HeartbeatAck,
            Ack,
        }
        let mut to_shadow: Vec<(u64, Msg)> = Vec::new();
        let mut to_primary: Vec<(u64, Msg)> = Vec::new();
        let (mut last_sent, mut last_ack, mut acked_since_check) =
            (None::<u64>, None::<u64>, false);
        let mut o = Outcome::default();
        let mut seq = 0;
        for t in 0..end_ms {
            let cut = t >= partition_ms;
            let delay = |next: &mut dyn FnMut() -> u64| t + next() % (max_delay_ms + 1);
            // The shadow commits an epoch every 20 ms while the stream flows.
            if t % 20 == 0 && t < stream_stops_ms && !cut {
                seq += 1;
                fsm.step(Committed { term: 1, seq });
                o.standby_heard = t;
                to_primary.push((delay(&mut next), Msg::Ack));
            }
            for (_, m) in to_shadow.iter().filter(|(at, _)| *at == t) {
                if *m == Msg::Heartbeat && !cut {
                    fsm.step(Heartbeat { term: 1 });
                    o.standby_heard = t;
                    to_primary.push((delay(&mut next), Msg::HeartbeatAck));
                }
            }
            for (_, m) in to_primary.iter().filter(|(at, _)| *at == t) {
                if cut {
                    continue;
                }
                if *m == Msg::Ack {
                    last_ack = Some(t);
                    acked_since_check = true;
                } else {
                    hb.answered();
                    o.primary_heard = t;
                }
            }
            to_shadow.retain(|(at, _)| *at > t);
            to_primary.retain(|(at, _)| *at > t);
            if t % 5 == 0 {
                if let StandbyDecision::Claim { .. } = fsm.step(Tick) {
                    o.claimed.get_or_insert(t);
                }
            }
            if t % interval == 0 {
                // The primary's heartbeat thread, as `link::heartbeat` runs it.
                let acked = std::mem::take(&mut acked_since_check);
                if acked {
                    o.primary_heard = t;
                }
                let ms = |x: Option<u64>| x.map(|x| Duration::from_millis(t - x));
                let since_sent = ms(last_sent).unwrap_or(Duration::MAX);
                let (send, decision) = hb.check(since_sent, ms(last_ack), acked, true);
                if send {
                    last_sent = Some(t);
                    o.sent += 1;
                    if !cut {
                        to_shadow.push((delay(&mut next), Msg::Heartbeat));
                    }
                }
                if decision == ShadowDecision::ShadowLost {
                    o.lost.get_or_insert(t);
                }
            }
        }
        o
    }

    #[derive(Default, Debug, PartialEq)]
    struct Outcome {
        claimed: Option<u64>,
        standby_heard: u64,
        lost: Option<u64>,
        primary_heard: u64,
        sent: u32,
    }

    #[test]
    fn thinned_heartbeats_never_cause_a_takeover_while_epochs_or_heartbeats_flow() {
        for seed in 1..40u64 {
            // Epochs flow for 10 s, with stalls of up to 40 ms.
            let o = simulate(seed, 40, u64::MAX, u64::MAX, 10_000);
            assert_eq!((o.claimed, o.lost), (None, None), "seed {seed}");
            let sent = o.sent;
            // Far fewer heartbeats than one per interval (1,000), but at
            // least one per keepalive.
            assert!((133..600).contains(&sent), "seed {seed}: {sent} heartbeats");
            // The stream stops at 2 s (a clogged stream, no acks): the
            // heartbeats alone keep both sides following.
            let o = simulate(seed, 40, 2_000, u64::MAX, 10_000);
            assert_eq!(
                (o.claimed, o.lost),
                (None, None),
                "seed {seed}, stream stopped"
            );
            assert!(
                o.sent >= 800,
                "seed {seed}: {} heartbeats without acks",
                o.sent
            );
        }
    }

    #[test]
    fn a_partition_is_detected_after_the_timeout_with_thinned_heartbeats() {
        for seed in 1..40u64 {
            let o = simulate(seed, 3, u64::MAX, 5_000, 7_000);
            let claimed = o.claimed.expect("the standby claims after a partition");
            let lost = o.lost.expect("the primary declares the shadow lost");
            // Both sides heard each other within an epoch of the cut, and
            // decide a timeout after that, to within a tick (ticks count
            // silence): thinning the heartbeats does not delay detection.
            assert!(
                o.standby_heard >= 5_000 - 20 && o.primary_heard >= 5_000 - 30,
                "{o:?}"
            );
            assert!(
                (295..=305).contains(&(claimed - o.standby_heard)),
                "seed {seed}: {o:?}"
            );
            assert!(
                (290..=310).contains(&(lost - o.primary_heard)),
                "seed {seed}: {o:?}"
            );
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
