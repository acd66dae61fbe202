//! Running a VM to completion: the supervisor loop.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::vcpu::{Shared, StopReason, Woken};
use crate::vm::Vm;

/// Wakes the supervisor before its next tick is due, from any thread, so
/// that it can tick rarely while nothing happens and still act at once on
/// what it would otherwise poll for (a lost link, a control command, a
/// failed disk). It then calls [`Periodic::next_due`] again.
#[derive(Clone)]
pub struct Doorbell(Arc<Shared>);

impl Doorbell {
    /// The doorbell of the supervisor waiting on `shared`.
    pub fn new(shared: Arc<Shared>) -> Doorbell {
        Doorbell(shared)
    }

    /// Wakes the supervisor.
    pub fn ring(&self) {
        self.0.nudge();
    }
}

/// A [`Doorbell`] handed over after its ringer was built (the control
/// socket is served before the VM exists, a disk before its VM's
/// supervisor runs): a ring before then rings nothing.
#[derive(Clone, Default)]
pub struct LateDoorbell(Arc<OnceLock<Doorbell>>);

impl LateDoorbell {
    /// Rings `bell` from now on (the first bell given stays).
    pub fn connect(&self, bell: Doorbell) {
        let _ = self.0.set(bell);
    }

    /// Rings the bell, if one was given.
    pub fn ring(&self) {
        if let Some(b) = self.0.get() {
            b.ring();
        }
    }
}

/// How often the supervisor checks whether every vCPU halted for good.
pub const HALT_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Something the supervisor calls on every tick (e.g. a checkpointer).
pub trait Periodic {
    /// Time until the next call is due.
    fn next_due(&self) -> Duration;
    /// Called when due.
    fn tick(&mut self, vm: &Vm) -> Result<()>;
    /// Called when the [`Doorbell`] rang before the next tick was due.
    fn rung(&mut self, _vm: &Vm) -> Result<()> {
        Ok(())
    }
}

/// Runs until the guest stops; calls `periodic` when due.
pub fn supervise(vm: &mut Vm, mut periodic: Option<&mut dyn Periodic>) -> Result<StopReason> {
    let mut next_probe = Instant::now() + HALT_PROBE_INTERVAL;
    loop {
        let mut wait = next_probe.saturating_duration_since(Instant::now());
        if let Some(p) = periodic.as_deref() {
            wait = wait.min(p.next_due());
        }
        let woken = vm.wait_stop(wait);
        if let Woken::Stopped(reason) = woken {
            return Ok(vm.shutdown(reason));
        }
        if let Some(p) = periodic.as_deref_mut() {
            let res = if p.next_due().is_zero() {
                p.tick(vm)
            } else if woken == Woken::Nudged {
                p.rung(vm)
            } else {
                Ok(())
            };
            if let Err(e) = res {
                vm.shutdown(StopReason::Error(e.to_string()));
                return Err(e);
            }
        }
        if Instant::now() >= next_probe {
            next_probe = Instant::now() + HALT_PROBE_INTERVAL;
            let halted = match vm.pause() {
                Ok(guard) => guard.all_stopped_for_good(),
                Err(_) if vm.shared.stop_reason().is_some() => false,
                Err(e) => return Err(e),
            };
            if halted {
                return Ok(vm.shutdown(StopReason::Halted));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doorbell_ends_the_wait_early_and_is_never_lost() {
        let shared = Shared::new(1);
        let bell = Doorbell::new(shared.clone());
        // Nothing rang: the wait times out.
        assert_eq!(shared.wait_stop(Duration::from_millis(20)), Woken::TimedOut);
        // Rung during a long wait: it ends at once.
        let ringer = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                bell.ring();
            })
        };
        let t = Instant::now();
        assert_eq!(shared.wait_stop(Duration::from_secs(30)), Woken::Nudged);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        ringer.join().unwrap();
        // Rung while nobody waited: the next wait returns at once, and
        // only that one.
        bell.ring();
        assert_eq!(shared.wait_stop(Duration::from_secs(30)), Woken::Nudged);
        assert_eq!(shared.wait_stop(Duration::from_millis(20)), Woken::TimedOut);
        // A stop wins over a ring.
        bell.ring();
        shared.request_stop(StopReason::Requested);
        assert_eq!(
            shared.wait_stop(Duration::from_secs(30)),
            Woken::Stopped(StopReason::Requested)
        );
    }
}
