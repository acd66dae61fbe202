//! Epoch length as a policy (sans-IO).
//!
//! While the shadow keeps up, epochs follow the configured interval. When an
//! epoch falls due with the in-flight limit reached (the link or the shadow
//! is behind), the interval grows by half, up to a ceiling: fewer, larger
//! checkpoints move the same dirty pages with less per-epoch overhead, and
//! the primary stops re-arming a tick it cannot use. After a few epochs in
//! a row without a stall, the interval shrinks back by a quarter, never
//! below the configured one.
//!
//! The price of a longer epoch is latency: held output waits for the
//! commit of its epoch, so the ceiling bounds how long output can be held
//! beyond the configured interval.
//!
//! Opt-in (`hotspare run --max-interval-ms`). Measured on loopback with
//! the link overloaded (200k random page writes/s), the default instead
//! (a due epoch waits for an ack and fires as soon as one arrives: the
//! stream clocks itself) gave shorter pauses (6.1 against 9.2 ms p50),
//! more epochs (21.9 against 13.8 Hz) and lower ack latency for the same
//! page throughput; see `docs/performance.md`.

use std::time::Duration;

/// Epochs without a stall, in a row, before the interval shrinks.
pub const CALM_EPOCHS: u32 = 3;

/// The interval policy of one replication stream.
#[derive(Clone, Debug)]
pub struct EpochPolicy {
    configured: Duration,
    max: Duration,
    current: Duration,
    calm: u32,
}

impl EpochPolicy {
    /// A policy that starts at `configured` and never goes above `max`
    /// (raised to `configured` if smaller).
    pub fn new(configured: Duration, max: Duration) -> Self {
        EpochPolicy {
            configured,
            max: max.max(configured),
            current: configured,
            calm: 0,
        }
    }

    /// The interval to the next epoch.
    pub fn interval(&self) -> Duration {
        self.current
    }

    /// An epoch fell due while the in-flight limit was reached.
    pub fn on_stall(&mut self) {
        self.current = (self.current * 3 / 2).min(self.max);
        self.calm = 0;
    }

    /// An epoch was taken without waiting for an ack.
    pub fn on_epoch(&mut self) {
        self.calm += 1;
        if self.calm >= CALM_EPOCHS {
            self.calm = 0;
            self.current = (self.current * 3 / 4).max(self.configured);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn stalls_lengthen_up_to_the_ceiling() {
        let mut p = EpochPolicy::new(20 * MS, 160 * MS);
        assert_eq!(p.interval(), 20 * MS);
        p.on_stall();
        assert_eq!(p.interval(), 30 * MS);
        for _ in 0..20 {
            p.on_stall();
        }
        assert_eq!(p.interval(), 160 * MS);
    }

    #[test]
    fn calm_epochs_shrink_back_to_the_configured_interval_and_no_further() {
        let mut p = EpochPolicy::new(20 * MS, 160 * MS);
        for _ in 0..10 {
            p.on_stall();
        }
        // Fewer than CALM_EPOCHS calm epochs change nothing.
        for _ in 0..CALM_EPOCHS - 1 {
            p.on_epoch();
        }
        assert_eq!(p.interval(), 160 * MS);
        p.on_epoch();
        assert_eq!(p.interval(), 120 * MS);
        // A stall resets the calm count.
        p.on_epoch();
        p.on_stall();
        for _ in 0..CALM_EPOCHS - 1 {
            p.on_epoch();
        }
        assert_eq!(p.interval(), 160 * MS);
        for _ in 0..100 {
            p.on_epoch();
        }
        assert_eq!(p.interval(), 20 * MS);
    }

    #[test]
    fn a_ceiling_below_the_interval_is_raised_to_it() {
        let mut p = EpochPolicy::new(50 * MS, 10 * MS);
        p.on_stall();
        assert_eq!(p.interval(), 50 * MS);
    }
}
