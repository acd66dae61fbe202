//! Periodic local checkpoints: pause, capture, resume, write durably.

use std::time::{Duration, Instant};

use checkpoint::dirty::DirtyLedger;

use crate::capture;
use crate::error::Result;
use crate::runner::Periodic;
use crate::store::DirStore;
use crate::vm::Vm;

/// Figures of the checkpoints taken so far.
#[derive(Clone, Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints published.
    pub published: u64,
    /// Checkpoints that failed (their dirty bits were put back).
    pub failed: u64,
    /// Pause of each checkpoint.
    pub pauses: Vec<Duration>,
    /// Dirty pages of each checkpoint.
    pub pages: Vec<u64>,
}

/// Takes a checkpoint into a [`DirStore`] every interval.
pub struct LocalCheckpointer {
    store: DirStore,
    ledger: DirtyLedger,
    interval: Duration,
    next: Instant,
    /// Output of epochs whose checkpoint failed: (start position, bytes),
    /// carried into the next checkpoint so a restore can show it again.
    carry: Option<(u64, Vec<u8>)>,
    /// Figures so far.
    pub stats: CheckpointStats,
}

impl LocalCheckpointer {
    /// A checkpointer for `vm` into `store`. If the store has no base yet the
    /// first checkpoint is full. From here on the VM's output is held until
    /// the checkpoint that produced it is durable (call before the guest
    /// runs; [`LocalCheckpointer::finish`] releases the rest).
    pub fn new(vm: &Vm, store: DirStore, interval: Duration) -> LocalCheckpointer {
        vm.devices.hold_outputs(true);
        LocalCheckpointer {
            store,
            ledger: DirtyLedger::new(&vm.ledger_regions()),
            interval,
            next: Instant::now(),
            carry: None,
            stats: CheckpointStats::default(),
        }
    }

    /// Takes one checkpoint now.
    pub fn checkpoint(&mut self, vm: &Vm) -> Result<u64> {
        let full = self.store.last_seq().is_none();
        let guard = vm.pause()?;
        let seq = self.store.last_seq().map_or(1, |s| s + 1);
        let (mut epoch, harvest) = capture::capture(&guard, &mut self.ledger, full, seq)?;
        let pause = guard.paused_at().elapsed();
        drop(guard);
        if let Some((start, mut bytes)) = self.carry.take() {
            bytes.extend_from_slice(&epoch.output.1);
            epoch.output = (start, bytes);
        }
        match self.store.write_epoch(&epoch) {
            Ok(seq) => {
                self.ledger.commit(harvest);
                // Durable: its output may be seen.
                vm.devices.release_outputs(seq);
                self.stats.published += 1;
                crate::replication::push_bounded(&mut self.stats.pauses, pause);
                crate::replication::push_bounded(&mut self.stats.pages, epoch.pages.pages());
                tracing::debug!(
                    seq,
                    full,
                    pages = epoch.pages.pages(),
                    pause_us = pause.as_micros() as u64,
                    "checkpoint published"
                );
                Ok(seq)
            }
            Err(e) => {
                self.stats.failed += 1;
                self.carry = Some(std::mem::take(&mut epoch.output));
                self.ledger.put_back(harvest)?;
                Err(e)
            }
        }
    }

    /// The guest ended on its own with `exit_code`. The console output
    /// since the last checkpoint is recorded durably with the end
    /// (`store_end.rs`), then released: a kill between the two leaves a
    /// directory whose restore shows that output again instead of running
    /// the guest from the last checkpoint, which could print something
    /// else. If the record cannot be written the output stays unshown.
    /// With no checkpoint published yet there is nothing a restore could
    /// run again, and the output is released at once.
    pub fn finish(&mut self, vm: &Vm, exit_code: i32) -> Result<()> {
        if self.store.last_seq().is_some() {
            let (start, held) = vm
                .console_gate()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .held();
            self.store.write_end(start, held, exit_code)?;
            crate::faults::hit(crate::faults::Point::EndBeforeRelease);
        }
        vm.devices.hold_outputs(false);
        Ok(())
    }
}

impl Periodic for LocalCheckpointer {
    fn next_due(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    fn tick(&mut self, vm: &Vm) -> Result<()> {
        self.next = Instant::now() + self.interval;
        if let Err(e) = self.checkpoint(vm) {
            if vm.shared.stop_reason().is_some() {
                return Ok(());
            }
            // The VM keeps running; the bits are back in the ledger and the
            // next checkpoint includes them.
            tracing::error!("checkpoint failed, retrying at the next interval: {e}");
        }
        Ok(())
    }
}
