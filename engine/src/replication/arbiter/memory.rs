//! An in-process arbiter, for the decision tests: several handles share one
//! table, and each handle can be cut off (a partition between that side
//! and the arbiter) to answer `Unreachable`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{Arbiter, ArbiterError, Record, Swap, Versioned};

/// One side's handle on a shared in-memory table.
#[derive(Clone)]
pub struct MemoryArbiter {
    table: Arc<Mutex<BTreeMap<String, (u64, Record)>>>,
    /// This handle cannot reach the arbiter.
    pub cut: Arc<AtomicBool>,
}

impl Default for MemoryArbiter {
    fn default() -> Self {
        MemoryArbiter {
            table: Arc::default(),
            cut: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl MemoryArbiter {
    /// Another side's handle on the same table (reachable until cut).
    pub fn handle(&self) -> MemoryArbiter {
        MemoryArbiter {
            table: self.table.clone(),
            cut: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check(&self) -> Result<(), ArbiterError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(ArbiterError::Unreachable {
                what: self.describe(),
                why: "cut off".into(),
            });
        }
        Ok(())
    }
}

impl Arbiter for MemoryArbiter {
    fn describe(&self) -> String {
        "in-memory arbiter".into()
    }

    fn identity(&mut self) -> Result<String, ArbiterError> {
        self.check()?;
        Ok(format!("memory {:p}", Arc::as_ptr(&self.table)))
    }

    fn read(&mut self, vm: &str) -> Result<Versioned, ArbiterError> {
        self.check()?;
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match t.get(vm) {
            Some((v, r)) => Versioned {
                record: Some(r.clone()),
                version: *v,
            },
            None => Versioned {
                record: None,
                version: 0,
            },
        })
    }

    fn swap(&mut self, vm: &str, expect: u64, new: &Record) -> Result<Swap, ArbiterError> {
        self.check()?;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let now = t.get(vm).map_or(0, |e| e.0);
        if now != expect {
            return Ok(Swap::Changed(Versioned {
                record: t.get(vm).map(|e| e.1.clone()),
                version: now,
            }));
        }
        t.insert(vm.to_string(), (now + 1, new.clone()));
        Ok(Swap::Done(now + 1))
    }
}
