//! Whole-checkpoint validation before anything is applied.
//!
//! [`verify`] reads a checkpoint end to end and checks the container and
//! every payload this crate understands, so the engine can refuse a damaged
//! or foreign checkpoint before touching the VM.

use std::io::Read;

use crate::error::{CheckpointError, Result};
use crate::fingerprint::{Fingerprint, MachineConfig};
use crate::format::{read_full, CheckpointReader, Header, Integrity, Limits, SectionId};
use crate::{devices, disk, pages};

/// Reads a whole checkpoint and checks everything that can be checked
/// without a VM, so a file can be validated before anything is applied:
///
/// - the container (header, fingerprint if `expected` is given, every
///   section's limits and CRC, duplicates, the End section);
/// - that nothing follows the End section;
/// - `Config`: decodes as [`MachineConfig`] whose fingerprint equals the
///   header's;
/// - `Memory`: every page record is valid (see [`pages::decode_records`]);
/// - `Disk`: a disk index, then valid page records and no XOR deltas;
/// - `Devices`: a valid list of device records (see [`devices::decode`]);
/// - `Console`: at least 8 bytes (the position, then the epoch's output).
///
/// `Vcpus` and `Vm` payloads, and each device record's own bytes, are only
/// checked by CRC here.
pub fn verify<R: Read>(r: R, limits: &Limits, expected: Option<&Fingerprint>) -> Result<Header> {
    verify_with(r, limits, expected, |id, payload| match id {
        SectionId::Memory => {
            pages::decode_records_with_deltas(payload, |_, _| Ok(()), |_, _| Ok(()), |_, _| Ok(()))
        }
        SectionId::Disk => disk::decode(payload, |_, _| Ok(()), |_, _| Ok(())).map(|_| ()),
        _ => Ok(()),
    })
}

/// [`verify`] that hands each section's payload to `section` (after the
/// section's own checks passed), so a reader can decode what it needs in
/// the same pass instead of reading the checkpoint twice. `Memory`
/// payloads are validated only by what `section` does with them: decode
/// them with one of the `pages::decode_records*` functions. Nothing may
/// be applied to a VM before this returns `Ok`: a later section can still
/// fail.
pub fn verify_with<R: Read>(
    r: R,
    limits: &Limits,
    expected: Option<&Fingerprint>,
    mut section: impl FnMut(SectionId, &[u8]) -> Result<()>,
) -> Result<Header> {
    let mut reader = CheckpointReader::new(r, limits, expected)?;
    let header = *reader.header();
    while let Some((id, payload)) = reader.next_section()? {
        check_section(&header, id, &payload)?;
        section(id, &payload)?;
    }
    let mut inner = reader.into_inner();
    let mut probe = [0u8; 1];
    if read_full(&mut inner, &mut probe)? != 0 {
        return Err(CheckpointError::TrailingData);
    }
    Ok(header)
}

/// [`verify_with`] for a checkpoint held in memory: the same checks, with
/// each payload handed to `section` as a slice of `bytes` (not copied), so
/// what the caller keeps of it can point into `bytes`. With
/// [`Integrity::Authenticated`] (bytes from an authenticated channel) the
/// section CRCs are not recomputed; every other check is the same.
pub fn verify_slice_with<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    expected: Option<&Fingerprint>,
    integrity: Integrity,
    mut section: impl FnMut(SectionId, &'a [u8]) -> Result<()>,
) -> Result<Header> {
    let mut reader = CheckpointReader::new(bytes, limits, expected)?.with_integrity(integrity);
    let header = *reader.header();
    while let Some((id, payload)) = reader.next_section_borrowed()? {
        check_section(&header, id, payload)?;
        section(id, payload)?;
    }
    if !reader.into_inner().is_empty() {
        return Err(CheckpointError::TrailingData);
    }
    Ok(header)
}

/// The checks of one section's payload that need no VM (see [`verify`]).
fn check_section(header: &Header, id: SectionId, payload: &[u8]) -> Result<()> {
    match id {
        SectionId::Config => {
            let cfg = MachineConfig::decode(payload)?;
            let fp = cfg.fingerprint();
            if fp != header.fingerprint {
                return Err(CheckpointError::BadPayload {
                    id,
                    reason: format!(
                        "configuration hashes to {} but the header says {}",
                        fp.short(),
                        header.fingerprint.short()
                    ),
                });
            }
        }
        SectionId::Devices => {
            devices::decode(payload)?;
        }
        SectionId::Disk => {
            disk::split(payload)?;
        }
        SectionId::Console if payload.len() < 8 => {
            return Err(CheckpointError::BadPayload {
                id,
                reason: format!("expected at least 8 bytes, got {}", payload.len()),
            });
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::CheckpointWriter;

    fn sample() -> Vec<u8> {
        let fp = Fingerprint::from_bytes([7; 32]);
        let mut w = CheckpointWriter::new(Vec::new(), &Header::incremental(5, 4, fp)).unwrap();
        w.write_section(SectionId::Vcpus, b"vcpus").unwrap();
        w.write_section(SectionId::Memory, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn verify_rejects_trailing_data() {
        let mut bytes = sample();
        assert_eq!(verify(&bytes[..], &Limits::default(), None).unwrap().seq, 5);
        bytes.push(0);
        assert!(matches!(
            verify(&bytes[..], &Limits::default(), None),
            Err(CheckpointError::TrailingData)
        ));
    }
}
