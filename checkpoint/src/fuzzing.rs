//! Helpers for the fuzz targets in `fuzz/`; not part of the crate's API.
//!
//! A fuzzer mutating checkpoint bytes almost never produces a valid CRC, so
//! it would spend its time on the header checksum. [`reseal`] recomputes
//! the checksums of whatever the bytes hold, so the mutated fields behind
//! them (section ids, lengths, payloads, the End section) are what gets
//! exercised. Which checksums are fixed is chosen by the caller, so the
//! checksum checks themselves stay reachable.

use crate::format::{self, SectionId, HEADER_LEN, SECTION_HEADER_LEN};

/// [`reseal`]: recompute the header CRC.
pub const RESEAL_HEADER: u8 = 1;
/// [`reseal`]: recompute every complete section's CRC.
pub const RESEAL_SECTIONS: u8 = 2;
/// [`reseal`]: rewrite an 8-byte End payload (section count, CRC of the
/// section CRCs) to match the sections before it.
pub const RESEAL_END: u8 = 4;

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// A copy of `bytes` with the checksums `flags` asks for recomputed
/// (`RESEAL_*` bits). Sections are walked as a reader would until one does
/// not fit in the bytes or the End section is reached; what follows is
/// copied unchanged.
pub fn reseal(bytes: &[u8], flags: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.len() < HEADER_LEN {
        return b;
    }
    if flags & RESEAL_HEADER != 0 {
        let crc = crc32fast::hash(&b[..HEADER_LEN - 4]);
        b[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
    let mut at = HEADER_LEN;
    let mut count = 0u32;
    let mut crcs = crc32fast::Hasher::new();
    while b.len() - at >= SECTION_HEADER_LEN {
        let id = le_u32(&b[at..]);
        let len = le_u64(&b[at + 4..]);
        let start = at + SECTION_HEADER_LEN;
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= b.len())
        else {
            break;
        };
        let is_end = id == SectionId::End.as_u32();
        if is_end && len == format::END_PAYLOAD_LEN as u64 && flags & RESEAL_END != 0 {
            b[start..start + 4].copy_from_slice(&count.to_le_bytes());
            let all = crcs.clone().finalize();
            b[start + 4..start + 8].copy_from_slice(&all.to_le_bytes());
        }
        if flags & RESEAL_SECTIONS != 0 {
            let crc = format::section_crc(id, len, &b[start..end]);
            b[at + 12..start].copy_from_slice(&crc.to_le_bytes());
        }
        if is_end {
            break;
        }
        count = count.wrapping_add(1);
        crcs.update(&b[at + 12..start]);
        at = end;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CheckpointWriter, Header, Limits};
    use crate::{verify, CheckpointError, Fingerprint};

    fn sample() -> Vec<u8> {
        let h = Header::incremental(5, 4, Fingerprint::from_bytes([7; 32]));
        let mut w = CheckpointWriter::new(Vec::new(), &h).unwrap();
        w.write_section(SectionId::Vcpus, b"vcpus").unwrap();
        w.write_section(SectionId::Memory, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn resealing_a_valid_checkpoint_changes_nothing() {
        let b = sample();
        assert_eq!(reseal(&b, 7), b);
        assert_eq!(reseal(&b[..40], 7), &b[..40]);
    }

    #[test]
    fn each_flag_repairs_its_checksum() {
        let good = sample();
        let all = RESEAL_HEADER | RESEAL_SECTIONS | RESEAL_END;
        // A changed sequence number: only the header CRC is wrong.
        let mut b = good.clone();
        b[16] = 6;
        b[24] = 5;
        let r = |b: &[u8], f| verify(&reseal(b, f)[..], &Limits::default(), None);
        assert!(matches!(
            r(&b, 0),
            Err(CheckpointError::HeaderChecksum { .. })
        ));
        assert_eq!(r(&b, RESEAL_HEADER).unwrap().seq, 6);
        // A changed payload byte: the section CRC, then the End's CRC of
        // CRCs are wrong.
        let mut b = good.clone();
        b[HEADER_LEN + SECTION_HEADER_LEN] = b'V';
        assert!(matches!(
            r(&b, RESEAL_HEADER),
            Err(CheckpointError::SectionChecksum { .. })
        ));
        assert!(matches!(
            r(&b, RESEAL_HEADER | RESEAL_SECTIONS),
            Err(CheckpointError::EndMismatch { .. })
        ));
        assert!(r(&b, all).is_ok());
    }
}
