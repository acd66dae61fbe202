//! The console sink: where guest serial output goes, with its byte position.
//!
//! The position (bytes emitted since the guest booted) is part of every
//! checkpoint, so a restored guest's output can be lined up with what the
//! original already printed.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A writer that counts the bytes the guest has emitted.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    position: Arc<AtomicU64>,
}

impl ConsoleSink {
    /// A sink writing to `out`, starting at byte `position` of the guest's output.
    pub fn new(out: Box<dyn Write + Send>, position: u64) -> Self {
        ConsoleSink {
            out,
            position: Arc::new(AtomicU64::new(position)),
        }
    }

    /// A shared handle on the position counter.
    pub fn position_handle(&self) -> Arc<AtomicU64> {
        self.position.clone()
    }

    /// The number of bytes the guest has emitted so far.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Output goes straight through (no buffering in this process), so a
        // killed VMM has lost nothing it counted.
        self.out.write_all(buf)?;
        self.position.fetch_add(buf.len() as u64, Ordering::AcqRel);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn counts_bytes_from_the_start_position() {
        let buf = Shared::default();
        let mut sink = ConsoleSink::new(Box::new(buf.clone()), 100);
        sink.write_all(b"hello").unwrap();
        sink.write_all(b"!").unwrap();
        assert_eq!(sink.position(), 106);
        assert_eq!(&*buf.0.lock().unwrap(), b"hello!");
    }
}
