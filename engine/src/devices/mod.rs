//! Emulated devices and the port-I/O bus that routes guest `in`/`out` to them.

pub mod console;
pub mod pio;
pub mod serial;

pub use pio::{BusAction, PioBus};
