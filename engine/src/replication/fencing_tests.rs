//! Fencing rules and the primary's fence, against an in-memory arbiter with
//! partitions, lost answers and racing writers.

use super::*;
use crate::replication::arbiter::memory::MemoryArbiter;
use std::sync::atomic::Ordering;

const VM: &str = "vm";

fn won(o: Outcome) -> Record {
    match o {
        Outcome::Won(r) => r,
        other => panic!("expected a win, got {other:?}"),
    }
}

/// A primary "p" in term 1 protected by spare "s" at sync 1.
fn protected_vm() -> (MemoryArbiter, MemoryArbiter) {
    let mut p = MemoryArbiter::default();
    let s = p.handle();
    won(transact(&mut p, VM, |c| start(c, "p", false)).unwrap());
    let r = won(transact(&mut p, VM, |c| protect(c, 1, "p", &["s".into()])).unwrap());
    assert_eq!((r.term, r.sync, r.protected), (1, 1, true));
    (p, s)
}

#[test]
fn a_running_vm_cannot_be_started_twice_but_a_stopped_one_can() {
    let (mut p, mut other) = protected_vm();
    let o = transact(&mut other, VM, |c| start(c, "q", false)).unwrap();
    assert!(
        matches!(o, Outcome::Refused(Refusal::Running { term: 1, .. })),
        "{o:?}"
    );
    won(transact(&mut p, VM, |c| finish(c, 1, "p")).unwrap());
    let r = won(transact(&mut other, VM, |c| start(c, "q", false)).unwrap());
    assert_eq!((r.term, r.primary.as_str(), r.stopped), (2, "q", false));
    // The old primary can no longer write anything.
    let o = transact(&mut p, VM, |c| unprotect(c, 1, "p")).unwrap();
    assert!(matches!(
        o,
        Outcome::Refused(Refusal::Superseded { term: 2, .. })
    ));
}

#[test]
fn primary_and_standby_racing_after_a_cut_exactly_one_wins() {
    for standby_first in [false, true] {
        let (mut p, mut s) = protected_vm();
        let (a, b) = if standby_first {
            let b = transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap();
            let a = transact(&mut p, VM, |c| unprotect(c, 1, "p")).unwrap();
            (a, b)
        } else {
            let a = transact(&mut p, VM, |c| unprotect(c, 1, "p")).unwrap();
            let b = transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap();
            (a, b)
        };
        let wins = [&a, &b]
            .iter()
            .filter(|o| matches!(o, Outcome::Won(_)))
            .count();
        assert_eq!(wins, 1, "standby first {standby_first}: {a:?} / {b:?}");
        if standby_first {
            assert!(matches!(b, Outcome::Won(Record { term: 2, .. })));
        } else {
            assert!(
                matches!(b, Outcome::Refused(Refusal::NotEligible(_))),
                "{b:?}"
            );
        }
    }
}

#[test]
fn a_spare_of_an_older_sync_or_not_named_never_wins() {
    let (mut p, mut s) = protected_vm();
    // The primary lost s, ran unprotected, then re-protected with s again
    // (sync 2); s still holds only a commit of sync 1.
    won(transact(&mut p, VM, |c| unprotect(c, 1, "p")).unwrap());
    won(transact(&mut p, VM, |c| protect(c, 1, "p", &["s".into()])).unwrap());
    let o = transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap();
    assert!(
        matches!(&o, Outcome::Refused(Refusal::NotEligible(w)) if w.contains("sync")),
        "{o:?}"
    );
    // Once it commits an epoch of sync 2 it may.
    won(transact(&mut s, VM, |c| promote(c, 1, 2, "s")).unwrap());
    let (_, mut x) = protected_vm();
    let o = transact(&mut x, VM, |c| promote(c, 1, 1, "x")).unwrap();
    assert!(
        matches!(&o, Outcome::Refused(Refusal::NotEligible(w)) if w.contains("not among")),
        "{o:?}"
    );
}

#[test]
fn a_lost_answer_is_recognised_on_retry() {
    let (_p, mut s) = protected_vm();
    won(transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap());
    // The answer was lost; the standby asks again and learns it won.
    let r = won(transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap());
    assert_eq!((r.term, r.primary.as_str()), (2, "s"));
}

#[test]
fn an_unreachable_arbiter_decides_nothing() {
    let (mut p, s) = protected_vm();
    p.cut.store(true, Ordering::SeqCst);
    assert!(transact(&mut p, VM, |c| unprotect(c, 1, "p")).is_err());
    // The record did not move: the standby may still take over.
    let mut s = s;
    won(transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap());
}

/// Random schedules of: a link cut (both sides suspect), the arbiter cut
/// off from either side and healed, and each side's attempts, in any
/// order. Invariants: never both the old primary's "unprotected" and the
/// standby's takeover; a side that won never learns otherwise later.
#[test]
fn random_interleavings_never_fork_the_vm() {
    let mut next = crate::replication::xorshift(0x9e37_79b9_7f4a_7c15u64);
    for _ in 0..3000 {
        let (mut p, mut s) = protected_vm();
        let mut fence = PrimaryFence::new(1, 6);
        fence.step(FenceInput::Protected(vec!["s".into()]));
        assert_eq!(
            fence.step(FenceInput::SpareLost("s".into())),
            FenceAction::Ask
        );
        let mut released = false;
        let mut stopped = false;
        let mut took_over = false;
        for _ in 0..40 {
            match next() % 6 {
                0 => p.cut.store(next().is_multiple_of(2), Ordering::SeqCst),
                1 => s.cut.store(next().is_multiple_of(2), Ordering::SeqCst),
                2 | 3 if !released && !stopped => {
                    let a = match fence.step(FenceInput::Tick) {
                        FenceAction::Pause => continue,
                        a => a,
                    };
                    if a != FenceAction::Ask {
                        continue;
                    }
                    let v = match transact(&mut p, VM, |c| drop_spares(c, 1, "p", &["s".into()])) {
                        Ok(Outcome::Won(_)) => Verdict::Won,
                        Ok(Outcome::Refused(r)) => Verdict::Refused(r),
                        Err(_) => Verdict::Unreachable,
                    };
                    match fence.step(FenceInput::Verdict(v)) {
                        FenceAction::Release { .. } => released = true,
                        FenceAction::Stop(_) => stopped = true,
                        FenceAction::Continue => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
                4 | 5 if !took_over => {
                    if let Ok(Outcome::Won(r)) = transact(&mut s, VM, |c| promote(c, 1, 1, "s")) {
                        assert_eq!(r.term, 2);
                        took_over = true;
                    }
                }
                _ => {}
            }
            assert!(!(released && took_over), "both copies own the VM");
            if took_over && released {
                unreachable!();
            }
        }
        // Whoever did not win learns it once the arbiter is reachable.
        p.cut.store(false, Ordering::SeqCst);
        s.cut.store(false, Ordering::SeqCst);
        if took_over && !stopped {
            let o = transact(&mut p, VM, |c| unprotect(c, 1, "p")).unwrap();
            assert!(matches!(o, Outcome::Refused(_)), "{o:?}");
        }
        if released {
            let o = transact(&mut s, VM, |c| promote(c, 1, 1, "s")).unwrap();
            assert!(matches!(o, Outcome::Refused(_)), "{o:?}");
        }
    }
}

#[test]
fn the_fence_holds_until_an_answer_then_pauses_after_the_bound() {
    let mut f = PrimaryFence::new(3, 4);
    f.step(FenceInput::Protected(vec!["s".into()]));
    assert_eq!(f.step(FenceInput::SpareLost("s".into())), FenceAction::Ask);
    // Unreachable: keep asking, never release.
    for _ in 0..3 {
        assert_eq!(
            f.step(FenceInput::Verdict(Verdict::Unreachable)),
            FenceAction::Continue
        );
        assert_eq!(f.step(FenceInput::Tick), FenceAction::Ask);
    }
    assert_eq!(f.step(FenceInput::Tick), FenceAction::Pause);
    assert_eq!(f.step(FenceInput::Tick), FenceAction::Ask);
    assert_eq!(
        f.step(FenceInput::Verdict(Verdict::Won)),
        FenceAction::Release {
            resume: true,
            dropped: vec!["s".into()]
        }
    );
    assert_eq!(f.state(), &FenceState::Unprotected);
    assert!(f.recorded().is_empty() && f.leaving().is_empty());
}

#[test]
fn a_refusal_or_a_newer_term_stops_the_primary_for_good() {
    let mut f = PrimaryFence::new(3, 4);
    f.step(FenceInput::Protected(vec!["s".into()]));
    f.step(FenceInput::SpareLost("s".into()));
    let a = f.step(FenceInput::Verdict(Verdict::Refused(Refusal::Superseded {
        term: 4,
        primary: "s".into(),
    })));
    assert!(
        matches!(&a, FenceAction::Stop(w) if w.contains("term 4")),
        "{a:?}"
    );
    assert_eq!(
        f.step(FenceInput::Verdict(Verdict::Won)),
        FenceAction::Continue
    );
    assert_eq!(f.state(), &FenceState::Superseded);
    let mut g = PrimaryFence::new(3, 4);
    g.step(FenceInput::Protected(vec!["s".into()]));
    // An older or equal term is not a supersession.
    assert_eq!(g.step(FenceInput::SupersededBy(3)), FenceAction::Continue);
    assert!(matches!(
        g.step(FenceInput::SupersededBy(5)),
        FenceAction::Stop(_)
    ));
}

#[test]
fn terms_at_the_top_of_the_range_are_refused_not_wrapped() {
    let top = Record {
        term: u64::MAX,
        primary: "p".into(),
        spares: vec!["s".into()],
        async_spares: vec![],
        protected: true,
        sync: 1,
        stopped: true,
    };
    assert!(matches!(start(Some(&top), "q", true), Rule::Refuse(_)));
    let running = Record {
        stopped: false,
        ..top
    };
    assert!(matches!(
        promote(Some(&running), u64::MAX, 1, "s"),
        Rule::Refuse(_)
    ));
}

#[test]
fn losing_one_of_two_spares_keeps_the_primary_protected_by_the_other() {
    let mut f = PrimaryFence::new(1, 4);
    f.step(FenceInput::Protected(vec!["a".into(), "b".into()]));
    assert_eq!(f.step(FenceInput::SpareLost("a".into())), FenceAction::Ask);
    // A second loss while deciding joins the same question.
    assert_eq!(
        f.step(FenceInput::SpareLost("b".into())),
        FenceAction::Continue
    );
    assert_eq!(f.leaving(), ["a".to_string(), "b".to_string()]);
    assert_eq!(
        f.step(FenceInput::Verdict(Verdict::Won)),
        FenceAction::Release {
            resume: false,
            dropped: vec!["a".into(), "b".into()]
        }
    );
    assert_eq!(f.state(), &FenceState::Unprotected);
    let mut g = PrimaryFence::new(1, 4);
    g.step(FenceInput::Protected(vec!["a".into(), "b".into()]));
    g.step(FenceInput::SpareLost("a".into()));
    g.step(FenceInput::Verdict(Verdict::Won));
    assert_eq!(g.state(), &FenceState::Protected);
    assert_eq!(g.recorded(), ["b".to_string()]);
}

#[test]
fn membership_rules_add_drop_and_keep_the_sync_generation() {
    let (mut p, _) = protected_vm();
    // A second synchronous spare joins a protected record: same sync.
    let r = won(transact(&mut p, VM, |c| protect(c, 1, "p", &["t".into()])).unwrap());
    assert_eq!(
        (r.spares.clone(), r.sync),
        (vec!["s".into(), "t".into()], 1)
    );
    let r = won(transact(&mut p, VM, |c| add_async(c, 1, "p", "z")).unwrap());
    assert_eq!(r.async_spares, vec!["z".to_string()]);
    // Dropping one keeps the record protected; dropping all does not.
    let r = won(transact(&mut p, VM, |c| drop_spares(c, 1, "p", &["s".into()])).unwrap());
    assert!(r.protected && r.spares == ["t".to_string()]);
    let r = won(transact(&mut p, VM, |c| {
        drop_spares(c, 1, "p", &["t".into(), "z".into()])
    })
    .unwrap());
    assert!(!r.protected && r.spares.is_empty() && r.async_spares.is_empty());
    // Protected again: a new generation, so no old commit can claim.
    let r = won(transact(&mut p, VM, |c| protect(c, 1, "p", &["s".into()])).unwrap());
    assert_eq!((r.sync, r.protected), (2, true));
    assert!(matches!(promote(Some(&r), 1, 1, "s"), Rule::Refuse(_)));
}

/// Two synchronous spares and one asynchronous spare race for the record
/// after the primary died, in random orders, some of them dropped first:
/// exactly one wins, a dropped spare never does, and the asynchronous one
/// wins only when it asks while the record still names the dead term.
#[test]
fn several_spares_racing_exactly_one_wins_and_a_dropped_one_never_does() {
    let mut next = crate::replication::xorshift(0x1234_5678_9abc_def1u64);
    for _ in 0..2000 {
        let mut arb = MemoryArbiter::default();
        won(transact(&mut arb, VM, |c| start(c, "p", false)).unwrap());
        won(transact(&mut arb, VM, |c| {
            protect(c, 1, "p", &["a".into(), "b".into()])
        })
        .unwrap());
        won(transact(&mut arb, VM, |c| add_async(c, 1, "p", "z")).unwrap());
        let dropped: Vec<String> = ["a", "b", "z"]
            .iter()
            .filter(|_| next().is_multiple_of(4))
            .map(|s| s.to_string())
            .collect();
        if !dropped.is_empty() {
            won(transact(&mut arb, VM, |c| drop_spares(c, 1, "p", &dropped)).unwrap());
        }
        let mut order = vec!["a", "b", "z"];
        for i in (1..order.len()).rev() {
            order.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let mut winners = Vec::new();
        for who in order {
            let o = if who == "z" {
                transact(&mut arb, VM, |c| promote_async(c, 1, who)).unwrap()
            } else {
                transact(&mut arb, VM, |c| promote(c, 1, 1, who)).unwrap()
            };
            if let Outcome::Won(r) = o {
                assert_eq!((r.term, r.primary.as_str()), (2, who));
                winners.push(who);
            }
        }
        assert!(winners.len() <= 1, "two owners: {winners:?}");
        for w in &winners {
            assert!(!dropped.iter().any(|d| d == w), "dropped {w} won");
        }
        let eligible = ["a", "b", "z"]
            .iter()
            .any(|s| !dropped.iter().any(|d| d == s));
        let protected = ["a", "b"].iter().any(|s| !dropped.iter().any(|d| d == s));
        // With every spare dropped nobody wins; the async spare alone (every
        // sync spare dropped) still can.
        assert_eq!(
            winners.len(),
            usize::from(eligible && (protected || !dropped.iter().any(|d| d == "z")))
        );
    }
}
