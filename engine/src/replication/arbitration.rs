//! The primary's side of fencing, with I/O: it runs the rules of
//! [`super::fencing`] against the configured arbiter and turns the
//! [`PrimaryFence`]'s decisions into answers the replicator acts on.

use std::time::{Duration, Instant};

use super::arbiter::Arbiter;
use super::fencing::{self, FenceAction, FenceInput, FenceState, Outcome, PrimaryFence, Verdict};
use super::wire::FenceInfo;
use crate::error::{EngineError, Result};

/// How a primary is fenced.
pub struct FenceConfig {
    /// The arbiter.
    pub arbiter: Box<dyn Arbiter>,
    /// The VM's id (the record's key).
    pub vm: String,
    /// This primary's name in the record.
    pub name: String,
    /// How long output stays held without an answer from the arbiter
    /// before the guest is paused.
    pub hold: Duration,
    /// Start even if the record names a running primary (it is gone for good).
    pub supersede: bool,
    /// This process already holds the record's term (it won it by a
    /// takeover); otherwise only [`Arbitration::start`] makes it the owner.
    pub owned: bool,
}

/// The primary's fence and its arbiter.
pub struct Arbitration {
    cfg: FenceConfig,
    identity: Option<String>,
    term: u64,
    fence: PrimaryFence,
    next_tick: Instant,
    /// The record as this primary last wrote it.
    record: Option<super::arbiter::Record>,
    /// The arbiter's last failure was reported.
    announced: bool,
}

/// Fence ticks in a hold bound (at least one).
fn hold_ticks(hold: Duration) -> u32 {
    (hold.as_millis() as u64 / fencing::FENCE_TICK_MS).max(1) as u32
}

/// Marks `vm`'s record stopped in `term` under `name` (the guest ended),
/// asking again for up to `patience` while the arbiter does not answer.
/// Returns whether the record is now stopped in that term; says why not.
pub fn mark_stopped(
    arb: &mut dyn Arbiter,
    vm: &str,
    term: u64,
    name: &str,
    patience: Duration,
) -> bool {
    let until = Instant::now() + patience;
    loop {
        match fencing::transact(arb, vm, |c| fencing::finish(c, term, name)) {
            Ok(Outcome::Won(_)) => return true,
            Ok(Outcome::Refused(r)) => {
                eprintln!("hotspare: not marking the VM stopped: {r}");
                return false;
            }
            Err(e) if Instant::now() >= until => {
                eprintln!("hotspare: could not mark the VM stopped: {e}");
                return false;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(fencing::FENCE_TICK_MS)),
        }
    }
}

impl Arbitration {
    /// A fence for the primary of `term` (replaced by [`Arbitration::start`]
    /// for a fresh VM).
    pub fn new(cfg: FenceConfig, term: u64) -> Arbitration {
        Arbitration {
            fence: PrimaryFence::new(term, hold_ticks(cfg.hold)),
            cfg,
            identity: None,
            term,
            next_tick: Instant::now(),
            record: None,
            announced: false,
        }
    }

    /// What the arbiter is, for messages.
    pub fn describe(&self) -> String {
        self.cfg.arbiter.describe()
    }

    /// Starts the VM under the arbiter: takes the next term. Returns it.
    pub fn start(&mut self) -> Result<u64> {
        let (name, sup) = (self.cfg.name.clone(), self.cfg.supersede);
        let o = fencing::transact(&mut *self.cfg.arbiter, &self.cfg.vm, |c| {
            fencing::start(c, &name, sup)
        })
        .map_err(|e| EngineError::Config(format!("cannot start the VM: {e}")))?;
        match o {
            Outcome::Won(r) => {
                self.term = r.term;
                self.record = Some(r.clone());
                self.cfg.owned = true;
                self.fence = PrimaryFence::new(r.term, hold_ticks(self.cfg.hold));
                eprintln!(
                    "hotspare: arbiter {}: VM {:?} is ours in term {} (primary {:?})",
                    self.describe(),
                    self.cfg.vm,
                    r.term,
                    name
                );
                Ok(r.term)
            }
            Outcome::Refused(r) => Err(EngineError::Config(format!(
                "cannot start VM {:?}: {r}",
                self.cfg.vm
            ))),
        }
    }

    /// What every epoch tells the spares about their fence, without the
    /// receiving spare's own name and kind (each link fills those in).
    /// `Ok(None)`: the arbiter did not answer (do not sync now).
    pub fn fence_info(&mut self) -> Result<Option<FenceInfo>> {
        let identity = match &self.identity {
            Some(i) => i.clone(),
            None => match self.cfg.arbiter.identity() {
                Ok(i) => {
                    self.identity = Some(i.clone());
                    i
                }
                Err(e) => {
                    self.report(&e.to_string());
                    return Ok(None);
                }
            },
        };
        if self.record.is_none() {
            // A takeover winner has not written yet: its epochs still name
            // the record's generation and spares.
            match self.cfg.arbiter.read(&self.cfg.vm) {
                Ok(v) => self.record = v.record,
                Err(e) => {
                    self.report(&e.to_string());
                    return Ok(None);
                }
            }
        }
        let (sync, peers, async_peers) = match &self.record {
            Some(r) => (r.sync, r.spares.clone(), r.async_spares.clone()),
            None => (0, Vec::new(), Vec::new()),
        };
        Ok(Some(FenceInfo {
            vm: self.cfg.vm.clone(),
            arbiter: identity,
            sync,
            spare: String::new(),
            async_spare: false,
            peers,
            async_peers,
        }))
    }

    /// Records synchronous `spares` (each holds a commit at least as new as
    /// any output released) in the record. `Ok(false)`: the arbiter did not
    /// answer (ask again later). `Err(Superseded)`: another copy owns the VM.
    pub fn protect(&mut self, spares: &[String]) -> Result<bool> {
        let (name, term) = (self.cfg.name.clone(), self.term);
        let o = fencing::transact(&mut *self.cfg.arbiter, &self.cfg.vm, |c| {
            fencing::protect(c, term, &name, spares)
        });
        self.recorded(o, |f| {
            f.step(FenceInput::Protected(spares.to_vec()));
        })
    }

    /// Records `spare` as an asynchronous spare (like [`Arbitration::protect`]).
    pub fn add_async(&mut self, spare: &str) -> Result<bool> {
        let (name, term) = (self.cfg.name.clone(), self.term);
        let o = fencing::transact(&mut *self.cfg.arbiter, &self.cfg.vm, |c| {
            fencing::add_async(c, term, &name, spare)
        });
        self.recorded(o, |_| {})
    }

    /// Keeps a won record; a refusal means another copy owns the VM.
    fn recorded(
        &mut self,
        o: std::result::Result<Outcome, super::arbiter::ArbiterError>,
        then: impl FnOnce(&mut PrimaryFence),
    ) -> Result<bool> {
        match o {
            Ok(Outcome::Won(r)) => {
                self.announced = false;
                self.record = Some(r);
                then(&mut self.fence);
                Ok(true)
            }
            Ok(Outcome::Refused(r)) => Err(EngineError::Superseded(r.to_string())),
            Err(e) => {
                self.report(&e.to_string());
                Ok(false)
            }
        }
    }

    /// The synchronous spares the record names (as last written by this primary).
    pub fn recorded_spares(&self) -> &[String] {
        self.fence.recorded()
    }

    fn report(&mut self, why: &str) {
        if !self.announced {
            eprintln!("hotspare: {why}");
            self.announced = true;
        }
    }

    /// Whether output is held waiting for the arbiter.
    pub fn deciding(&self) -> bool {
        matches!(self.fence.state(), FenceState::Deciding { .. })
    }

    /// Feeds an input to the fence; asks the arbiter when it says so.
    /// Returns what the replicator must do (never `Ask`).
    pub fn step(&mut self, input: FenceInput) -> FenceAction {
        let action = if matches!(input, FenceInput::Tick) {
            // One fence tick per FENCE_TICK_MS of real time, however long
            // the arbiter took to answer (or not) in between: the hold
            // bound is a time, not a number of attempts.
            let now = Instant::now();
            let period = Duration::from_millis(fencing::FENCE_TICK_MS);
            let mut action = FenceAction::Continue;
            while self.next_tick <= now {
                self.next_tick += period;
                match self.fence.step(FenceInput::Tick) {
                    FenceAction::Continue => {}
                    FenceAction::Ask if action != FenceAction::Continue => {}
                    a => action = a,
                }
            }
            action
        } else {
            let a = self.fence.step(input);
            if matches!(a, FenceAction::Ask) {
                // Ticks count from the loss.
                self.next_tick = Instant::now() + Duration::from_millis(fencing::FENCE_TICK_MS);
            }
            a
        };
        match action {
            FenceAction::Ask => self.ask(),
            a => a,
        }
    }

    /// Asks the arbiter now, whatever the tick schedule (the guest ended).
    pub fn decide_now(&mut self) -> FenceAction {
        if self.deciding() {
            self.ask()
        } else {
            FenceAction::Continue
        }
    }

    /// Asks the arbiter to drop the lost spares from the record.
    fn ask(&mut self) -> FenceAction {
        let (name, term) = (self.cfg.name.clone(), self.term);
        let gone = self.fence.leaving().to_vec();
        let v = match fencing::transact(&mut *self.cfg.arbiter, &self.cfg.vm, |c| {
            fencing::drop_spares(c, term, &name, &gone)
        }) {
            Ok(Outcome::Won(r)) => {
                self.record = Some(r);
                Verdict::Won
            }
            Ok(Outcome::Refused(r)) => Verdict::Refused(r),
            Err(e) => {
                self.report(&format!(
                    "spare lost and {e}: output stays HELD until the arbiter answers"
                ));
                Verdict::Unreachable
            }
        };
        self.fence.step(FenceInput::Verdict(v))
    }

    /// Whether another copy owns the VM.
    pub fn superseded(&self) -> bool {
        matches!(self.fence.state(), FenceState::Superseded)
    }

    /// Marks the record stopped (the guest ended on its own), retrying for
    /// up to the hold bound. Returns whether the record is now stopped in
    /// this primary's term: only then may output still held be released
    /// (no spare can take over a stopped record).
    pub fn finish(&mut self) -> bool {
        if !self.cfg.owned || self.superseded() {
            return false;
        }
        mark_stopped(
            &mut *self.cfg.arbiter,
            &self.cfg.vm,
            self.term,
            &self.cfg.name,
            self.cfg.hold,
        )
    }
}
