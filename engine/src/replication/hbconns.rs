//! Which of a primary's heartbeat connections speaks for it (no I/O).
//!
//! A primary that drops its link to a spare dials a new one. The old
//! connection's last frames and its close can reach the standby long after
//! the new link took over: across a healed partition, TCP retransmits them
//! with a backoff of up to seconds. By then the standby follows the new
//! link and holds its commits, and the old close, read as "the primary's
//! heartbeat connection closed without a goodbye", would make it claim the
//! VM from under a live primary.
//!
//! [`HeartbeatConns`] sits between the heartbeat connections and the
//! [`StandbyFsm`](super::liveness::StandbyFsm): the newest connection that
//! carried a frame of the newest term speaks for the primary, and frames
//! and closes of older connections are dropped. Connection ids are given by
//! the caller in the order the connections were accepted.

use super::liveness::StandbyInput;

/// The filter; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatConns {
    /// (term, connection) of the newest frame admitted.
    current: Option<(u64, u64)>,
}

impl HeartbeatConns {
    /// An input from heartbeat connection `conn`: the input to feed the
    /// standby's decision core, or `None` when it comes from a connection
    /// the primary has replaced.
    ///
    /// - A frame (heartbeat, stale, goodbye) of a term older than the
    ///   current one passes: the decision core refuses it by its term. It
    ///   does not make its connection current.
    /// - A frame of the current term from an older connection is dropped;
    ///   from the current or a newer one, it passes, and a newer connection
    ///   becomes current. So does any frame of a newer term.
    /// - A close passes only from the current connection, or before any
    ///   frame came. The close of a connection that never carried a frame
    ///   while another is current is dropped: if the current one dies, its
    ///   own close or its silence tells.
    /// - Inputs that do not come from a heartbeat connection pass.
    pub fn admit(&mut self, conn: u64, input: StandbyInput) -> Option<StandbyInput> {
        let term = match input {
            StandbyInput::Heartbeat { term }
            | StandbyInput::Stale { term }
            | StandbyInput::Goodbye { term } => term,
            StandbyInput::PeerClosed => {
                return match self.current {
                    Some((_, c)) if c != conn => None,
                    _ => Some(input),
                };
            }
            other => return Some(other),
        };
        match self.current {
            Some((t, _)) if term < t => Some(input),
            Some((t, c)) if term == t && conn < c => None,
            _ => {
                self.current = Some((term, conn));
                Some(input)
            }
        }
    }

    /// The connection that speaks for the primary, if any.
    pub fn current(&self) -> Option<u64> {
        self.current.map(|(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::super::liveness::{StandbyDecision, StandbyFsm, StandbyState};
    use super::*;
    use StandbyInput::*;

    /// Feeds `input` from `conn` through the filter into the decision core.
    fn feed(
        conns: &mut HeartbeatConns,
        fsm: &mut StandbyFsm,
        conn: u64,
        input: StandbyInput,
    ) -> StandbyDecision {
        conns
            .admit(conn, input)
            .map_or(StandbyDecision::Continue, |i| fsm.step(i))
    }

    /// The trial that failed in CI: a partition, the primary re-dials and
    /// resyncs the standby, then the old connection's retransmitted frames
    /// and its close arrive. The standby keeps following the new link, and
    /// the new link's close is still a crash.
    #[test]
    fn the_old_links_late_close_is_not_the_primarys_crash() {
        let (mut conns, mut fsm) = (HeartbeatConns::default(), StandbyFsm::new(30));
        assert_eq!(
            feed(&mut conns, &mut fsm, 1, Heartbeat { term: 1 }),
            StandbyDecision::Continue
        );
        fsm.step(Committed { term: 1, seq: 5 });
        // The re-dialled link: heartbeats and commits.
        feed(&mut conns, &mut fsm, 2, Heartbeat { term: 1 });
        fsm.step(Committed { term: 1, seq: 53 });
        assert_eq!(conns.current(), Some(2));
        // The old link's last frames, then its close.
        for late in [
            Heartbeat { term: 1 },
            Stale { term: 1 },
            Goodbye { term: 1 },
            PeerClosed,
        ] {
            assert_eq!(conns.admit(1, late), None, "{late:?}");
            assert_eq!(
                feed(&mut conns, &mut fsm, 1, late),
                StandbyDecision::Continue
            );
        }
        assert_eq!(fsm.state(), StandbyState::Following);
        // The current link's close is the primary's crash: claim what it
        // committed last.
        assert_eq!(
            feed(&mut conns, &mut fsm, 2, PeerClosed),
            StandbyDecision::Claim { term: 2, seq: 53 }
        );
    }

    /// Without the filter the same sequence claims: the test above proves
    /// something.
    #[test]
    fn unfiltered_the_late_close_would_claim() {
        let mut fsm = StandbyFsm::new(30);
        fsm.step(Heartbeat { term: 1 });
        fsm.step(Committed { term: 1, seq: 53 });
        assert_eq!(
            fsm.step(PeerClosed),
            StandbyDecision::Claim { term: 2, seq: 53 }
        );
    }

    #[test]
    fn an_older_terms_connection_neither_speaks_nor_silences_the_current_one() {
        let mut conns = HeartbeatConns::default();
        assert!(conns.admit(5, Heartbeat { term: 2 }).is_some());
        // An old primary of term 1 dials in later: its frames reach the
        // decision core (which refuses them), its close does not.
        assert_eq!(
            conns.admit(6, Heartbeat { term: 1 }),
            Some(Heartbeat { term: 1 })
        );
        assert_eq!(conns.current(), Some(5));
        assert_eq!(conns.admit(6, PeerClosed), None);
        assert_eq!(conns.admit(5, PeerClosed), Some(PeerClosed));
        // A newer term on any connection becomes current.
        assert!(conns.admit(4, Heartbeat { term: 3 }).is_some());
        assert_eq!(conns.current(), Some(4));
        assert_eq!(conns.admit(5, PeerClosed), None);
    }

    #[test]
    fn before_any_frame_a_close_passes_and_other_inputs_always_pass() {
        let mut conns = HeartbeatConns::default();
        assert_eq!(conns.admit(3, PeerClosed), Some(PeerClosed));
        assert!(conns.admit(3, Heartbeat { term: 1 }).is_some());
        for other in [
            Tick,
            Committed { term: 1, seq: 2 },
            ClaimGranted,
            ClaimRefused,
            ClaimUnanswered,
        ] {
            assert_eq!(conns.admit(0, other), Some(other));
        }
        // A newer connection that never carried a frame closes: dropped.
        assert_eq!(conns.admit(9, PeerClosed), None);
        assert_eq!(conns.current(), Some(3));
    }

    /// Reordering: the old link's frames and close are delayed by a random
    /// amount past the new link's start, while the new link heartbeats and
    /// commits every step. The standby never claims; the new link's close
    /// at the end claims its last commit.
    #[test]
    fn delayed_old_link_events_never_claim_in_any_order() {
        let mut next = crate::replication::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut rand = move |n: u64| next() % n;
        for trial in 0..500 {
            let (mut conns, mut fsm) = (HeartbeatConns::default(), StandbyFsm::new(10));
            feed(&mut conns, &mut fsm, 1, Heartbeat { term: 1 });
            fsm.step(Committed { term: 1, seq: 1 });
            // The old link's backlog: a few heartbeats, maybe a stale, then
            // its close, each arriving at a random step after the new link
            // started.
            let mut old: Vec<(u64, StandbyInput)> = (0..rand(5))
                .map(|_| (rand(40), Heartbeat { term: 1 }))
                .collect();
            if rand(2) == 0 {
                old.push((rand(40), Stale { term: 1 }));
            }
            let close_at = rand(40);
            old.push((close_at, PeerClosed));
            old.sort_by_key(|e| e.0);
            let mut seq = 1;
            for step in 0..40 {
                if step % 3 == 0 {
                    feed(&mut conns, &mut fsm, 2, Heartbeat { term: 1 });
                    seq += 1;
                    fsm.step(Committed { term: 1, seq });
                }
                for &(_, e) in old.iter().filter(|e| e.0 == step) {
                    let d = feed(&mut conns, &mut fsm, 1, e);
                    assert_eq!(
                        d,
                        StandbyDecision::Continue,
                        "trial {trial} step {step}: {e:?}"
                    );
                }
                assert_eq!(fsm.step(Tick), StandbyDecision::Continue, "trial {trial}");
            }
            assert_eq!(
                feed(&mut conns, &mut fsm, 2, PeerClosed),
                StandbyDecision::Claim { term: 2, seq },
                "trial {trial}"
            );
        }
    }
}
