//! The page-record reader: validates each record of a Memory section
//! payload, then hands the decoded bytes to the caller's sinks.

use zstd::bulk::Decompressor;

use super::{page_aligned, Encoding, MAX_RECORD_PAGES, PAGE_SIZE, RECORD_HEADER_LEN};
use crate::error::{CheckpointError, Result};

/// Zero runs are handed to the sink in pieces of at most this many pages.
pub(super) const ZERO_CHUNK_PAGES: usize = 256;

pub(super) fn bad(offset: usize, reason: String) -> CheckpointError {
    CheckpointError::BadRecord { offset, reason }
}

/// Checks entry `i` of a record of scattered pages (`kind`: Batch or
/// XorRuns, at offset `off`): its address `at` is a page address whose page
/// does not overflow, and the first entry's is the record's `gpa`. `entry`
/// is the entry as written (an address with flag bits, for a Batch).
pub(super) fn check_entry(
    kind: &str,
    off: usize,
    i: usize,
    entry: u64,
    at: u64,
    gpa: u64,
) -> Result<()> {
    if !page_aligned(at) || at.checked_add(PAGE_SIZE as u64).is_none() {
        return Err(bad(
            off,
            format!("{kind} entry {i} ({entry:#x}) is not a page address"),
        ));
    }
    if i == 0 && at != gpa {
        return Err(bad(
            off,
            format!("{kind} starts at {at:#x} but the record says {gpa:#x}"),
        ));
    }
    Ok(())
}

/// Validates every record of a Memory section payload and calls
/// `sink(gpa, bytes)` with the decoded guest bytes, in record order.
///
/// `bytes.len()` is a non-zero multiple of [`PAGE_SIZE`]. A record may be
/// delivered in several calls covering consecutive addresses (zero runs are
/// handed over as a reused zero-filled buffer in pieces). Checks per record:
/// complete header, `gpa` page aligned, `0 < npages <= MAX_RECORD_PAGES`, no
/// address overflow, known encoding, `data_len` within the payload, and per
/// encoding: `Zero` has no data, `Raw` has exactly `npages * 4096` bytes,
/// `Zstd` decompresses (into a buffer bounded to that size) to exactly
/// `npages * 4096` bytes. A record is fully validated before it is handed
/// to the sink; earlier records may have been delivered when a later one is
/// refused, so validate the whole checkpoint first (`format::verify`).
/// Errors from `sink` are returned unchanged.
pub fn decode_records(
    payload: &[u8],
    mut sink: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    decode_inner(payload, &mut sink, None, None)
}

/// Like [`decode_records`], but `Zero` records go to `zero(gpa, bytes)` as a
/// whole instead of as zero-filled slices, so a receiver can drop the memory
/// (punch a hole) rather than write zeros into it.
pub fn decode_records_zero_aware(
    payload: &[u8],
    mut sink: impl FnMut(u64, &[u8]) -> Result<()>,
    mut zero: impl FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    decode_inner(payload, &mut sink, Some(&mut zero), None)
}

/// Like [`decode_records_zero_aware`], and also accepts delta records
/// (`XorZstd`, XOR entries of batches, `XorRuns`): their bytes go to
/// `xor(gpa, delta)`, which must XOR them into the memory's current
/// contents. A delta is whole pages, except an `XorRuns` run: 8-byte words
/// at an 8-byte aligned `gpa`, inside one page. The other two readers
/// refuse delta records, since they have no base pages to apply them to.
pub fn decode_records_with_deltas(
    payload: &[u8],
    mut sink: impl FnMut(u64, &[u8]) -> Result<()>,
    mut zero: impl FnMut(u64, u64) -> Result<()>,
    mut xor: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    decode_inner(payload, &mut sink, Some(&mut zero), Some(&mut xor))
}

/// Decompresses one zstd frame into `buf`, which must come out exactly
/// `nbytes` long (the buffer is capped there, so a bomb fails).
fn zstd_exact(
    decompressor: &mut Option<Decompressor<'static>>,
    data: &[u8],
    nbytes: usize,
    buf: &mut Vec<u8>,
    off: usize,
) -> Result<()> {
    if decompressor.is_none() {
        *decompressor = Some(Decompressor::new().map_err(CheckpointError::Zstd)?);
    }
    let Some(d) = decompressor.as_mut() else {
        unreachable!("decompressor was just created");
    };
    let err = |e: std::io::Error| {
        bad(
            off,
            format!("zstd data does not decompress into {nbytes} bytes: {e}"),
        )
    };
    let got = if nbytes > buf.capacity() {
        // A fresh buffer of exactly `nbytes`: its capacity caps the output,
        // and nothing is written before the frame is (a hostile record
        // claiming 64 MiB costs no 64 MiB of zero-filling).
        *buf = Vec::with_capacity(nbytes);
        d.decompress_to_buffer(data, buf).map_err(err)?;
        buf.len()
    } else {
        // The reused buffer is larger: the output is a slice of exactly
        // `nbytes`, so a frame that would write more fails. Zero-filling
        // covers at most what the last record did not (within KEEP_BUF).
        buf.truncate(nbytes);
        buf.resize(nbytes, 0);
        d.decompress_to_buffer(data, &mut buf[..]).map_err(err)?
    };
    if got != nbytes {
        return Err(bad(
            off,
            format!("zstd data decompresses to {got} bytes, expected {nbytes}"),
        ));
    }
    Ok(())
}

type ZeroSink<'a> = Option<&'a mut dyn FnMut(u64, u64) -> Result<()>>;
pub(super) type XorSink<'a> = Option<&'a mut dyn FnMut(u64, &[u8]) -> Result<()>>;

/// A decompression context and output buffer a thread keeps between
/// payloads: a zstd context costs tens of µs to create, once per epoch on
/// a shadow without this.
#[derive(Default)]
struct Reusable {
    decompressor: Option<Decompressor<'static>>,
    buf: Vec<u8>,
}

/// Largest decompression buffer kept between payloads (a replication
/// stream's records decompress to at most 1 MiB each).
const KEEP_BUF: usize = 4 << 20;

thread_local! {
    static REUSABLE: std::cell::RefCell<Reusable> = std::cell::RefCell::new(Reusable::default());
}

fn decode_inner(
    payload: &[u8],
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    zero: ZeroSink<'_>,
    xor: XorSink<'_>,
) -> Result<()> {
    // Taken out for the call (a sink may itself decode: it then gets fresh
    // ones), and put back after it, whatever the outcome.
    let mut r = REUSABLE.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let res = decode_with(payload, sink, zero, xor, &mut r);
    if r.buf.capacity() > KEEP_BUF {
        r.buf = Vec::new();
    }
    REUSABLE.with(|c| *c.borrow_mut() = r);
    res
}

fn decode_with(
    payload: &[u8],
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    mut zero: ZeroSink<'_>,
    mut xor: XorSink<'_>,
    reuse: &mut Reusable,
) -> Result<()> {
    let mut off = 0;
    let Reusable { decompressor, buf } = reuse;
    let mut zeros: Vec<u8> = Vec::new();

    while off < payload.len() {
        let rest = &payload[off..];
        if rest.len() < RECORD_HEADER_LEN {
            return Err(bad(
                off,
                format!(
                    "record header needs {RECORD_HEADER_LEN} bytes, only {} left",
                    rest.len()
                ),
            ));
        }
        let gpa = u64::from_le_bytes(rest[0..8].try_into().unwrap_or_default());
        let npages = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
        let enc_byte = rest[12];
        let data_len = u32::from_le_bytes(rest[13..17].try_into().unwrap_or_default()) as usize;

        if !page_aligned(gpa) {
            return Err(bad(off, format!("gpa {gpa:#x} is not page aligned")));
        }
        if npages == 0 {
            return Err(bad(off, "npages is 0".into()));
        }
        if npages > MAX_RECORD_PAGES {
            return Err(bad(
                off,
                format!("npages {npages} exceeds the limit of {MAX_RECORD_PAGES}"),
            ));
        }
        let nbytes = npages as usize * PAGE_SIZE;
        if gpa.checked_add(nbytes as u64).is_none() {
            return Err(bad(
                off,
                format!("{npages} pages at {gpa:#x} overflow the address space"),
            ));
        }
        let enc = Encoding::try_from(enc_byte).map_err(|e| bad(off, e.to_string()))?;
        let avail = rest.len() - RECORD_HEADER_LEN;
        if data_len > avail {
            return Err(bad(
                off,
                format!("data_len {data_len} exceeds the {avail} bytes left in the section"),
            ));
        }
        let data = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + data_len];

        match enc {
            Encoding::Zero => {
                if data_len != 0 {
                    return Err(bad(
                        off,
                        format!("Zero record has data_len {data_len}, must be 0"),
                    ));
                }
                if let Some(z) = zero.as_mut() {
                    z(gpa, nbytes as u64)?;
                    off += RECORD_HEADER_LEN + data_len;
                    continue;
                }
                let chunk = (npages as usize).min(ZERO_CHUNK_PAGES) * PAGE_SIZE;
                if zeros.len() < chunk {
                    zeros.resize(chunk, 0);
                }
                let mut done = 0;
                while done < nbytes {
                    let n = (nbytes - done).min(zeros.len());
                    sink(gpa + done as u64, &zeros[..n])?;
                    done += n;
                }
            }
            Encoding::Raw => {
                if data_len != nbytes {
                    return Err(bad(
                        off,
                        format!("Raw record has data_len {data_len}, expected {nbytes}"),
                    ));
                }
                sink(gpa, data)?;
            }
            Encoding::Zstd | Encoding::XorZstd => {
                if enc == Encoding::XorZstd && xor.is_none() {
                    return Err(bad(
                        off,
                        "XorZstd delta record, but this reader has no base pages to apply \
                         it to (deltas are only valid in a replication stream)"
                            .into(),
                    ));
                }
                zstd_exact(decompressor, data, nbytes, buf, off)?;
                match xor.as_mut() {
                    Some(x) if enc == Encoding::XorZstd => x(gpa, buf)?,
                    _ => sink(gpa, buf)?,
                }
            }
            Encoding::XorRuns | Encoding::XorRunsZstd => {
                let Some(x) = xor.as_mut() else {
                    return Err(bad(
                        off,
                        format!(
                            "{enc:?} record of XOR deltas, but this reader has no base pages to \
                             apply it to (deltas are only valid in a replication stream)"
                        ),
                    ));
                };
                let entries: &[u8] = if enc == Encoding::XorRuns {
                    data
                } else {
                    let (len, frame) = data.split_at(data.len().min(4));
                    let Ok(len) = <[u8; 4]>::try_from(len) else {
                        return Err(bad(off, "XorRunsZstd record has no length".into()));
                    };
                    let len = u32::from_le_bytes(len) as usize;
                    let most = npages as usize * super::runs::MAX_ENTRY_BYTES;
                    if len > most {
                        return Err(bad(
                            off,
                            format!(
                                "XorRunsZstd record says {len} bytes of entries, more than \
                                 {npages} pages can have ({most})"
                            ),
                        ));
                    }
                    zstd_exact(decompressor, frame, len, buf, off)?;
                    buf
                };
                // Validate the whole record before delivering any of it.
                super::runs::walk(entries, npages as usize, gpa, off, None)?;
                super::runs::walk(entries, npages as usize, gpa, off, Some(&mut **x))?;
            }
            Encoding::Batch | Encoding::BatchZstd => {
                let n = npages as usize;
                if data_len < n * 8 {
                    return Err(bad(
                        off,
                        format!("Batch record of {n} pages has {data_len} bytes, less than its {} bytes of entries", n * 8),
                    ));
                }
                let (entries, body) = data.split_at(n * 8);
                let entry = |i: usize| {
                    u64::from_le_bytes(entries[i * 8..i * 8 + 8].try_into().unwrap_or_default())
                };
                for i in 0..n {
                    let e = entry(i);
                    // Bit 0 is the kind flag; bits 1-11 must be clear.
                    check_entry("Batch", off, i, e, e & !1, gpa)?;
                    if e & 1 == 1 && xor.is_none() {
                        return Err(bad(
                            off,
                            format!(
                                "Batch entry {i} is an XOR delta, but this reader has no base \
                                 pages to apply it to (deltas are only valid in a replication stream)"
                            ),
                        ));
                    }
                }
                let pages: &[u8] = if enc == Encoding::Batch {
                    if body.len() != nbytes {
                        return Err(bad(
                            off,
                            format!(
                                "Batch record has {} page bytes, expected {nbytes}",
                                body.len()
                            ),
                        ));
                    }
                    body
                } else {
                    zstd_exact(decompressor, body, nbytes, buf, off)?;
                    buf
                };
                for i in 0..n {
                    let e = entry(i);
                    let p = &pages[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
                    match xor.as_mut() {
                        Some(x) if e & 1 == 1 => x(e & !1, p)?,
                        _ => sink(e & !1, p)?,
                    }
                }
            }
        }
        off += RECORD_HEADER_LEN + data_len;
    }
    Ok(())
}
