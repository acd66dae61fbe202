//! What a primary believes of its spares' answers. No sockets, no clocks
//! (like `liveness.rs`): the link's ack thread asks, and acts on the verdict.
//!
//! Rules:
//! - An `Ack` releases output held for the guest, so it counts only if it
//!   names an epoch sent on that link and not yet acknowledged there, in
//!   the link's term. Anything else is a protocol error of the link: the
//!   link is dropped (its spare rejoins with a live copy) and the ack
//!   counts for nothing.
//! - Acks are cumulative, as the shadow commits in order: an ack of epoch
//!   `e` also answers the epochs sent before `e`. A live copy sends several
//!   containers labelled with the same join point; each ack answers one.
//! - A `Nack` drops the link in any case. Its claim that the spare took the
//!   VM over (which stops the guest at once) is believed only from a Nack
//!   of the link's term, naming an epoch sent on it (or 0, none), and only
//!   for a term newer than the link's.

/// What one link sent, as an answer is judged against it.
#[derive(Clone, Copy, Debug)]
pub struct LinkView<'a> {
    /// The link's term (this primary's).
    pub term: u64,
    /// The epochs sent and not yet acknowledged, oldest first.
    pub unacked: &'a [u64],
    /// The newest epoch acknowledged on the link (0: none).
    pub acked: u64,
}

impl LinkView<'_> {
    /// The newest epoch sent on the link (0: none).
    pub fn last_sent(&self) -> u64 {
        self.unacked.iter().copied().fold(self.acked, u64::max)
    }
}

/// Why an answer is not believed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Stamped with another term than the link's.
    #[error("an answer of term {theirs} on a link of term {ours}")]
    Term {
        /// The frame's term.
        theirs: u64,
        /// The link's term.
        ours: u64,
    },
    /// An ack of an epoch after the last one sent.
    #[error("an ack of epoch {seq}, after the last epoch sent on this link ({last})")]
    AckBeyond {
        /// The acknowledged epoch.
        seq: u64,
        /// The last epoch sent (0: none).
        last: u64,
    },
    /// An ack of an epoch not awaiting one.
    #[error(
        "an ack of epoch {seq}, which awaits no ack on this link (acknowledged already, or never sent)"
    )]
    AckNotAwaited {
        /// The acknowledged epoch.
        seq: u64,
    },
    /// A refusal of an epoch after the last one sent.
    #[error("a refusal of epoch {seq}, after the last epoch sent on this link ({last})")]
    NackBeyond {
        /// The refused epoch.
        seq: u64,
        /// The last epoch sent (0: none).
        last: u64,
    },
    /// A takeover claimed in a term not newer than the link's.
    #[error("a takeover claimed in term {claimed}, not newer than this link's term {ours}")]
    StaleTakeover {
        /// The term claimed.
        claimed: u64,
        /// The link's term.
        ours: u64,
    },
}

/// An answer stamped with another term than the link's is refused.
fn same_term(link: &LinkView<'_>, term: u64) -> Result<(), AnswerError> {
    if term == link.term {
        Ok(())
    } else {
        Err(AnswerError::Term {
            theirs: term,
            ours: link.term,
        })
    }
}

/// Judges an `Ack` of epoch `seq` stamped with `term`. `Ok(n)`: it answers
/// the first `n` unacknowledged epochs (the last of them is `seq`).
pub fn judge_ack(link: &LinkView<'_>, term: u64, seq: u64) -> Result<usize, AnswerError> {
    same_term(link, term)?;
    let last = link.last_sent();
    if seq > last {
        return Err(AnswerError::AckBeyond { seq, last });
    }
    // Epochs before `seq` are answered with it; then `seq` itself must
    // come (an older epoch is acknowledged already).
    let before = link.unacked.iter().take_while(|&&s| s < seq).count();
    match link.unacked.get(before) {
        Some(&s) if s == seq => Ok(before + 1),
        _ => Err(AnswerError::AckNotAwaited { seq }),
    }
}

/// Judges a `Nack` of epoch `seq` (0: none in flight) stamped with `term`.
/// `Ok(t)`: the link is lost, and with `Some(t)` the spare took the VM over
/// in term `t` (the primary is superseded).
pub fn judge_nack(
    link: &LinkView<'_>,
    term: u64,
    seq: u64,
    superseded_by: Option<u64>,
) -> Result<Option<u64>, AnswerError> {
    same_term(link, term)?;
    let last = link.last_sent();
    if seq > last {
        return Err(AnswerError::NackBeyond { seq, last });
    }
    match superseded_by {
        Some(claimed) if claimed <= link.term => Err(AnswerError::StaleTakeover {
            claimed,
            ours: link.term,
        }),
        by => Ok(by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(unacked: &[u64], acked: u64) -> LinkView<'_> {
        LinkView {
            term: 3,
            unacked,
            acked,
        }
    }

    #[test]
    fn an_ack_counts_only_for_an_epoch_sent_and_awaiting_it() {
        let v = view(&[5, 6, 7], 4);
        assert_eq!(judge_ack(&v, 3, 5), Ok(1));
        // Cumulative: the ack of 7 answers 5 and 6 too.
        assert_eq!(judge_ack(&v, 3, 7), Ok(3));
        assert_eq!(
            judge_ack(&v, 3, 8),
            Err(AnswerError::AckBeyond { seq: 8, last: 7 })
        );
        assert_eq!(
            judge_ack(&v, 3, u64::MAX),
            Err(AnswerError::AckBeyond {
                seq: u64::MAX,
                last: 7
            })
        );
        // Acknowledged already.
        assert_eq!(
            judge_ack(&v, 3, 4),
            Err(AnswerError::AckNotAwaited { seq: 4 })
        );
        // Nothing in flight: every ack is beyond what was sent.
        assert_eq!(
            judge_ack(&view(&[], 0), 3, 1),
            Err(AnswerError::AckBeyond { seq: 1, last: 0 })
        );
        // A gap: 6 was never sent on this link.
        assert_eq!(
            judge_ack(&view(&[5, 7], 4), 3, 6),
            Err(AnswerError::AckNotAwaited { seq: 6 })
        );
    }

    #[test]
    fn an_answer_of_another_term_is_refused() {
        let v = view(&[5], 4);
        for term in [0, 2, 4, u64::MAX] {
            assert_eq!(
                judge_ack(&v, term, 5),
                Err(AnswerError::Term {
                    theirs: term,
                    ours: 3
                })
            );
            assert!(matches!(
                judge_nack(&v, term, 5, Some(9)),
                Err(AnswerError::Term { .. })
            ));
        }
    }

    #[test]
    fn each_container_of_a_live_copy_is_acknowledged_once() {
        // Three containers labelled with the join point 9, then epoch 10.
        let mut unacked = vec![9, 9, 9, 10];
        for _ in 0..3 {
            let n = judge_ack(&view(&unacked, 0), 3, 9).unwrap();
            assert_eq!(n, 1);
            unacked.drain(..n);
        }
        assert_eq!(
            judge_ack(&view(&unacked, 9), 3, 9),
            Err(AnswerError::AckNotAwaited { seq: 9 })
        );
        assert_eq!(judge_ack(&view(&unacked, 9), 3, 10), Ok(1));
    }

    #[test]
    fn a_refusal_is_believed_only_for_what_was_sent_and_a_newer_term() {
        let v = view(&[5, 6], 4);
        assert_eq!(judge_nack(&v, 3, 6, None), Ok(None));
        assert_eq!(judge_nack(&v, 3, 0, Some(4)), Ok(Some(4)));
        assert_eq!(
            judge_nack(&v, 3, 7, Some(4)),
            Err(AnswerError::NackBeyond { seq: 7, last: 6 })
        );
        for claimed in [0, 3] {
            assert_eq!(
                judge_nack(&v, 3, 5, Some(claimed)),
                Err(AnswerError::StaleTakeover { claimed, ours: 3 })
            );
        }
    }

    /// Random schedules of sends and (partly forged) answers: an accepted
    /// ack always names an epoch sent in the link's term and still awaiting
    /// its ack, and what it answers was sent before it.
    #[test]
    fn random_schedules_never_count_an_ack_for_an_epoch_not_sent() {
        let mut next = crate::replication::xorshift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut sent: Vec<u64> = Vec::new();
            let mut unacked: Vec<u64> = Vec::new();
            let mut acked = 0u64;
            let mut seq = 0u64;
            for _ in 0..40 {
                match next() % 3 {
                    0 => {
                        seq += 1 + next() % 2; // links may skip epochs (join points)
                        sent.push(seq);
                        unacked.push(seq);
                    }
                    _ => {
                        let term = if next().is_multiple_of(5) {
                            next() % 6
                        } else {
                            3
                        };
                        let claim = next() % (seq + 3);
                        let v = view(&unacked, acked);
                        match judge_ack(&v, term, claim) {
                            Ok(n) => {
                                assert_eq!(term, 3);
                                assert!(sent.contains(&claim), "acked {claim}, never sent");
                                assert_eq!(unacked[n - 1], claim);
                                assert!(unacked[..n].iter().all(|&s| s <= claim));
                                unacked.drain(..n);
                                acked = acked.max(claim);
                            }
                            Err(_) => {
                                assert!(
                                    term != 3 || !unacked.contains(&claim),
                                    "refused an ack of {claim} awaiting it"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
