//! `checkpoint_container`: the checkpoint container and everything a
//! standby decodes from one epoch (`checkpoint::verify`,
//! `engine::staged::StagedEpoch::parse`).
//!
//! Input: a control byte, then container bytes. The low three bits of the
//! control byte say which checksums to recompute before decoding
//! (`checkpoint::fuzzing::reseal`), so mutations reach the fields behind
//! them while the checksum checks stay reachable. Checks:
//! - the standby's one-pass parse never accepts what `verify` refuses, and
//!   both return the same header;
//! - a verified container verifies again when its own fingerprint is
//!   expected and is refused naming the mismatch for any other;
//! - a verified container is canonical: reading its sections and writing
//!   them again with `CheckpointWriter` gives back exactly its bytes.

use checkpoint::format::{CheckpointReader, CheckpointWriter, Limits};
use checkpoint::fuzzing::reseal;
use checkpoint::{CheckpointError, Fingerprint};
use engine::staged::StagedEpoch;

/// Small limits, so their refusals are reachable with small inputs.
pub const LIMITS: Limits = Limits {
    max_section_len: 1 << 20,
    max_sections: 16,
};
/// The standby's cap on decoded page bytes for one epoch.
const MAX_DECODED: u64 = 16 << 20;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let bytes = reseal(rest, ctl);
    let verified = checkpoint::verify(&bytes[..], &LIMITS, None);
    let mut staged = StagedEpoch::default();
    let parsed = staged.parse(&bytes, &LIMITS, None, MAX_DECODED);
    match (&verified, &parsed) {
        (Err(e), Ok(_)) => panic!("the standby parsed a container verify refuses ({e})"),
        (Ok(v), Ok(p)) => assert_eq!(v, p, "verify and parse read different headers"),
        _ => {}
    }
    let Ok(header) = verified else {
        return;
    };

    let fp = header.fingerprint;
    let again = checkpoint::verify(&bytes[..], &LIMITS, Some(&fp));
    assert_eq!(again.ok(), Some(header), "refused with its own fingerprint");
    let mut other = *fp.as_bytes();
    other[0] ^= 1;
    let other = Fingerprint::from_bytes(other);
    assert!(
        matches!(
            checkpoint::verify(&bytes[..], &LIMITS, Some(&other)),
            Err(CheckpointError::FingerprintMismatch { .. })
        ),
        "accepted with another fingerprint"
    );

    let mut r = CheckpointReader::new(&bytes[..], &LIMITS, None).expect("verified header");
    let mut w = CheckpointWriter::with_limits(Vec::new(), r.header(), &LIMITS)
        .expect("a verified header is valid");
    while let Some((id, payload)) = r.next_section().expect("verified section") {
        w.write_section(id, &payload)
            .expect("the writer takes what the reader accepted");
    }
    assert_eq!(
        w.finish().expect("finish"),
        bytes,
        "a verified container is not what the writer writes for its sections"
    );
}
