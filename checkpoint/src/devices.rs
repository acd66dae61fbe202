//! Device records: the payload of the `Devices` section.
//!
//! Every emulated device saves its guest-visible state as one
//! [`DeviceRecord`]: a stable id naming the device instance (for example
//! `serial.com1` or `virtio-blk.0`), the version of the record's layout,
//! and bytes only that device interprets. The section holds a list of them.
//! The layout is specified in `docs/checkpoint-format.md`:
//!
//! ```text
//! u32 count                      (at most MAX_RECORDS)
//! count times:
//!   u16 id_len, id bytes         (1..=MAX_ID_LEN bytes of [a-z0-9._-])
//!   u32 version                  (>= 1)
//!   u32 data_len, data bytes     (at most what is left of the payload)
//! ```
//!
//! Every length is checked against the bytes that remain before anything
//! is allocated for it, ids must be unique, and nothing may follow the last
//! record.

use crate::error::{CheckpointError, Result};
use crate::format::SectionId;

/// Most records one `Devices` section may hold.
pub const MAX_RECORDS: usize = 256;
/// Longest device id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// One device's saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device instance, e.g. `serial.com1`.
    pub id: String,
    /// Layout version of `data` (the device's own).
    pub version: u32,
    /// The state, encoded by the device.
    pub data: Vec<u8>,
}

fn bad(reason: String) -> CheckpointError {
    CheckpointError::BadPayload {
        id: SectionId::Devices,
        reason,
    }
}

/// Checks a device id: 1..=64 bytes of lower-case ASCII letters, digits,
/// `.`, `_` and `-`.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "device id {id:?} is not 1 to {MAX_ID_LEN} bytes of [a-z0-9._-]"
        )))
    }
}

/// Encodes records as a `Devices` payload. Fails on an invalid or
/// duplicate id, version 0, data over 4 GiB, or too many records: a writer
/// never produces what a reader would refuse.
pub fn encode(records: &[DeviceRecord]) -> Result<Vec<u8>> {
    if records.len() > MAX_RECORDS {
        return Err(bad(format!(
            "{} device records, at most {MAX_RECORDS} allowed",
            records.len()
        )));
    }
    let len: usize = records.iter().map(|r| 10 + r.id.len() + r.data.len()).sum();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (i, r) in records.iter().enumerate() {
        check_id(&r.id)?;
        if records[..i].iter().any(|o| o.id == r.id) {
            return Err(bad(format!("device id {:?} appears twice", r.id)));
        }
        if r.version == 0 {
            return Err(bad(format!("device {:?} has record version 0", r.id)));
        }
        let data_len = u32::try_from(r.data.len())
            .map_err(|_| bad(format!("device {:?} record is over 4 GiB", r.id)))?;
        out.extend_from_slice(&(r.id.len() as u16).to_le_bytes());
        out.extend_from_slice(r.id.as_bytes());
        out.extend_from_slice(&r.version.to_le_bytes());
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&r.data);
    }
    Ok(out)
}

/// A cursor over a payload that refuses to read past its end.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let left = self.b.len() - self.at;
        if n > left {
            return Err(bad(format!(
                "truncated in {what} at offset {}: needs {n} bytes, {left} left",
                self.at
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
}

/// Decodes a `Devices` payload, checking every length before allocating.
pub fn decode(payload: &[u8]) -> Result<Vec<DeviceRecord>> {
    let mut c = Cursor { b: payload, at: 0 };
    let count = c.u32("the record count")? as usize;
    if count > MAX_RECORDS {
        return Err(bad(format!(
            "{count} device records, at most {MAX_RECORDS} allowed"
        )));
    }
    // Each record takes at least 11 bytes; a count the payload cannot hold
    // is refused before the vector is sized by it.
    if count.saturating_mul(11) > payload.len() - 4 {
        return Err(bad(format!(
            "{count} device records cannot fit in {} bytes",
            payload.len()
        )));
    }
    let mut out: Vec<DeviceRecord> = Vec::with_capacity(count);
    for i in 0..count {
        let id_len = c.u16("a device id length")? as usize;
        if id_len > MAX_ID_LEN {
            return Err(bad(format!(
                "record {i}: device id of {id_len} bytes, at most {MAX_ID_LEN} allowed"
            )));
        }
        let id = std::str::from_utf8(c.take(id_len, "a device id")?)
            .map_err(|_| bad(format!("record {i}: device id is not UTF-8")))?
            .to_owned();
        check_id(&id)?;
        if out.iter().any(|r| r.id == id) {
            return Err(bad(format!("device id {id:?} appears twice")));
        }
        let version = c.u32("a record version")?;
        if version == 0 {
            return Err(bad(format!("device {id:?} has record version 0")));
        }
        let data_len = c.u32("a record length")? as usize;
        let data = c
            .take(data_len, &format!("device {id:?}'s record"))?
            .to_vec();
        out.push(DeviceRecord { id, version, data });
    }
    if c.at != payload.len() {
        return Err(bad(format!(
            "{} bytes follow the last device record",
            payload.len() - c.at
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, version: u32, data: &[u8]) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            version,
            data: data.to_vec(),
        }
    }

    #[test]
    fn records_round_trip() {
        let rs = vec![rec("serial.com1", 1, b"abc"), rec("virtio-blk.0", 3, b"")];
        assert_eq!(decode(&encode(&rs).unwrap()).unwrap(), rs);
        assert_eq!(decode(&encode(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let b = encode(&[rec("serial.com1", 1, b"abcdef"), rec("x", 2, b"q")]).unwrap();
        for n in 0..b.len() {
            let e = decode(&b[..n]).unwrap_err().to_string();
            assert!(e.contains("Devices"), "{e}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().to_string().contains("follow"));
    }

    #[test]
    fn bad_ids_versions_and_counts_are_refused_naming_them() {
        for (r, what) in [
            (rec("", 1, b""), "device id"),
            (rec("Serial", 1, b""), "Serial"),
            (rec(&"a".repeat(65), 1, b""), "device id"),
            (rec("ok", 0, b""), "version 0"),
        ] {
            let e = encode(std::slice::from_ref(&r)).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let dup = [rec("a", 1, b""), rec("a", 1, b"")];
        assert!(encode(&dup).unwrap_err().to_string().contains("twice"));
        // A hostile count is refused before anything is sized by it.
        let e = decode(&u32::MAX.to_le_bytes()).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        let mut b = 200u32.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        assert!(decode(&b).unwrap_err().to_string().contains("cannot fit"));
        // A record length past the end.
        let mut b = encode(&[rec("a", 1, b"xy")]).unwrap();
        let n = b.len();
        b[n - 6..n - 2].copy_from_slice(&1000u32.to_le_bytes());
        assert!(decode(&b).unwrap_err().to_string().contains("needs 1000"));
    }
}
