//! Fencing: who may write the arbiter's record, and what the primary does
//! while the record decides its fate. No sockets, no clocks.
//!
//! The rules (`docs/fencing.md`):
//! - A primary starts a VM by writing term t+1 over a stopped record (or a
//!   missing one, term 1); a running record is refused unless the operator
//!   asks to supersede it.
//! - A primary records a synchronous spare (`protect`) once the spare holds
//!   a commit at least as new as any output released, and drops a lost one
//!   (`drop_spares`) before releasing any output that spare did not
//!   acknowledge; with none left the record says unprotected. Both need the
//!   record to still be its own: same term, same name. Asynchronous spares
//!   are recorded apart (`add_async`) and never gate output.
//! - A standby takes over only by writing term t+1 over the record of the
//!   term t it followed, and only if that record says protected, names it
//!   as a spare, and is of the sync its commit belongs to (`promote`). An
//!   asynchronous spare needs only the followed term and its name
//!   (`promote_async`), and asks only after a grace period.
//! - Every write is a compare-and-swap on the version read, so of two
//!   racing writers one wins and the other re-reads and re-decides.
//!
//! [`PrimaryFence`] is the primary's side: after losing a synchronous spare
//! it holds output until the arbiter has dropped that spare from the record
//! (release: the spares left, if any, gate output from then on) or says the
//! primary no longer owns the VM (stop); without an answer it keeps holding,
//! and after a bound it pauses the guest.

use super::arbiter::{Arbiter, ArbiterError, Record, Swap};

/// What a rule makes of the current record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Write this record.
    Write(Record),
    /// The record already says what the writer wants (an earlier write
    /// whose answer was lost): done, nothing to write.
    Already(Record),
    /// The writer may not change the record.
    Refuse(Refusal),
}

/// Why a rule refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another primary holds the VM in a newer term (or the record names
    /// another primary).
    #[error("superseded: the VM's primary is {primary:?} in term {term}")]
    Superseded {
        /// The record's term.
        term: u64,
        /// The record's primary.
        primary: String,
    },
    /// The VM already runs under another primary (starting it again would
    /// fork it).
    #[error("the VM already has a running primary {primary:?} in term {term} (if it is gone for good, start with --supersede)")]
    Running {
        /// The record's term.
        term: u64,
        /// The record's primary.
        primary: String,
    },
    /// The arbiter has no record of the VM.
    #[error("the arbiter has no record of this VM")]
    NoRecord,
    /// A standby may not take over; the reason names the record's field.
    #[error("not eligible to take over: {0}")]
    NotEligible(String),
}

/// The end of a transaction with the arbiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The record is now (or already was) this.
    Won(Record),
    /// The rule refused; the record is unchanged.
    Refused(Refusal),
}

/// Checks the record is `me`'s in `term` and still running.
fn owned<'a>(cur: Option<&'a Record>, term: u64, me: &str) -> Result<&'a Record, Refusal> {
    let r = cur.ok_or(Refusal::NoRecord)?;
    if r.term != term || r.primary != me || r.stopped {
        return Err(Refusal::Superseded {
            term: r.term,
            primary: r.primary.clone(),
        });
    }
    Ok(r)
}

/// A primary starts the VM.
pub fn start(cur: Option<&Record>, me: &str, supersede: bool) -> Rule {
    let (term, sync) = match cur {
        None => (1, 0),
        Some(r) if r.term == u64::MAX => {
            return Rule::Refuse(Refusal::NotEligible("the record's term cannot grow".into()))
        }
        Some(r) if r.stopped || supersede => (r.term + 1, r.sync),
        Some(r) => {
            return Rule::Refuse(Refusal::Running {
                term: r.term,
                primary: r.primary.clone(),
            })
        }
    };
    Rule::Write(Record {
        term,
        primary: me.into(),
        spares: Vec::new(),
        async_spares: Vec::new(),
        protected: false,
        sync,
        stopped: false,
    })
}

/// A primary records `spares` as synchronous spares protecting it, once
/// they hold a commit at least as new as any output it released. Spares
/// already recorded stay; `sync` is bumped only when the record goes from
/// unprotected to protected (the spares already recorded keep their
/// commits valid).
pub fn protect(cur: Option<&Record>, term: u64, me: &str, spares: &[String]) -> Rule {
    match owned(cur, term, me) {
        Ok(r) if r.protected && spares.iter().all(|s| r.spares.contains(s)) => {
            Rule::Already(r.clone())
        }
        Ok(r) => {
            let mut all = r.spares.clone();
            for s in spares {
                if !all.contains(s) {
                    all.push(s.clone());
                }
            }
            let async_spares = r
                .async_spares
                .iter()
                .filter(|a| !spares.contains(a))
                .cloned()
                .collect();
            Rule::Write(Record {
                spares: all,
                async_spares,
                protected: true,
                sync: if r.protected { r.sync } else { r.sync + 1 },
                ..r.clone()
            })
        }
        Err(e) => Rule::Refuse(e),
    }
}

/// A primary records `name` as an asynchronous (distant) spare: it may take
/// over only after a grace period in which no synchronous spare did, and
/// may lose the last moments (`promote_async`).
pub fn add_async(cur: Option<&Record>, term: u64, me: &str, name: &str) -> Rule {
    match owned(cur, term, me) {
        Ok(r) if r.async_spares.iter().any(|a| a == name) => Rule::Already(r.clone()),
        Ok(r) => {
            let mut async_spares = r.async_spares.clone();
            async_spares.push(name.to_string());
            Rule::Write(Record {
                spares: r.spares.iter().filter(|s| *s != name).cloned().collect(),
                async_spares,
                ..r.clone()
            })
        }
        Err(e) => Rule::Refuse(e),
    }
}

/// A primary that lost the spares `gone` removes them (synchronous or not)
/// before releasing output they did not acknowledge. Once no synchronous
/// spare is left the record says unprotected.
pub fn drop_spares(cur: Option<&Record>, term: u64, me: &str, gone: &[String]) -> Rule {
    match owned(cur, term, me) {
        Ok(r) => {
            let spares: Vec<String> = r
                .spares
                .iter()
                .filter(|s| !gone.contains(s))
                .cloned()
                .collect();
            let async_spares: Vec<String> = r
                .async_spares
                .iter()
                .filter(|s| !gone.contains(s))
                .cloned()
                .collect();
            let protected = r.protected && !spares.is_empty();
            if spares == r.spares && async_spares == r.async_spares && protected == r.protected {
                return Rule::Already(r.clone());
            }
            Rule::Write(Record {
                spares,
                async_spares,
                protected,
                ..r.clone()
            })
        }
        Err(e) => Rule::Refuse(e),
    }
}

/// A primary that lost its spares records that it runs unprotected, before
/// releasing output.
pub fn unprotect(cur: Option<&Record>, term: u64, me: &str) -> Rule {
    match owned(cur, term, me) {
        Ok(r) if !r.protected && r.spares.is_empty() => Rule::Already(r.clone()),
        Ok(r) => Rule::Write(Record {
            spares: Vec::new(),
            protected: false,
            ..r.clone()
        }),
        Err(e) => Rule::Refuse(e),
    }
}

/// A primary whose guest ended marks the record stopped.
pub fn finish(cur: Option<&Record>, term: u64, me: &str) -> Rule {
    match owned(cur, term, me) {
        Ok(r) => Rule::Write(Record {
            spares: Vec::new(),
            async_spares: Vec::new(),
            protected: false,
            stopped: true,
            ..r.clone()
        }),
        Err(e) => Rule::Refuse(e),
    }
}

/// A standby named `me`, holding a commit of sync `sync` from the primary
/// of term `followed`, takes the VM over in term `followed + 1`.
pub fn promote(cur: Option<&Record>, followed: u64, sync: u64, me: &str) -> Rule {
    take_over(cur, followed, me, |r| {
        if !r.protected {
            return Some(format!(
                "the primary {:?} recorded that it runs unprotected (this spare's state is stale)",
                r.primary
            ));
        }
        if !r.spares.iter().any(|s| s == me) {
            return Some(format!("{me:?} is not among the spares {:?}", r.spares));
        }
        (r.sync != sync).then(|| {
            format!(
                "this spare holds a commit of sync {sync}, the record is at sync {}",
                r.sync
            )
        })
    })
}

/// The asynchronous spare `me`, after its grace period, takes the VM over
/// from the primary of term `followed`: only if the record still names that
/// term (no synchronous spare took over meanwhile) and lists `me` as an
/// asynchronous spare. It does not need `protected`: a distant spare never
/// held output back, so it may lose the last moments, and says how many.
pub fn promote_async(cur: Option<&Record>, followed: u64, me: &str) -> Rule {
    take_over(cur, followed, me, |r| {
        (!r.async_spares.iter().any(|s| s == me)).then(|| {
            format!(
                "{me:?} is not among the asynchronous spares {:?}",
                r.async_spares
            )
        })
    })
}

/// What every takeover rule shares: the record of term `followed`, still
/// running, becomes `me`'s in `followed + 1` unless `ineligible` says why not.
fn take_over(
    cur: Option<&Record>,
    followed: u64,
    me: &str,
    ineligible: impl Fn(&Record) -> Option<String>,
) -> Rule {
    let Some(r) = cur else {
        return Rule::Refuse(Refusal::NoRecord);
    };
    let Some(next) = followed.checked_add(1) else {
        return Rule::Refuse(Refusal::NotEligible("the followed term cannot grow".into()));
    };
    if r.term == next && r.primary == me && !r.stopped {
        return Rule::Already(r.clone());
    }
    if r.term != followed {
        return Rule::Refuse(Refusal::Superseded {
            term: r.term,
            primary: r.primary.clone(),
        });
    }
    if r.stopped {
        return Rule::Refuse(Refusal::NotEligible("the guest stopped on its own".into()));
    }
    if let Some(why) = ineligible(r) {
        return Rule::Refuse(Refusal::NotEligible(why));
    }
    Rule::Write(Record {
        term: next,
        primary: me.into(),
        spares: Vec::new(),
        async_spares: Vec::new(),
        protected: false,
        sync: r.sync,
        stopped: false,
    })
}

/// Reads `vm`'s record, applies `rule`, and swaps the result in; a lost
/// race re-decides on the record that won. Errors only when the arbiter
/// does not answer (nothing was decided).
pub fn transact(
    arb: &mut dyn Arbiter,
    vm: &str,
    rule: impl Fn(Option<&Record>) -> Rule,
) -> Result<Outcome, ArbiterError> {
    let mut cur = arb.read(vm)?;
    // Each retry follows a write by someone else; a record does not
    // change this often in one failover.
    for _ in 0..32 {
        match rule(cur.record.as_ref()) {
            Rule::Already(r) => return Ok(Outcome::Won(r)),
            Rule::Refuse(x) => return Ok(Outcome::Refused(x)),
            Rule::Write(r) => match arb.swap(vm, cur.version, &r)? {
                Swap::Done(_) => return Ok(Outcome::Won(r)),
                Swap::Changed(now) => cur = now,
            },
        }
    }
    Err(ArbiterError::Unreachable {
        what: arb.describe(),
        why: format!("the record of {vm} kept changing under 32 attempts"),
    })
}

/// What the arbiter said, as the primary's fence sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The record still (or again) names this primary.
    Won,
    /// The record refused this primary: it no longer owns the VM.
    Refused(Refusal),
    /// No answer.
    Unreachable,
}

/// Inputs of the primary's fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceInput {
    /// One fence tick ([`FENCE_TICK_MS`]) passed.
    Tick,
    /// The link to a synchronous spare that gates output (a member of the
    /// commit set) was lost: it must leave the record before any output
    /// it did not acknowledge is released.
    SpareLost(String),
    /// The arbiter recorded these synchronous spares for this primary.
    Protected(Vec<String>),
    /// The arbiter's answer to dropping the lost spares ([`PrimaryFence::leaving`]).
    Verdict(Verdict),
    /// A peer said, in an authenticated frame, that `term` took over.
    SupersededBy(u64),
}

/// What the primary must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceAction {
    /// Nothing (keep holding, if holding).
    Continue,
    /// Ask the arbiter to drop the lost spares ([`PrimaryFence::leaving`]).
    Ask,
    /// The lost spares left the record: output they gated flows again (on
    /// the acks of the spares left, or freely if none is left). Resume the
    /// guest first if it was paused.
    Release {
        /// The guest was paused by [`FenceAction::Pause`].
        resume: bool,
        /// The spares that left the record.
        dropped: Vec<String>,
    },
    /// The hold bound passed without an answer: pause the guest.
    Pause,
    /// Another copy owns the VM: stop the guest without releasing anything.
    Stop(String),
}

/// The period of [`FenceInput::Tick`], in milliseconds.
pub const FENCE_TICK_MS: u64 = 50;

/// The primary's fence state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// The record names synchronous spares; output is released on their acks.
    Protected,
    /// A spare was lost: output held until the arbiter drops it.
    Deciding {
        /// Ticks since the (first) loss.
        ticks: u32,
        /// The guest is paused (the hold bound passed).
        paused: bool,
    },
    /// Recorded as unprotected: output flows.
    Unprotected,
    /// No longer the VM's primary.
    Superseded,
}

/// The primary's fence: holds output from a spare's loss until the arbiter
/// has dropped it from the record.
#[derive(Clone, Debug)]
pub struct PrimaryFence {
    term: u64,
    hold_ticks: u32,
    state: FenceState,
    /// Synchronous spares the record names.
    recorded: Vec<String>,
    /// Lost spares not yet dropped from the record.
    leaving: Vec<String>,
}

impl PrimaryFence {
    /// A fence for the primary of `term` that pauses its guest after
    /// `hold_ticks` ticks without an answer.
    pub fn new(term: u64, hold_ticks: u32) -> PrimaryFence {
        PrimaryFence {
            term,
            hold_ticks: hold_ticks.max(1),
            state: FenceState::Unprotected,
            recorded: Vec::new(),
            leaving: Vec::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> &FenceState {
        &self.state
    }

    /// The lost spares the next [`FenceAction::Ask`] must drop.
    pub fn leaving(&self) -> &[String] {
        &self.leaving
    }

    /// The synchronous spares the record names.
    pub fn recorded(&self) -> &[String] {
        &self.recorded
    }

    /// Feeds one input; returns what to do.
    pub fn step(&mut self, input: FenceInput) -> FenceAction {
        use FenceAction as A;
        if self.state == FenceState::Superseded {
            return A::Continue;
        }
        match input {
            FenceInput::SupersededBy(t) if t > self.term => {
                self.state = FenceState::Superseded;
                A::Stop(format!(
                    "a peer says term {t} took over (this primary is term {})",
                    self.term
                ))
            }
            FenceInput::SupersededBy(_) => A::Continue,
            FenceInput::Protected(names) => {
                for n in names {
                    if !self.recorded.contains(&n) {
                        self.recorded.push(n);
                    }
                }
                if matches!(self.state, FenceState::Unprotected) && !self.recorded.is_empty() {
                    self.state = FenceState::Protected;
                }
                A::Continue
            }
            FenceInput::SpareLost(name) => {
                if !self.leaving.contains(&name) {
                    self.leaving.push(name);
                }
                match self.state {
                    FenceState::Deciding { .. } => A::Continue,
                    _ => {
                        self.state = FenceState::Deciding {
                            ticks: 0,
                            paused: false,
                        };
                        A::Ask
                    }
                }
            }
            FenceInput::Tick => match &mut self.state {
                FenceState::Deciding { ticks, paused } => {
                    *ticks += 1;
                    if !*paused && *ticks >= self.hold_ticks {
                        *paused = true;
                        return A::Pause;
                    }
                    A::Ask
                }
                _ => A::Continue,
            },
            FenceInput::Verdict(v) => {
                let FenceState::Deciding { paused, .. } = self.state else {
                    return A::Continue;
                };
                match v {
                    Verdict::Won => {
                        let dropped = std::mem::take(&mut self.leaving);
                        self.recorded.retain(|r| !dropped.contains(r));
                        self.state = if self.recorded.is_empty() {
                            FenceState::Unprotected
                        } else {
                            FenceState::Protected
                        };
                        A::Release {
                            resume: paused,
                            dropped,
                        }
                    }
                    Verdict::Refused(r) => {
                        self.state = FenceState::Superseded;
                        A::Stop(r.to_string())
                    }
                    Verdict::Unreachable => A::Continue,
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "fencing_tests.rs"]
mod tests;
