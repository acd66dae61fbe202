//! The payload of a `Disk` section: which disk, then page records.
//!
//! ```text
//! u32 disk index        (the device order: virtio-blk.0 is 0)
//! page records          (as in a Memory section; the "address" of a
//!                        record is a byte offset in the disk, a multiple
//!                        of 4096; zero records mean "these blocks read as
//!                        zeros": a hole)
//! ```
//!
//! XOR-delta records are refused here: a delta base cache is keyed by
//! address, and disk offsets must never meet memory addresses in one.

use crate::error::{CheckpointError, Result};
use crate::format::SectionId;
use crate::pages;

/// Bytes before the records.
pub const HEADER_LEN: usize = 4;

/// Starts a `Disk` payload for disk `index`: append records after it.
pub fn header(index: u32) -> [u8; HEADER_LEN] {
    index.to_le_bytes()
}

/// Splits a `Disk` payload into its disk index and its records.
pub fn split(payload: &[u8]) -> Result<(u32, &[u8])> {
    if payload.len() < HEADER_LEN {
        return Err(CheckpointError::BadPayload {
            id: SectionId::Disk,
            reason: format!("{} bytes cannot hold the disk index", payload.len()),
        });
    }
    let index = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"));
    Ok((index, &payload[HEADER_LEN..]))
}

/// Decodes a `Disk` payload: data at byte offsets, and zero (hole) ranges.
pub fn decode(
    payload: &[u8],
    data: impl FnMut(u64, &[u8]) -> Result<()>,
    zero: impl FnMut(u64, u64) -> Result<()>,
) -> Result<u32> {
    let (index, records) = split(payload)?;
    pages::decode_records_with_deltas(records, data, zero, |off, _| {
        Err(CheckpointError::BadPayload {
            id: SectionId::Disk,
            reason: format!("disk {index}: an XOR-delta record at offset {off:#x}"),
        })
    })?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaCache;
    use crate::{Compression, MemoryEncoder, PAGE_SIZE};

    #[test]
    fn blocks_and_holes_round_trip_and_deltas_are_refused() {
        let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        let mut p = header(3).to_vec();
        let block: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        enc.encode_run(8192, &block, &mut p).unwrap();
        enc.encode_zero_run(1 << 30, 4, &mut p).unwrap();
        enc.flush(&mut p).unwrap();
        let (mut got, mut holes) = (Vec::new(), Vec::new());
        let i = decode(
            &p,
            |off, d| {
                got.push((off, d.to_vec()));
                Ok(())
            },
            |off, len| {
                holes.push((off, len));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(i, 3);
        let flat: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
        assert_eq!((got[0].0, flat), (8192, block.clone()));
        assert_eq!(holes, vec![(1 << 30, 4 * PAGE_SIZE as u64)]);
        assert!(split(&[1, 2])
            .unwrap_err()
            .to_string()
            .contains("disk index"));

        let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        enc.set_delta_cache(Some(DeltaCache::new(64)));
        let mut p = header(0).to_vec();
        enc.encode_run(0, &block[..PAGE_SIZE], &mut p).unwrap();
        enc.flush(&mut p).unwrap();
        let mut changed = block[..PAGE_SIZE].to_vec();
        changed[7] ^= 1;
        let mut p = header(0).to_vec();
        enc.encode_run(0, &changed, &mut p).unwrap();
        enc.flush(&mut p).unwrap();
        let e = decode(&p, |_, _| Ok(()), |_, _| Ok(())).unwrap_err();
        assert!(e.to_string().contains("XOR-delta"), "{e}");
    }
}
