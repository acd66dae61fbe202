//! `replication_messages`: the replication messages a standby or primary
//! decodes from frame payloads (`engine::replication::wire`), and the
//! arbiter's stored record (`engine::replication::arbiter`).
//!
//! Input: a selector byte (which message), then its payload. Checks that a
//! decoded message encodes to at most as many bytes and decodes back to
//! itself.

use std::fmt::Debug;

use engine::replication::arbiter;
use engine::replication::wire::{self, Ack, EpochBegin, EpochEnd, Heartbeat, Nack};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The message types, in selector order (the last is the arbiter record).
pub const MESSAGES: [&str; 6] = [
    "EpochBegin",
    "EpochEnd",
    "Ack",
    "Nack",
    "Heartbeat",
    "Record",
];

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(what: &str, b: &[u8]) {
    let Ok(m) = wire::decode::<T>(what, b) else {
        return;
    };
    let e = wire::encode(&m);
    assert!(e.len() <= b.len(), "{what}: the encoding grew");
    let again = wire::decode::<T>(what, &e).expect("a re-encoded message decodes");
    assert_eq!(again, m, "{what}: round trip changed the message");
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    match usize::from(sel) % MESSAGES.len() {
        0 => round_trip::<EpochBegin>("EpochBegin", payload),
        1 => round_trip::<EpochEnd>("EpochEnd", payload),
        2 => round_trip::<Ack>("Ack", payload),
        3 => round_trip::<Nack>("Nack", payload),
        4 => round_trip::<Heartbeat>("Heartbeat", payload),
        _ => {
            let Ok(r) = arbiter::decode("fuzz", payload) else {
                return;
            };
            let e = arbiter::encode(&r);
            if e.len() > arbiter::MAX_RECORD_BYTES {
                // A record just under the cap that omits `async_spares`
                // grows by its default: past the cap it is refused, rightly.
                return;
            }
            let again = arbiter::decode("fuzz", &e).expect("a re-encoded record decodes");
            assert_eq!(again, r, "Record: round trip changed the record");
        }
    }
}
