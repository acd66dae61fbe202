//! Continuous replication to a shadow VM, output commit and failover.
//!
//! - [`primary`]: the protected VM's side: epochs, the stream, output release.
//! - [`standby`]: the shadow: staging, verification, apply, takeover.
//! - [`liveness`]: failure detection and the takeover decision (no I/O).
//! - [`wire`]: the replication messages carried in transport frames.
//!
//! See `docs/protocol.md` and `docs/failover.md`.

mod link;
pub mod liveness;
pub mod primary;
pub mod standby;
pub mod wire;

use std::time::Duration;

/// Heartbeat and failure-detection settings (both sides use the same).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Silence after which the peer is declared dead.
    pub timeout: Duration,
}

impl Default for Timing {
    /// 10 ms heartbeats, 300 ms timeout: thirty missed heartbeats before a
    /// takeover, which rides out scheduling stalls of shared 2-core hosts
    /// (tens of ms) with a wide margin. A crashed primary process is detected
    /// at once anyway: the kernel closes its sockets and the standby sees the
    /// heartbeat connection close without a goodbye.
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(10),
            timeout: Duration::from_millis(300),
        }
    }
}

impl Timing {
    /// The timeout in liveness ticks.
    pub fn timeout_ticks(&self) -> u32 {
        (self.timeout.as_micros() / liveness::TICK.as_micros()).max(1) as u32
    }
}
