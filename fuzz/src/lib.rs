//! The harnesses of hotspare's fuzz targets (`fuzz_targets/`, one per
//! decoder family), kept in a library so the seed generator
//! (`examples/seeds.rs`) and the corpus replay test (`tests/corpus.rs`) use
//! the same code on stable Rust.
//!
//! Every harness feeds arbitrary bytes to the real decoder and, where it
//! accepts them, checks a property of what it decoded (a round trip, two
//! decoders agreeing, a refused input changing nothing): a panic is a
//! finding. Inputs start with a control byte where a harness needs to choose
//! something (which message type, which checksums to repair).

pub mod container;
pub mod devices;
pub mod messages;
pub mod pages;
pub mod seeds;
pub mod state;
pub mod transport;
