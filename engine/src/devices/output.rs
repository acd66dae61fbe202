//! Output commit: a device's externally visible effects wait for the
//! checkpoint that produced them.
//!
//! While the VM is protected, whatever a device emits (console bytes; next,
//! disk writes and network frames) is held. At each capture, inside the
//! pause, the effects produced so far are sealed as the captured epoch's.
//! When the shadow acknowledges epoch `e`, everything sealed in epochs up
//! to `e` is released. Unprotected, effects pass straight through.

/// A device's held output, released by acknowledged epoch.
pub trait OutputCommit: Send {
    /// Everything emitted so far belongs to epoch `seq` (called in the
    /// pause that captures `seq`; sealing the same `seq` again moves its
    /// end forward, as a retried capture does).
    fn seal(&mut self, seq: u64);

    /// Releases everything sealed in epochs up to and including `seq`.
    fn release(&mut self, seq: u64);

    /// Starts holding (protected), or stops: stopping releases everything
    /// held, sealed or not, and lets new output pass.
    fn set_holding(&mut self, hold: bool);

    /// Whether output is held.
    fn holding(&self) -> bool;
}
