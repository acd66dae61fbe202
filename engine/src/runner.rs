//! Running a VM to completion: the supervisor loop.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::vcpu::StopReason;
use crate::vm::Vm;

/// How often the supervisor checks whether every vCPU halted for good.
pub const HALT_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Something the supervisor calls on every tick (e.g. a checkpointer).
pub trait Periodic {
    /// Time until the next call is due.
    fn next_due(&self) -> Duration;
    /// Called when due.
    fn tick(&mut self, vm: &Vm) -> Result<()>;
}

/// Runs until the guest stops; calls `periodic` when due.
pub fn supervise(vm: &mut Vm, mut periodic: Option<&mut dyn Periodic>) -> Result<StopReason> {
    let mut next_probe = Instant::now() + HALT_PROBE_INTERVAL;
    loop {
        let mut wait = next_probe.saturating_duration_since(Instant::now());
        if let Some(p) = periodic.as_deref() {
            wait = wait.min(p.next_due());
        }
        if let Some(reason) = vm.wait_stop(wait) {
            return Ok(vm.shutdown(reason));
        }
        if let Some(p) = periodic.as_deref_mut() {
            if p.next_due().is_zero() {
                if let Err(e) = p.tick(vm) {
                    vm.shutdown(StopReason::Error(e.to_string()));
                    return Err(e);
                }
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
