//! Continuous replication to a shadow VM, output commit and failover.
//!
//! - [`primary`]: the protected VM's side: epochs, the stream, output release.
//! - [`commit`]: which spares gate output and how far it is released (no I/O).
//! - [`coding`]: how sparse rewrites are coded, by the links' load (no I/O).
//! - [`standby`]: the shadow: staging, verification, apply, takeover.
//! - [`liveness`]: failure detection and the takeover decision (no I/O).
//! - [`hbconns`]: which heartbeat connection speaks for the primary (no I/O).
//! - [`bounds`]: what a standby accepts from a primary (no I/O).
//! - [`trust`]: which of a spare's answers a primary believes (no I/O).
//! - [`wire`]: the replication messages carried in transport frames.
//! - [`arbiter`]: the record that says who is primary (etcd, a file).
//! - [`fencing`]: who may change that record, and the primary's fence (no I/O).
//! - [`arbitration`]: the primary's fence run against the arbiter.
//!
//! See `docs/protocol.md`, `docs/failover.md` and `docs/fencing.md`.

pub mod arbiter;
pub mod arbitration;
pub mod bounds;
mod catchup;
pub mod coding;
pub mod commit;
pub mod consoleout;
pub mod copycoding;
pub mod fencing;
pub mod hbconns;
mod link;
mod livecopy;
pub mod liveness;
pub mod netout;
pub mod policy;
pub mod primary;
pub mod standby;
pub mod stats;
pub mod trust;
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

/// Most per-epoch figures kept in memory (at 40 epochs/s, about 27 minutes);
/// older ones are dropped so a long-running service does not grow.
pub const FIGURES_KEPT: usize = 1 << 16;

/// A xorshift64 stream for the decision cores' random-schedule tests.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A connected pair of `channel` connections on loopback, handshaken with
/// a test key under term 3: (primary's end, shadow's end).
#[cfg(test)]
pub(crate) fn loopback_pair(
    channel: transport::Channel,
) -> (transport::FramedConn, transport::FramedConn) {
    use transport::{FramedConn, HandshakeParams, Listener, Psk};
    let key = Psk::from_bytes(&[7u8; 32]).unwrap();
    let fp = Some([0xab; 32]);
    let l = Listener::bind("127.0.0.1:0").unwrap();
    let t = std::time::Duration::from_secs(20);
    std::thread::scope(|s| {
        let shadow = s.spawn(|| {
            l.accept(&HandshakeParams::new(&key, fp, channel, 3), t)
                .unwrap()
                .0
        });
        let params = HandshakeParams::new(&key, fp, channel, 3);
        let primary = FramedConn::connect(l.local_addr(), &params, t).unwrap().0;
        (primary, shadow.join().unwrap())
    })
}

/// Pushes onto a figures vector, dropping the oldest half past [`FIGURES_KEPT`].
pub fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    if v.len() >= FIGURES_KEPT {
        v.drain(..FIGURES_KEPT / 2);
    }
    v.push(x);
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_stay_bounded_and_keep_the_newest() {
        let mut v = Vec::new();
        for i in 0..(super::FIGURES_KEPT * 3) {
            super::push_bounded(&mut v, i);
        }
        assert!(v.len() <= super::FIGURES_KEPT);
        assert_eq!(v.last(), Some(&(super::FIGURES_KEPT * 3 - 1)));
    }
}
