//! The console sink and its output-commit gate.
//!
//! Every byte the guest writes to COM1 gets a position (bytes since boot).
//! The position is part of every checkpoint, so a restored guest's output can
//! be lined up with what the original already printed.
//!
//! When the VM is protected by a shadow, output is *held*: bytes produced in
//! epoch e become visible only once the shadow has acknowledged checkpoint e.
//! The gate is the console's [`OutputCommit`]: an epoch's seal is the
//! output position at its capture, and releasing the epoch releases every
//! byte before that position. Unprotected, bytes pass straight through.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use super::output::OutputCommit;

/// Shared state of the console output.
pub struct OutputGate {
    out: Box<dyn Write + Send>,
    /// Bytes emitted by the guest so far (the position of the next byte).
    position: u64,
    /// Bytes not yet released, starting at position `held_start`.
    held: VecDeque<u8>,
    held_start: u64,
    /// Hold output until released (protected mode).
    holding: bool,
    /// Bytes kept for the next epoch's trailer (even if released), starting at `epoch_start`.
    epoch_bytes: Vec<u8>,
    epoch_start: u64,
    /// (epoch, output position at its capture), oldest first.
    seals: VecDeque<(u64, u64)>,
    /// The last write to `out` failed (reported once).
    write_failed: bool,
}

/// Most sealed epochs remembered; older seals merge into the next (a link
/// that never acks is declared lost long before this).
const MAX_SEALS: usize = 4096;

impl OutputGate {
    fn write_out(&mut self, bytes: &[u8]) {
        // A console that cannot be written (closed pipe, full disk) must not
        // stop the guest; the bytes stay accounted in `position`.
        match self.out.write_all(bytes).and_then(|_| self.out.flush()) {
            // Said once, not once per byte: the bytes stay accounted.
            Err(e) if !self.write_failed => {
                self.write_failed = true;
                tracing::warn!("console write failed: {e}; further output is counted but dropped");
            }
            Err(_) => {}
            Ok(()) => self.write_failed = false,
        }
    }

    /// Releases every held byte before position `upto`.
    pub fn release_to(&mut self, upto: u64) {
        let n = upto
            .saturating_sub(self.held_start)
            .min(self.held.len() as u64) as usize;
        if n == 0 {
            return;
        }
        let bytes: Vec<u8> = self.held.drain(..n).collect();
        self.held_start += n as u64;
        self.write_out(&bytes);
    }

    /// Starts or stops holding output. Stopping releases everything held.
    pub fn set_holding(&mut self, hold: bool) {
        self.holding = hold;
        if !hold {
            let pos = self.position;
            self.release_to(pos);
        }
    }

    /// Whether output is being held.
    pub fn holding(&self) -> bool {
        self.holding
    }

    /// The position of the next byte.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The position of the first byte not yet released.
    pub fn released(&self) -> u64 {
        self.held_start
    }

    /// The bytes not yet released: (their start position, the bytes).
    pub fn held(&self) -> (u64, Vec<u8>) {
        (self.held_start, self.held.iter().copied().collect())
    }

    /// Takes the bytes emitted while holding since the previous call:
    /// (start position, bytes); the bytes end at the current position.
    /// Called at each epoch boundary while the VM is paused. Bytes emitted
    /// while not holding were released at once and are not included.
    pub fn take_epoch_output(&mut self) -> (u64, Vec<u8>) {
        let bytes = std::mem::take(&mut self.epoch_bytes);
        self.epoch_start = self.position;
        (self.position - bytes.len() as u64, bytes)
    }

    /// Emits `bytes` at once, advancing the position (a standby re-emitting
    /// the committed output of the epoch it takes over from).
    pub fn emit(&mut self, bytes: &[u8]) {
        self.position += bytes.len() as u64;
        self.held_start = self.position;
        self.write_out(bytes);
    }

    /// Points the console at `out`, continuing the guest's output at byte
    /// `position` (a restored or taken-over guest). Anything held is dropped:
    /// it belonged to the run this one replaces.
    pub fn reopen(&mut self, out: Box<dyn Write + Send>, position: u64) {
        self.out = out;
        self.position = position;
        self.held.clear();
        self.held_start = position;
        self.epoch_bytes.clear();
        self.epoch_start = position;
        self.seals.clear();
    }
}

impl OutputCommit for OutputGate {
    fn seal(&mut self, seq: u64) {
        let pos = self.position;
        match self.seals.back_mut() {
            Some(last) if last.0 >= seq => last.1 = pos,
            _ => self.seals.push_back((seq, pos)),
        }
        if self.seals.len() > MAX_SEALS {
            self.seals.pop_front();
        }
    }

    fn release(&mut self, seq: u64) {
        let mut upto = None;
        while let Some(&(s, pos)) = self.seals.front() {
            if s > seq {
                break;
            }
            upto = Some(pos);
            self.seals.pop_front();
        }
        if let Some(pos) = upto {
            self.release_to(pos);
        }
    }

    fn set_holding(&mut self, hold: bool) {
        OutputGate::set_holding(self, hold);
        if !hold {
            self.seals.clear();
        }
    }

    fn holding(&self) -> bool {
        self.holding
    }
}

/// The writer given to the UART: counts, holds and forwards bytes.
#[derive(Clone)]
pub struct ConsoleSink {
    gate: Arc<Mutex<OutputGate>>,
}

impl ConsoleSink {
    /// A sink writing to `out`, starting at byte `position` of the guest's output.
    pub fn new(out: Box<dyn Write + Send>, position: u64) -> Self {
        ConsoleSink {
            gate: Arc::new(Mutex::new(OutputGate {
                out,
                position,
                held: VecDeque::new(),
                held_start: position,
                holding: false,
                epoch_bytes: Vec::new(),
                epoch_start: position,
                seals: VecDeque::new(),
                write_failed: false,
            })),
        }
    }

    /// A sink on an existing gate.
    pub fn on(gate: Arc<Mutex<OutputGate>>) -> Self {
        ConsoleSink { gate }
    }

    /// A shared handle on the gate.
    pub fn gate(&self) -> Arc<Mutex<OutputGate>> {
        self.gate.clone()
    }

    fn lock(&self) -> MutexGuard<'_, OutputGate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number of bytes the guest has emitted so far.
    pub fn position(&self) -> u64 {
        self.lock().position
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.lock();
        g.position += buf.len() as u64;
        if g.holding {
            g.epoch_bytes.extend_from_slice(buf);
            g.held.extend(buf.iter().copied());
        } else {
            g.held_start = g.position;
            g.write_out(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::devices::test_util::SharedBuf as Shared;

    #[test]
    fn counts_bytes_from_the_start_position() {
        let buf = Shared::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), 100);
        sink.write_all(b"hello").unwrap();
        sink.write_all(b"!").unwrap();
        assert_eq!(sink.position(), 106);
        assert_eq!(&*buf.0.lock().unwrap(), b"hello!");
    }

    #[test]
    fn held_output_is_released_only_up_to_the_commit_position() {
        let buf = Shared::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), 0);
        let gate = sink.gate();
        sink.write_all(b"free ").unwrap();
        assert_eq!(
            gate.lock().unwrap().take_epoch_output(),
            (5, vec![]),
            "released bytes are not epoch output"
        );
        gate.lock().unwrap().set_holding(true);
        sink.write_all(b"epoch1 ").unwrap();
        let (s1, e1) = gate.lock().unwrap().take_epoch_output();
        sink.write_all(b"epoch2 ").unwrap();
        let (s2, e2) = gate.lock().unwrap().take_epoch_output();
        assert_eq!((s1, &e1[..]), (5, &b"epoch1 "[..]));
        assert_eq!((s2, &e2[..]), (12, &b"epoch2 "[..]));
        let out = |b: &Shared| b.0.lock().unwrap().clone();
        assert_eq!(out(&buf), b"free ", "held output escaped before any commit");
        gate.lock().unwrap().release_to(12);
        assert_eq!(out(&buf), b"free epoch1 ");
        // Releasing an older position again changes nothing.
        gate.lock().unwrap().release_to(3);
        assert_eq!(out(&buf), b"free epoch1 ");
        gate.lock().unwrap().set_holding(false);
        assert_eq!(out(&buf), b"free epoch1 epoch2 ");
        sink.write_all(b"x").unwrap();
        assert_eq!(out(&buf), b"free epoch1 epoch2 x");
        assert_eq!(gate.lock().unwrap().released(), 20);
    }

    #[test]
    fn output_is_released_by_acknowledged_epoch() {
        let buf = Shared::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), 0);
        let gate = sink.gate();
        let out = |b: &Shared| b.0.lock().unwrap().clone();
        OutputCommit::set_holding(&mut *gate.lock().unwrap(), true);
        sink.write_all(b"a").unwrap();
        gate.lock().unwrap().seal(1);
        sink.write_all(b"b").unwrap();
        gate.lock().unwrap().seal(2);
        sink.write_all(b"c").unwrap();
        // A retried capture of epoch 3 seals it twice: the later end wins.
        gate.lock().unwrap().seal(3);
        sink.write_all(b"d").unwrap();
        gate.lock().unwrap().seal(3);
        sink.write_all(b"e").unwrap();
        gate.lock().unwrap().release(0);
        assert_eq!(out(&buf), b"", "nothing sealed at or before epoch 0");
        gate.lock().unwrap().release(2);
        assert_eq!(out(&buf), b"ab");
        // An ack for an older epoch after a newer one changes nothing.
        gate.lock().unwrap().release(1);
        assert_eq!(out(&buf), b"ab");
        gate.lock().unwrap().release(3);
        assert_eq!(out(&buf), b"abcd", "unsealed output is still held");
        OutputCommit::set_holding(&mut *gate.lock().unwrap(), false);
        assert_eq!(out(&buf), b"abcde");
    }
}
