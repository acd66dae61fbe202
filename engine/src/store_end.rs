//! The end record of a local checkpoint chain (`docs/checkpoint-format.md`,
//! "The end record").
//!
//! A run that checkpoints locally holds the guest's output until the
//! checkpoint that produced it is durable. When the guest ends on its own,
//! the output since the last checkpoint is still held. Releasing it then
//! without a record would let a kill in the next instant leave a directory
//! whose newest checkpoint is older than what was shown: a restore would
//! run the guest again from there and could print something else. So the
//! run first writes this record durably (the checkpoint it follows, where
//! the held output starts, the output itself, the exit code), then
//! releases the output. A restore that finds the record on the newest
//! checkpoint shows that output again and reports the exit code instead of
//! running the guest.
//!
//! File `ended` in the checkpoint directory, little endian:
//! `magic "HSEND\0\0\x01"`, `after_seq: u64`, `start: u64`,
//! `exit_code: i32`, `len: u32`, `len` output bytes, `crc32: u32` of
//! everything before it.

use std::path::Path;

use crate::error::Result;
use crate::store::store_err;

/// The record's file name in the checkpoint directory.
pub const END_FILE: &str = "ended";
const MAGIC: &[u8; 8] = b"HSEND\0\0\x01";
/// Bytes before the output.
const HEAD: usize = 8 + 8 + 8 + 4 + 4;
/// The most output a record holds (what a guest prints between two
/// checkpoints is far less; a larger file is refused before it is read).
pub const MAX_OUTPUT: usize = 64 << 20;

/// A guest's end, after checkpoint `after_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndRecord {
    /// The newest checkpoint when the guest ended.
    pub after_seq: u64,
    /// The console position where `output` starts.
    pub start: u64,
    /// The guest's exit code.
    pub exit_code: i32,
    /// The output held since that checkpoint.
    pub output: Vec<u8>,
}

impl EndRecord {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEAD + self.output.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.after_seq.to_le_bytes());
        b.extend_from_slice(&self.start.to_le_bytes());
        b.extend_from_slice(&self.exit_code.to_le_bytes());
        b.extend_from_slice(&(self.output.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.output);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a record read from `dir`; any damage is an error naming it.
    pub fn decode(dir: &Path, b: &[u8]) -> Result<EndRecord> {
        let bad = |what: &str| {
            store_err(
                dir,
                format!("its end record ({END_FILE}) is unusable: {what}"),
            )
        };
        if b.len() < HEAD + 4 || &b[..8] != MAGIC {
            return Err(bad("not an end record (magic or size)"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes")) as usize;
        if len > MAX_OUTPUT || b.len() != HEAD + len + 4 {
            return Err(bad(&format!(
                "it says {len} bytes of output but holds {}",
                b.len().saturating_sub(HEAD + 4)
            )));
        }
        let crc = u32::from_le_bytes(b[HEAD + len..].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&b[..HEAD + len]) {
            return Err(bad("checksum mismatch"));
        }
        Ok(EndRecord {
            after_seq: u64_at(8),
            start: u64_at(16),
            exit_code: i32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
            output: b[HEAD..HEAD + len].to_vec(),
        })
    }

    /// The record in `dir`, if the run that wrote it ended on its own.
    pub fn read(dir: &Path) -> Result<Option<EndRecord>> {
        let path = dir.join(END_FILE);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_err(dir, format!("{END_FILE}: {e}"))),
        };
        if size > (HEAD + MAX_OUTPUT + 4) as u64 {
            return Err(store_err(
                dir,
                format!("its end record ({END_FILE}) is unusable: {size} bytes, more than a record can hold"),
            ));
        }
        let b = std::fs::read(&path).map_err(|e| store_err(dir, format!("{END_FILE}: {e}")))?;
        EndRecord::decode(dir, &b).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> EndRecord {
        EndRecord {
            after_seq: 37,
            start: 1157,
            exit_code: 3,
            output: b"memtest done rounds=80 result=ok\n".to_vec(),
        }
    }

    #[test]
    fn a_record_round_trips_and_every_damage_is_named() {
        let d = Path::new("/ckpt");
        let b = rec().encode();
        assert_eq!(EndRecord::decode(d, &b).unwrap(), rec());
        // Every flipped bit is caught (magic, fields, output or checksum).
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let e = EndRecord::decode(d, &c).unwrap_err().to_string();
            assert!(
                e.contains("end record (ended) is unusable"),
                "byte {i}: {e}"
            );
        }
        // Truncated anywhere, or with bytes after it.
        for n in 0..b.len() {
            assert!(EndRecord::decode(d, &b[..n]).is_err(), "{n} bytes");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(EndRecord::decode(d, &long).is_err());
    }

    #[test]
    fn a_length_past_the_bound_is_refused_before_anything_is_copied() {
        let mut b = rec().encode();
        b[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = EndRecord::decode(Path::new("/ckpt"), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4294967295 bytes of output"), "{e}");
    }
}
