//! The self-checking checkpoint container.
//!
//! A checkpoint is a fixed-size [`Header`] followed by sections, the last of
//! which is an `End` section. Every integer is little-endian. The byte
//! layout and the order of checks are specified in
//! `docs/checkpoint-format.md`; this module is the reference implementation.
//!
//! Both directions stream: [`CheckpointWriter`] writes one section at a time
//! and [`CheckpointReader`] reads one at a time, so a multi-GiB checkpoint is
//! never held in memory. Every length read from the stream is checked against
//! [`Limits`] before anything is allocated for it.

use std::fmt;
use std::io::{self, Read, Write};

use crate::error::{CheckpointError, Result};
use crate::fingerprint::Fingerprint;

pub use crate::verify::verify;

/// The first eight bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"HSPRCKPT";
/// The container format version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 4;
/// Size of the file header in bytes.
pub const HEADER_LEN: usize = 68;
/// Size of a section header in bytes.
pub const SECTION_HEADER_LEN: usize = 16;
/// Size of the End section payload in bytes.
pub const END_PAYLOAD_LEN: usize = 8;

/// Bytes of the header covered by the header CRC (everything before it).
const HEADER_CRC_OFFSET: usize = HEADER_LEN - 4;
/// First read chunk for a section payload; larger payloads grow as bytes
/// actually arrive, so a lying length within limits costs no memory.
const INITIAL_PAYLOAD_CAPACITY: usize = 1 << 20;

/// Whether a checkpoint stands alone or applies on top of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CheckpointKind {
    /// Complete VM state; `base_seq == seq`.
    Full = 0,
    /// Only what changed since checkpoint `base_seq`; `base_seq < seq`.
    Incremental = 1,
}

impl TryFrom<u8> for CheckpointKind {
    type Error = CheckpointError;

    fn try_from(v: u8) -> Result<Self> {
        match v {
            0 => Ok(CheckpointKind::Full),
            1 => Ok(CheckpointKind::Incremental),
            other => Err(CheckpointError::InvalidHeader(format!(
                "unknown checkpoint kind {other}"
            ))),
        }
    }
}

/// The fixed-size file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// Sequence number of this checkpoint.
    pub seq: u64,
    /// For an incremental: the `seq` of the checkpoint it applies on top of.
    /// For a full checkpoint: equal to `seq`.
    pub base_seq: u64,
    /// Fingerprint of the VM configuration the checkpoint was taken of.
    pub fingerprint: Fingerprint,
}

impl Header {
    /// A header for a full checkpoint.
    pub fn full(seq: u64, fingerprint: Fingerprint) -> Self {
        Header {
            kind: CheckpointKind::Full,
            seq,
            base_seq: seq,
            fingerprint,
        }
    }

    /// A header for an incremental checkpoint applying on top of `base_seq`.
    pub fn incremental(seq: u64, base_seq: u64, fingerprint: Fingerprint) -> Self {
        Header {
            kind: CheckpointKind::Incremental,
            seq,
            base_seq,
            fingerprint,
        }
    }

    /// Checks the `seq`/`base_seq` rule for the kind.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            CheckpointKind::Full if self.base_seq != self.seq => {
                Err(CheckpointError::InvalidHeader(format!(
                    "full checkpoint {} has base_seq {} (must equal seq)",
                    self.seq, self.base_seq
                )))
            }
            CheckpointKind::Incremental if self.base_seq >= self.seq => {
                Err(CheckpointError::InvalidHeader(format!(
                    "incremental checkpoint {} has base_seq {} (must be lower than seq)",
                    self.seq, self.base_seq
                )))
            }
            _ => Ok(()),
        }
    }

    /// The on-disk bytes of this header, CRC included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12] = self.kind as u8;
        // b[13..16]: reserved, zero.
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_seq.to_le_bytes());
        b[32..64].copy_from_slice(self.fingerprint.as_bytes());
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks header bytes: magic, then version, then CRC, then
    /// the fields (kind, reserved bytes, `base_seq` rule).
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self> {
        check_magic_and_version(b)?;
        let stored = le_u32(&b[HEADER_CRC_OFFSET..]);
        let computed = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        if stored != computed {
            return Err(CheckpointError::HeaderChecksum { stored, computed });
        }
        let kind = CheckpointKind::try_from(b[12])?;
        if b[13..16] != [0, 0, 0] {
            return Err(CheckpointError::InvalidHeader(format!(
                "reserved bytes are not zero: {:02x?}",
                &b[13..16]
            )));
        }
        let mut fp = [0u8; 32];
        fp.copy_from_slice(&b[32..64]);
        let h = Header {
            kind,
            seq: le_u64(&b[16..24]),
            base_seq: le_u64(&b[24..32]),
            fingerprint: Fingerprint::from_bytes(fp),
        };
        h.validate()?;
        Ok(h)
    }
}

/// Checks whatever prefix of the magic and version fields `b` holds.
fn check_magic_and_version(b: &[u8]) -> Result<()> {
    let n = b.len().min(MAGIC.len());
    if b[..n] != MAGIC[..n] {
        let mut found = [0u8; 8];
        found[..n].copy_from_slice(&b[..n]);
        return Err(CheckpointError::BadMagic { found });
    }
    if b.len() >= 12 {
        let found = le_u32(&b[8..12]);
        if found != FORMAT_VERSION {
            return Err(CheckpointError::UnsupportedVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
    }
    Ok(())
}

/// Section identifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SectionId {
    /// Postcard [`MachineConfig`](crate::fingerprint::MachineConfig).
    Config = 1,
    /// Postcard vCPU states (see `kvm_state`).
    Vcpus = 2,
    /// Postcard VM-wide KVM state (see `kvm_state`).
    Vm = 3,
    /// Device records (see [`crate::devices`]).
    Devices = 4,
    /// Page records (see [`crate::pages`]); may repeat.
    Memory = 5,
    /// `u64` byte offset of the console output.
    Console = 6,
    /// `u32` disk index, then page records whose addresses are byte
    /// offsets in that disk (see `docs/checkpoint-format.md`); may repeat.
    Disk = 7,
    /// Terminates the stream: section count and CRC of section CRCs.
    End = 0xFFFF_FFFF,
}

impl SectionId {
    /// The numeric id as stored.
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// Whether the section may appear more than once (`Memory`, `Disk`).
    pub const fn repeatable(self) -> bool {
        matches!(self, SectionId::Memory | SectionId::Disk)
    }

    /// Bit used to track "seen" for non-repeatable sections.
    fn seen_bit(self) -> u32 {
        match self {
            SectionId::End => 1 << 31,
            other => 1 << other.as_u32(),
        }
    }
}

impl TryFrom<u32> for SectionId {
    type Error = CheckpointError;

    fn try_from(v: u32) -> Result<Self> {
        Ok(match v {
            1 => SectionId::Config,
            2 => SectionId::Vcpus,
            3 => SectionId::Vm,
            4 => SectionId::Devices,
            5 => SectionId::Memory,
            6 => SectionId::Console,
            7 => SectionId::Disk,
            0xFFFF_FFFF => SectionId::End,
            other => return Err(CheckpointError::UnknownSection(other)),
        })
    }
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Bounds a reader enforces before allocating anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted section payload, in bytes.
    pub max_section_len: u64,
    /// Largest accepted number of sections (End not counted).
    pub max_sections: u32,
}

impl Default for Limits {
    /// 64 MiB per section, 2^20 sections.
    fn default() -> Self {
        Limits {
            max_section_len: 64 << 20,
            max_sections: 1 << 20,
        }
    }
}

/// CRC of one section: CRC32 over `id ‖ len ‖ payload` (little-endian), so
/// a corrupted id or length is detected just like a corrupted payload.
pub(crate) fn section_crc(id: u32, len: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn section_header(id: u32, len: u64, crc: u32) -> [u8; SECTION_HEADER_LEN] {
    let mut b = [0u8; SECTION_HEADER_LEN];
    b[0..4].copy_from_slice(&id.to_le_bytes());
    b[4..12].copy_from_slice(&len.to_le_bytes());
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Running state shared by writer and reader: which sections were seen, how
/// many, and the CRC over their CRCs.
struct SectionTally {
    count: u32,
    seen: u32,
    crcs: crc32fast::Hasher,
}

impl SectionTally {
    fn new() -> Self {
        SectionTally {
            count: 0,
            seen: 0,
            crcs: crc32fast::Hasher::new(),
        }
    }

    fn check_not_duplicate(&self, id: SectionId) -> Result<()> {
        if !id.repeatable() && self.seen & id.seen_bit() != 0 {
            return Err(CheckpointError::DuplicateSection(id));
        }
        Ok(())
    }

    fn record(&mut self, id: SectionId, crc: u32) {
        self.seen |= id.seen_bit();
        self.count += 1;
        self.crcs.update(&crc.to_le_bytes());
    }

    fn end_payload(&self) -> [u8; END_PAYLOAD_LEN] {
        let mut p = [0u8; END_PAYLOAD_LEN];
        p[0..4].copy_from_slice(&self.count.to_le_bytes());
        p[4..8].copy_from_slice(&self.crcs.clone().finalize().to_le_bytes());
        p
    }
}

/// Streams a checkpoint into `W`.
///
/// The caller is responsible for durability: after [`finish`] returns the
/// writer, flush and fsync it, then publish it by rename.
///
/// [`finish`]: CheckpointWriter::finish
pub struct CheckpointWriter<W: Write> {
    w: W,
    limits: Limits,
    tally: SectionTally,
    bytes_written: u64,
}

impl<W: Write> CheckpointWriter<W> {
    /// Validates `header` and writes it, with default [`Limits`].
    pub fn new(w: W, header: &Header) -> Result<Self> {
        Self::with_limits(w, header, &Limits::default())
    }

    /// Like [`new`](Self::new), refusing sections a reader with `limits`
    /// would refuse.
    pub fn with_limits(mut w: W, header: &Header, limits: &Limits) -> Result<Self> {
        header.validate()?;
        w.write_all(&header.encode())?;
        Ok(CheckpointWriter {
            w,
            limits: *limits,
            tally: SectionTally::new(),
            bytes_written: HEADER_LEN as u64,
        })
    }

    /// Writes one section. `End` is written by [`finish`](Self::finish) and
    /// refused here, as are duplicates of non-repeatable sections and
    /// payloads beyond the limits.
    pub fn write_section(&mut self, id: SectionId, payload: &[u8]) -> Result<()> {
        self.admit(id)?;
        let len = payload.len() as u64;
        self.check_len(id, len)?;
        let crc = section_crc(id.as_u32(), len, payload);
        self.w.write_all(&section_header(id.as_u32(), len, crc))?;
        self.w.write_all(payload)?;
        self.recorded(id, len, crc);
        Ok(())
    }

    /// Whether a section `id` may come next (its length aside).
    fn admit(&self, id: SectionId) -> Result<()> {
        if id == SectionId::End {
            return Err(CheckpointError::InvalidArgument(
                "the End section is written by finish(), not write_section()".into(),
            ));
        }
        if self.tally.count >= self.limits.max_sections {
            return Err(CheckpointError::TooManySections {
                limit: self.limits.max_sections,
            });
        }
        self.tally.check_not_duplicate(id)
    }

    fn check_len(&self, id: SectionId, len: u64) -> Result<()> {
        if len > self.limits.max_section_len {
            return Err(CheckpointError::SectionTooLarge {
                id,
                len,
                limit: self.limits.max_section_len,
            });
        }
        Ok(())
    }

    fn recorded(&mut self, id: SectionId, len: u64, crc: u32) {
        self.tally.record(id, crc);
        self.bytes_written += SECTION_HEADER_LEN as u64 + len;
    }

    /// Number of sections written so far (End not counted).
    pub fn sections_written(&self) -> u32 {
        self.tally.count
    }

    /// Bytes written so far, header included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Writes the End section and returns the inner writer (not flushed to
    /// stable storage: the caller fsyncs).
    pub fn finish(mut self) -> Result<W> {
        let payload = self.tally.end_payload();
        let id = SectionId::End.as_u32();
        let len = END_PAYLOAD_LEN as u64;
        let crc = section_crc(id, len, &payload);
        self.w.write_all(&section_header(id, len, crc))?;
        self.w.write_all(&payload)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Where a checkpoint is written. A container built in memory names its
/// buffer, so that [`CheckpointWriter::write_section_with`] builds section
/// payloads in place instead of copying them in.
pub trait Sink: Write {
    /// The buffer the container is being built in, if it is one.
    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        None
    }
}

impl Sink for Vec<u8> {
    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        Some(self)
    }
}

impl Sink for crate::memcopy::VecSink {
    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        Some(&mut self.0)
    }
}

impl Sink for std::fs::File {}

impl<W: Write> Sink for std::io::BufWriter<W> {}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn buffer(&mut self) -> Option<&mut Vec<u8>> {
        (**self).buffer()
    }
}

impl<W: Sink> CheckpointWriter<W> {
    /// Writes one section whose payload `fill` appends to the buffer it is
    /// given, and returns whether to keep (`false`: no section is written).
    /// In a container built in memory that buffer is the container itself,
    /// past a header patched afterwards, so the payload is never copied;
    /// otherwise it is `scratch` (cleared first), then written as by
    /// [`write_section`](Self::write_section). The checks are
    /// `write_section`'s, the length's once `fill` is done; when a check or
    /// `fill` fails, or the section is not kept, the container is left as it
    /// was.
    pub fn write_section_with<E: From<CheckpointError>>(
        &mut self,
        id: SectionId,
        scratch: &mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>) -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        self.admit(id)?;
        let Some(buf) = self.w.buffer() else {
            scratch.clear();
            if fill(scratch)? {
                self.write_section(id, scratch)?;
            }
            return Ok(());
        };
        let at = buf.len();
        let body = at + SECTION_HEADER_LEN;
        buf.extend_from_slice(&[0u8; SECTION_HEADER_LEN]);
        let kept = match fill(buf) {
            Ok(kept) => kept,
            Err(e) => {
                buf.truncate(at);
                return Err(e);
            }
        };
        let len = (buf.len() - body) as u64;
        if !kept {
            buf.truncate(at);
            return Ok(());
        }
        if let Err(e) = self.check_len(id, len) {
            // `check_len` reads only the limits: the buffer is `self.w`'s.
            self.w.buffer().expect("still in memory").truncate(at);
            return Err(e.into());
        }
        let buf = self.w.buffer().expect("still in memory");
        let crc = section_crc(id.as_u32(), len, &buf[body..]);
        buf[at..body].copy_from_slice(&section_header(id.as_u32(), len, crc));
        self.recorded(id, len, crc);
        Ok(())
    }
}

/// A section header, as read and checked.
struct SectionHead {
    id: SectionId,
    raw_id: u32,
    len: u64,
    stored: u32,
}

/// Streams a checkpoint out of `R`, verifying as it goes.
///
/// After any error the reader's position in the stream is unspecified and
/// it must be discarded.
pub struct CheckpointReader<R: Read> {
    r: R,
    header: Header,
    limits: Limits,
    integrity: Integrity,
    tally: SectionTally,
    done: bool,
}

/// Whether a reader recomputes each section's CRC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Integrity {
    /// Every section's CRC is recomputed and compared: files, and any bytes
    /// nothing else vouches for.
    #[default]
    Checked,
    /// The bytes came over a channel that authenticates every byte as the
    /// writer sent it (the replication stream's AEAD records, whose 128-bit
    /// tags make a 32-bit CRC redundant): section CRCs are not recomputed.
    /// Everything else is checked as for [`Integrity::Checked`], the End
    /// section's count and CRC-of-CRCs included (over the stored CRCs).
    Authenticated,
}

impl<R: Read> CheckpointReader<R> {
    /// Reads and verifies the header: magic, version, header CRC, fields,
    /// and — if `expected` is given — the fingerprint.
    pub fn new(mut r: R, limits: &Limits, expected: Option<&Fingerprint>) -> Result<Self> {
        let mut b = [0u8; HEADER_LEN];
        let got = read_full(&mut r, &mut b)?;
        if got < HEADER_LEN {
            // Report "not a checkpoint" over "truncated" where we can tell.
            check_magic_and_version(&b[..got])?;
            return Err(CheckpointError::Truncated {
                what: "header".into(),
                expected: HEADER_LEN as u64,
                got: got as u64,
            });
        }
        let header = Header::decode(&b)?;
        if let Some(exp) = expected {
            if *exp != header.fingerprint {
                return Err(CheckpointError::FingerprintMismatch {
                    expected: *exp,
                    found: header.fingerprint,
                });
            }
        }
        Ok(CheckpointReader {
            r,
            header,
            limits: *limits,
            integrity: Integrity::Checked,
            tally: SectionTally::new(),
            done: false,
        })
    }

    /// Sets whether section CRCs are recomputed (see [`Integrity`]).
    pub fn with_integrity(mut self, integrity: Integrity) -> Self {
        self.integrity = integrity;
        self
    }

    /// The verified header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of sections returned so far.
    pub fn sections_read(&self) -> u32 {
        self.tally.count
    }

    /// Whether a valid End section has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.r
    }

    /// Reads the next section and verifies it. Returns `None` once a valid
    /// End section has been read (its count and CRC-of-CRCs checked); every
    /// later call returns `None` too.
    ///
    /// Order of checks: section header complete, id known, section count and
    /// length within limits (before allocating), payload complete, CRC, then
    /// duplicate / End contents.
    pub fn next_section(&mut self) -> Result<Option<(SectionId, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let mut hb = [0u8; SECTION_HEADER_LEN];
        let got = read_full(&mut self.r, &mut hb)?;
        if got < SECTION_HEADER_LEN {
            return Err(self.truncated_head(got));
        }
        let head = self.check_head(&hb)?;
        let payload = self.read_payload(head.id, head.len)?;
        Ok(self
            .check_body(&head, &payload)?
            .then_some((head.id, payload)))
    }

    fn truncated_head(&self, got: usize) -> CheckpointError {
        CheckpointError::Truncated {
            what: format!("section header #{}", self.tally.count),
            expected: SECTION_HEADER_LEN as u64,
            got: got as u64,
        }
    }

    /// A section header's checks: id known, section count and length
    /// within limits (before anything of that length is allocated).
    fn check_head(&self, hb: &[u8; SECTION_HEADER_LEN]) -> Result<SectionHead> {
        let raw_id = le_u32(&hb[0..4]);
        let len = le_u64(&hb[4..12]);
        let stored = le_u32(&hb[12..16]);
        let id = SectionId::try_from(raw_id)?;
        if id == SectionId::End {
            if len != END_PAYLOAD_LEN as u64 {
                return Err(CheckpointError::EndMismatch {
                    what: "length",
                    recorded: len,
                    actual: END_PAYLOAD_LEN as u64,
                });
            }
        } else {
            if self.tally.count >= self.limits.max_sections {
                return Err(CheckpointError::TooManySections {
                    limit: self.limits.max_sections,
                });
            }
            if len > self.limits.max_section_len {
                return Err(CheckpointError::SectionTooLarge {
                    id,
                    len,
                    limit: self.limits.max_section_len,
                });
            }
        }
        Ok(SectionHead {
            id,
            raw_id,
            len,
            stored,
        })
    }

    /// A complete section's checks: CRC (unless the bytes are
    /// [`Integrity::Authenticated`]), then duplicate or End contents.
    /// `Ok(true)`: a section to hand out; `Ok(false)`: the valid End.
    fn check_body(&mut self, head: &SectionHead, payload: &[u8]) -> Result<bool> {
        if self.integrity == Integrity::Checked {
            let computed = section_crc(head.raw_id, head.len, payload);
            if computed != head.stored {
                return Err(CheckpointError::SectionChecksum {
                    id: head.id,
                    stored: head.stored,
                    computed,
                });
            }
        }
        if head.id == SectionId::End {
            self.check_end(payload)?;
            self.done = true;
            return Ok(false);
        }
        self.tally.check_not_duplicate(head.id)?;
        self.tally.record(head.id, head.stored);
        Ok(true)
    }

    /// Reads `len` payload bytes, growing the buffer only as bytes arrive.
    fn read_payload(&mut self, id: SectionId, len: u64) -> Result<Vec<u8>> {
        let cap = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(INITIAL_PAYLOAD_CAPACITY);
        let mut payload = Vec::with_capacity(cap);
        let got = (&mut self.r).take(len).read_to_end(&mut payload)?;
        if (got as u64) < len {
            return Err(CheckpointError::Truncated {
                what: format!("section {id}"),
                expected: len,
                got: got as u64,
            });
        }
        Ok(payload)
    }

    fn check_end(&self, payload: &[u8]) -> Result<()> {
        let count = le_u32(&payload[0..4]);
        if count != self.tally.count {
            return Err(CheckpointError::EndMismatch {
                what: "section count",
                recorded: count.into(),
                actual: self.tally.count.into(),
            });
        }
        let recorded = le_u32(&payload[4..8]);
        let actual = self.tally.crcs.clone().finalize();
        if recorded != actual {
            return Err(CheckpointError::EndMismatch {
                what: "checksum of section checksums",
                recorded: recorded.into(),
                actual: actual.into(),
            });
        }
        Ok(())
    }
}

impl<'a> CheckpointReader<&'a [u8]> {
    /// [`next_section`](Self::next_section) for a checkpoint held in
    /// memory: the same checks in the same order, with the payload
    /// borrowed from the slice instead of copied.
    pub fn next_section_borrowed(&mut self) -> Result<Option<(SectionId, &'a [u8])>> {
        if self.done {
            return Ok(None);
        }
        let rest: &'a [u8] = self.r;
        let Some((hb, rest)) = rest.split_first_chunk::<SECTION_HEADER_LEN>() else {
            return Err(self.truncated_head(rest.len()));
        };
        let head = self.check_head(hb)?;
        let len = usize::try_from(head.len).unwrap_or(usize::MAX);
        if rest.len() < len {
            return Err(CheckpointError::Truncated {
                what: format!("section {}", head.id),
                expected: head.len,
                got: rest.len() as u64,
            });
        }
        let (payload, rest) = rest.split_at(len);
        self.r = rest;
        Ok(self
            .check_body(&head, payload)?
            .then_some((head.id, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        Fingerprint::from_bytes([7; 32])
    }

    fn sample() -> Vec<u8> {
        let mut w = CheckpointWriter::new(Vec::new(), &Header::incremental(5, 4, fp())).unwrap();
        w.write_section(SectionId::Vcpus, b"vcpus").unwrap();
        w.write_section(SectionId::Memory, b"").unwrap();
        w.write_section(SectionId::Memory, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_layout_is_as_specified() {
        let h = Header::incremental(0x0102, 0x0101, fp());
        let b = h.encode();
        assert_eq!(&b[0..8], b"HSPRCKPT");
        assert_eq!(&b[8..12], &[4, 0, 0, 0]);
        assert_eq!(b[12], 1);
        assert_eq!(&b[16..24], &0x0102u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x0101u64.to_le_bytes());
        assert_eq!(&b[32..64], &[7; 32]);
        assert_eq!(le_u32(&b[64..68]), crc32fast::hash(&b[..64]));
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn section_ids_parse() {
        for id in [
            SectionId::Config,
            SectionId::Vcpus,
            SectionId::Vm,
            SectionId::Devices,
            SectionId::Memory,
            SectionId::Console,
            SectionId::Disk,
            SectionId::End,
        ] {
            assert_eq!(SectionId::try_from(id.as_u32()).unwrap(), id);
        }
        for bad in [0, 8, 0xFFFF_FFFE] {
            let e = SectionId::try_from(bad).unwrap_err();
            assert!(matches!(e, CheckpointError::UnknownSection(n) if n == bad));
        }
    }

    #[test]
    fn header_seq_rules() {
        let mut h = Header::full(3, fp());
        h.base_seq = 2;
        assert!(matches!(
            h.validate(),
            Err(CheckpointError::InvalidHeader(_))
        ));
        assert!(CheckpointWriter::new(Vec::new(), &h).is_err());
        assert!(Header::incremental(3, 3, fp()).validate().is_err());
        assert!(Header::incremental(3, 2, fp()).validate().is_ok());
    }

    #[test]
    fn reads_back_and_ends() {
        let bytes = sample();
        let mut r = CheckpointReader::new(&bytes[..], &Limits::default(), Some(&fp())).unwrap();
        assert_eq!(r.header().seq, 5);
        assert_eq!(
            r.next_section().unwrap(),
            Some((SectionId::Vcpus, b"vcpus".to_vec()))
        );
        assert_eq!(
            r.next_section().unwrap(),
            Some((SectionId::Memory, Vec::new()))
        );
        assert_eq!(
            r.next_section().unwrap(),
            Some((SectionId::Memory, Vec::new()))
        );
        assert_eq!(r.next_section().unwrap(), None);
        assert!(r.is_done());
        assert_eq!(r.next_section().unwrap(), None);
        assert_eq!(r.sections_read(), 3);
    }

    #[test]
    fn writer_refuses_end_duplicates_and_oversize() {
        let limits = Limits {
            max_section_len: 4,
            max_sections: 2,
        };
        let mut w =
            CheckpointWriter::with_limits(Vec::new(), &Header::full(1, fp()), &limits).unwrap();
        assert!(matches!(
            w.write_section(SectionId::End, b""),
            Err(CheckpointError::InvalidArgument(_))
        ));
        assert!(matches!(
            w.write_section(SectionId::Vm, b"12345"),
            Err(CheckpointError::SectionTooLarge {
                len: 5,
                limit: 4,
                ..
            })
        ));
        w.write_section(SectionId::Vm, b"1234").unwrap();
        assert!(matches!(
            w.write_section(SectionId::Vm, b""),
            Err(CheckpointError::DuplicateSection(SectionId::Vm))
        ));
        w.write_section(SectionId::Memory, b"").unwrap();
        assert!(matches!(
            w.write_section(SectionId::Memory, b""),
            Err(CheckpointError::TooManySections { limit: 2 })
        ));
        assert_eq!(w.sections_written(), 2);
        assert_eq!(
            w.bytes_written(),
            (HEADER_LEN + 2 * SECTION_HEADER_LEN + 4) as u64
        );
    }

    #[test]
    fn reader_refuses_duplicate_with_valid_crc() {
        // Hand-build a stream the writer would refuse.
        let mut bytes = Header::full(1, fp()).encode().to_vec();
        let mut tally = SectionTally::new();
        for _ in 0..2 {
            let crc = section_crc(SectionId::Vm.as_u32(), 1, b"x");
            bytes.extend_from_slice(&section_header(SectionId::Vm.as_u32(), 1, crc));
            bytes.push(b'x');
            tally.record(SectionId::Vm, crc);
        }
        let mut r = CheckpointReader::new(&bytes[..], &Limits::default(), None).unwrap();
        r.next_section().unwrap();
        assert!(matches!(
            r.next_section(),
            Err(CheckpointError::DuplicateSection(SectionId::Vm))
        ));
    }

    #[test]
    fn short_garbage_is_bad_magic_not_truncated() {
        let e = CheckpointReader::new(&b"ELF"[..], &Limits::default(), None).err();
        assert!(matches!(e, Some(CheckpointError::BadMagic { .. })), "{e:?}");
        let e = CheckpointReader::new(&b"HSPR"[..], &Limits::default(), None).err();
        assert!(
            matches!(e, Some(CheckpointError::Truncated { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn invalid_fields_behind_a_valid_crc_are_refused() {
        let reseal = |mut b: [u8; HEADER_LEN]| {
            let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
            b[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
            Header::decode(&b).unwrap_err().to_string()
        };
        let good = Header::full(4, fp()).encode();
        let mut b = good;
        b[12] = 9;
        assert_eq!(
            reseal(b),
            "invalid checkpoint header: unknown checkpoint kind 9"
        );
        let mut b = good;
        b[14] = 1;
        assert!(reseal(b).contains("reserved bytes are not zero"));
        let mut b = good;
        b[24] = 3; // base_seq 3 != seq 4
        assert!(reseal(b).contains("base_seq 3 (must equal seq)"));
    }
}
