//! Tests that need the crate's internals (sessions, raw streams, the frame
//! reader). Everything runs on loopback (127.0.0.1, port 0).

mod attacks;
mod flow;
mod fuzz_harness;
mod handshake;
mod key;
mod listener;
mod props;
mod support;
