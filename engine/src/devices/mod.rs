//! Emulated devices and the port-I/O bus that routes guest `in`/`out` to them.

pub mod console;
pub mod pio;
pub mod serial;

pub use pio::{BusAction, PioBus};

/// Test helpers shared by the device tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::{Arc, Mutex};

    /// A console writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
