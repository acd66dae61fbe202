//! A received checkpoint, verified and decoded in one pass, ready to apply.
//!
//! The standby used to verify a staged epoch (decoding every record,
//! decompressing every zstd frame) and then apply it (decoding and
//! decompressing everything again). [`StagedEpoch::parse`] does the
//! verification and the decoding together: operations are listed in
//! record order, state sections are parsed, and nothing touches the VM
//! until the whole checkpoint has passed. [`StagedEpoch::apply`] then only
//! writes memory.
//!
//! Bytes stored as they are in the container (raw pages and disk blocks,
//! uncompressed XOR runs) are not copied: an operation points into the
//! received container, which the caller passes again to `apply` and
//! `apply_disks`. That container is checked to be the one parsed (same
//! address and length, and the same End section, whose checksum of
//! checksums covers every section), and only after a parse that passed.
//! Only what a decoder produced (zstd output) lands in an arena.

use checkpoint::fingerprint::{Fingerprint, MachineConfig};
use checkpoint::format::{Header, Integrity, Limits, SectionId};
use checkpoint::{pages, CheckpointError};

use crate::devices::virtio::block::disk::{DiskImage, BLOCK};
use crate::error::{EngineError, Result};
use crate::memory::Ram;
use crate::snapshot::{EpochState, StateSections};

/// Where an operation's bytes are.
#[derive(Clone, Copy)]
enum Src {
    /// At this offset of the parsed container.
    Staged(usize),
    /// At this offset of the arena (decoded).
    Arena(usize),
}

/// What is known of guest memory before a container is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prior {
    /// Made for this container and never written since: every byte is
    /// zero, so a zero record below everything the container wrote before
    /// it needs no work. Punching holes in memory a spare populated ahead
    /// (`standby --reserve-mib`) unmaps every page of them again: 0.45 s of
    /// the shadow's CPU for a 1 GiB guest's zero pages, with the primary's
    /// sender waiting (docs/performance.md, "Zero pages on the shadow").
    AllZero,
    /// Anything else: every record is applied.
    Unknown,
}

/// One memory operation, in record order.
enum Op {
    /// Write `len` bytes from `src` at `gpa`.
    Data { gpa: u64, src: Src, len: usize },
    /// `len` bytes at `gpa` become zero.
    Zero { gpa: u64, len: u64 },
    /// XOR `len` bytes from `src` into the bytes at `gpa`.
    Xor { gpa: u64, src: Src, len: usize },
}

/// One disk operation, in record order.
enum DiskOp {
    /// Write `len` bytes from `src` at byte `off` of disk `disk`.
    Data {
        disk: u32,
        off: u64,
        src: Src,
        len: usize,
    },
    /// `len` bytes at `off` of disk `disk` become a hole (read as zeros).
    Zero { disk: u32, off: u64, len: u64 },
}

impl DiskOp {
    fn span(&self) -> (u32, u64, u64) {
        match *self {
            DiskOp::Data { disk, off, len, .. } => (disk, off, len as u64),
            DiskOp::Zero { disk, off, len } => (disk, off, len),
        }
    }
}

/// A verified checkpoint, decoded, not yet applied.
#[derive(Default)]
pub struct StagedEpoch {
    ops: Vec<Op>,
    disk_ops: Vec<DiskOp>,
    arena: Vec<u8>,
    sections: StateSections,
    /// The container parsed last, which `Src::Staged` offsets point into:
    /// its address, length and last 8 bytes (the End section's count and
    /// checksum of checksums); `None` until a parse passed.
    parsed: Option<(usize, usize, [u8; 8])>,
    /// Whether section CRCs are recomputed: not for containers that came
    /// over the authenticated stream (see [`StagedEpoch::authenticated`]).
    integrity: Integrity,
}

/// Where `data`, handed over by a decoder of `bytes`, is found at apply
/// time: inside `bytes` (not copied), or copied to the end of `arena`
/// (refused past `cap` bytes of arena).
fn place(
    bytes: &[u8],
    data: &[u8],
    arena: &mut Vec<u8>,
    cap: u64,
) -> std::result::Result<Src, CheckpointError> {
    let (base, at) = (bytes.as_ptr() as usize, data.as_ptr() as usize);
    if at >= base && at - base + data.len() <= bytes.len() {
        return Ok(Src::Staged(at - base));
    }
    over_cap(arena.len(), data.len(), cap)?;
    checkpoint::memcopy::extend(arena, data);
    Ok(Src::Arena(arena.len() - data.len()))
}

/// What tells a parsed container from another: its address, length and
/// last 8 bytes (in a valid container, the End section's count and
/// checksum of checksums).
fn identity(bytes: &[u8]) -> (usize, usize, [u8; 8]) {
    let mut tail = [0u8; 8];
    let n = bytes.len().min(8);
    tail[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    (bytes.as_ptr() as usize, bytes.len(), tail)
}

/// Refuses to stage `more` bytes on top of `have` past `cap`.
fn over_cap(have: usize, more: usize, cap: u64) -> std::result::Result<(), CheckpointError> {
    let total = have.checked_add(more).and_then(|t| u64::try_from(t).ok());
    if !matches!(total, Some(t) if t <= cap) {
        return Err(CheckpointError::Decode(format!(
            "the epoch decodes to more than the {cap} bytes of staging allowed"
        )));
    }
    Ok(())
}

/// How many operations ahead [`StagedEpoch::apply`] prefetches a delta's
/// target.
const PREFETCH_AHEAD: usize = 8;

impl StagedEpoch {
    /// A stage for containers that arrive over the replication stream,
    /// whose AEAD records authenticate every byte as the primary sent it:
    /// section CRCs are not recomputed (on a 1 GiB live copy the CRC pass
    /// was 16% of the shadow's busiest thread); every other check is made.
    pub fn authenticated() -> Self {
        StagedEpoch {
            integrity: Integrity::Authenticated,
            ..StagedEpoch::default()
        }
    }

    /// Verifies `bytes` completely (everything `checkpoint::verify` checks,
    /// plus that the state sections decode) and decodes it. `self` is reused
    /// (its arena keeps its capacity), so a standby parses every epoch into
    /// memory that is already faulted in.
    ///
    /// `max_decoded` caps the decoded page bytes held at once (a small
    /// compressed container can decode to a lot): past it the epoch is
    /// refused.
    pub fn parse(
        &mut self,
        bytes: &[u8],
        limits: &Limits,
        expected: Option<&Fingerprint>,
        max_decoded: u64,
    ) -> Result<Header> {
        self.ops.clear();
        self.disk_ops.clear();
        self.arena.clear();
        self.sections = StateSections::default();
        self.parsed = None;
        let header = checkpoint::verify::verify_slice_with(
            bytes,
            limits,
            expected,
            self.integrity,
            |id, payload| {
                match id {
                    SectionId::Memory => {
                        // Three sinks need the arena and the op list: share them
                        // through a RefCell for the duration of the decode.
                        let cell = std::cell::RefCell::new((&mut self.ops, &mut self.arena));
                        pages::decode_records_with_deltas(
                            payload,
                            |gpa, data| {
                                let (ops, arena) = &mut *cell.borrow_mut();
                                let src = place(bytes, data, arena, max_decoded)?;
                                ops.push(Op::Data {
                                    gpa,
                                    src,
                                    len: data.len(),
                                });
                                Ok(())
                            },
                            |gpa, len| {
                                cell.borrow_mut().0.push(Op::Zero { gpa, len });
                                Ok(())
                            },
                            |gpa, delta| {
                                let (ops, arena) = &mut *cell.borrow_mut();
                                let src = place(bytes, delta, arena, max_decoded)?;
                                ops.push(Op::Xor {
                                    gpa,
                                    src,
                                    len: delta.len(),
                                });
                                Ok(())
                            },
                        )?;
                    }
                    SectionId::Disk => {
                        let cell = std::cell::RefCell::new((&mut self.disk_ops, &mut self.arena));
                        let (disk, _) = checkpoint::disk::split(payload)?;
                        checkpoint::disk::decode(
                            payload,
                            |off, data| {
                                let (ops, arena) = &mut *cell.borrow_mut();
                                let src = place(bytes, data, arena, max_decoded)?;
                                ops.push(DiskOp::Data {
                                    disk,
                                    off,
                                    src,
                                    len: data.len(),
                                });
                                Ok(())
                            },
                            |off, len| {
                                cell.borrow_mut().0.push(DiskOp::Zero { disk, off, len });
                                Ok(())
                            },
                        )?;
                    }
                    other => {
                        self.sections.take(other, payload)?;
                    }
                }
                Ok(())
            },
        )?;
        self.parsed = Some(identity(bytes));
        Ok(header)
    }

    /// The vCPU, VM and device state (an epoch; pre-copy chunks have none).
    pub fn state(&self) -> Result<EpochState> {
        self.sections.state()
    }

    /// The Config section, if present.
    pub fn config(&self) -> Option<&MachineConfig> {
        self.sections.config.as_ref()
    }

    /// Checks that every memory operation lies inside one region of `ram`,
    /// so [`apply`](Self::apply) cannot fail halfway on an address (call it
    /// before acknowledging).
    pub fn check_fits(&self, ram: &Ram) -> Result<()> {
        for op in &self.ops {
            let (gpa, len) = match *op {
                Op::Data { gpa, len, .. } | Op::Xor { gpa, len, .. } => (gpa, len as u64),
                Op::Zero { gpa, len } => (gpa, len),
            };
            if ram.span(gpa, len).is_none() {
                return Err(EngineError::Memory(format!(
                    "{len} bytes at {gpa:#x} are not inside one guest memory region"
                )));
            }
        }
        Ok(())
    }

    /// Whether the epoch carries disk blocks.
    pub fn has_disk_ops(&self) -> bool {
        !self.disk_ops.is_empty()
    }

    /// Checks that every disk operation names one of `disks` and starts
    /// inside it (a block may run past the end of a disk whose size is not
    /// a multiple of 4 KiB: only the part inside is written), so
    /// [`apply_disks`](Self::apply_disks) cannot fail on an address.
    pub fn check_disks(&self, disks: &[u64]) -> Result<()> {
        for op in &self.disk_ops {
            let (disk, off, len) = op.span();
            let Some(&size) = disks.get(disk as usize) else {
                return Err(EngineError::Config(format!(
                    "the epoch writes disk {disk}, but this standby has {} replica disks",
                    disks.len()
                )));
            };
            if off >= size || !off.is_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
                return Err(EngineError::Config(format!(
                    "the epoch writes {len} bytes at offset {off:#x} of disk {disk}, \
                     which has {size} bytes"
                )));
            }
        }
        Ok(())
    }

    /// The bytes of `src` (`len` long): in `staged`, which must be the
    /// container parsed last, or in the arena.
    fn bytes<'a>(&'a self, staged: &'a [u8], src: Src, len: usize) -> &'a [u8] {
        match src {
            Src::Staged(at) => &staged[at..at + len],
            Src::Arena(at) => &self.arena[at..at + len],
        }
    }

    /// Refuses `staged` unless it is the container parsed last (the
    /// operations point into it).
    fn check_staged(&self, staged: &[u8]) -> Result<()> {
        if self.parsed != Some(identity(staged)) {
            return Err(EngineError::Misuse(
                "a staged epoch is applied from a container other than the one parsed",
            ));
        }
        Ok(())
    }

    /// Writes the disk operations to the replicas, in record order, and
    /// with `durable`, flushes every replica written to its disk
    /// (`fdatasync`). Returns the bytes written. `staged` is the container
    /// parsed last.
    pub fn apply_disks(
        &self,
        staged: &[u8],
        disks: &[std::sync::Arc<DiskImage>],
        durable: bool,
    ) -> Result<u64> {
        self.check_staged(staged)?;
        let mut touched = vec![false; disks.len()];
        let mut bytes = 0u64;
        for op in &self.disk_ops {
            let (disk, off, len) = op.span();
            let i = disk as usize;
            let Some(d) = disks.get(i) else {
                return Err(EngineError::Config(format!(
                    "the epoch writes disk {disk}, but there are {} replicas",
                    disks.len()
                )));
            };
            let ctx = || format!("replica {} at offset {off:#x}", d.path.display());
            let written = match *op {
                DiskOp::Data { src, len, .. } => d.write_blocks(off, self.bytes(staged, src, len)),
                DiskOp::Zero { .. } => d.punch_blocks(off, len),
            }
            .map_err(EngineError::io(ctx()))?;
            bytes = bytes.saturating_add(written);
            touched[i] = true;
        }
        if durable {
            for (d, _) in disks.iter().zip(&touched).filter(|(_, &t)| t) {
                d.file.sync_data().map_err(EngineError::io(format!(
                    "fdatasync of replica {}",
                    d.path.display()
                )))?;
            }
        }
        Ok(bytes)
    }

    /// Applies the memory operations to `ram`, in record order. `staged`
    /// is the container parsed last; `prior` is what `ram` held before it.
    pub fn apply(&self, staged: &[u8], ram: &Ram, prior: Prior) -> Result<()> {
        self.check_staged(staged)?;
        // With memory known to be zero, a zero record is a no-op unless an
        // earlier record of this container wrote into its range: skipped
        // only when it starts at or above the end of every earlier write
        // (records come in address order, so that is all of them).
        let mut written_to = 0u64;
        for (i, op) in self.ops.iter().enumerate() {
            // A delta reads words of the shadow's memory that are rarely
            // in cache (a few scattered words per page): start loading the
            // ones a few deltas ahead, so the misses overlap instead of
            // each stalling the loop in turn.
            if let Some(Op::Xor { gpa, .. }) = self.ops.get(i + PREFETCH_AHEAD) {
                ram.prefetch(*gpa);
            }
            match *op {
                Op::Data { gpa, src, len } => {
                    ram.write(gpa, self.bytes(staged, src, len))?;
                    written_to = written_to.max(gpa.saturating_add(len as u64));
                }
                Op::Zero { gpa, .. } if prior == Prior::AllZero && gpa >= written_to => {}
                Op::Zero { gpa, len } => ram.zero_range(gpa, len)?,
                Op::Xor { gpa, src, len } => {
                    ram.xor(gpa, self.bytes(staged, src, len))?;
                    written_to = written_to.max(gpa.saturating_add(len as u64));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use checkpoint::delta::DeltaCache;
    use checkpoint::format::CheckpointWriter;
    use checkpoint::{Compression, MemoryEncoder, PAGE_SIZE};

    const MIB: u64 = 1 << 20;

    fn machine() -> MachineConfig {
        let ram = Ram::new(4 * MIB).unwrap();
        MachineConfig {
            vcpus: 1,
            mem_regions: ram.layout(),
            cpuid: Vec::new(),
            disks: Vec::new(),
        }
    }

    /// A memory-only container whose records come from `enc` over `runs`.
    fn container(
        m: &MachineConfig,
        seq: u64,
        enc: &mut MemoryEncoder,
        runs: &[(u64, &[u8])],
    ) -> Vec<u8> {
        let header = if seq == 1 {
            Header::full(seq, m.fingerprint())
        } else {
            Header::incremental(seq, seq - 1, m.fingerprint())
        };
        let mut payload = Vec::new();
        for &(gpa, data) in runs {
            enc.encode_run(gpa, data, &mut payload).unwrap();
        }
        let mut w = CheckpointWriter::new(Vec::new(), &header).unwrap();
        w.write_section(SectionId::Config, &m.encode()).unwrap();
        w.write_section(SectionId::Memory, &payload).unwrap();
        w.finish().unwrap()
    }

    fn page(seed: u8) -> Vec<u8> {
        (0..PAGE_SIZE)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
            .collect()
    }

    fn read(ram: &Ram, gpa: u64) -> Vec<u8> {
        let (r, off) = ram.locate(gpa).unwrap();
        let mut b = vec![0u8; PAGE_SIZE];
        r.read(off, &mut b);
        b
    }

    #[test]
    fn data_zero_and_delta_records_apply_once_decoded() {
        let m = machine();
        let ram = Ram::new(4 * MIB).unwrap();
        let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        enc.set_delta_cache(Some(DeltaCache::new(64)));
        let (a, z) = (page(3), vec![0u8; PAGE_SIZE]);
        let mut st = StagedEpoch::default();
        let c1 = container(&m, 1, &mut enc, &[(0x1000, &a), (0x2000, &a)]);
        st.parse(&c1, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        st.check_fits(&ram).unwrap();
        st.apply(&c1, &ram, Prior::Unknown).unwrap();
        assert_eq!(read(&ram, 0x1000), a);
        // Page 0x1000 changes a little (a delta), 0x2000 becomes zero.
        let mut b = a.clone();
        b[100] ^= 0xff;
        let c2 = container(&m, 2, &mut enc, &[(0x1000, &b), (0x2000, &z)]);
        assert!(enc.stats().delta_pages >= 1, "expected a delta record");
        st.parse(&c2, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        st.apply(&c2, &ram, Prior::Unknown).unwrap();
        assert_eq!(read(&ram, 0x1000), b);
        assert_eq!(read(&ram, 0x2000), z);
        assert!(st.state().is_err(), "a memory-only container has no state");
    }

    /// On memory known to be zero, a zero record below every earlier write
    /// does nothing (shown by breaking the promise: the page keeps what was
    /// written outside the container), and one over an earlier write of the
    /// same container is still applied.
    #[test]
    fn zero_records_on_memory_known_to_be_zero_do_no_work_unless_written_first() {
        let m = machine();
        let mut enc = MemoryEncoder::new(Compression::None).unwrap();
        let (a, z) = (page(7), vec![0u8; PAGE_SIZE]);
        let c = container(
            &m,
            1,
            &mut enc,
            &[(0x1000, &z), (0x3000, &a), (0x3000, &z), (0x5000, &z)],
        );
        let mut st = StagedEpoch::default();
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        let apply = |prior| {
            let ram = Ram::new(4 * MIB).unwrap();
            for gpa in [0x1000, 0x5000] {
                ram.write(gpa, &a).unwrap();
            }
            st.apply(&c, &ram, prior).unwrap();
            [0x1000, 0x3000, 0x5000].map(|g| read(&ram, g) == z)
        };
        assert_eq!(apply(Prior::Unknown), [true, true, true]);
        // 0x1000 lies below every write; 0x5000 above 0x3000's, which
        // ends at 0x4000; 0x3000 was written first.
        assert_eq!(apply(Prior::AllZero), [false, true, false]);
    }

    #[test]
    fn decoding_past_the_staging_cap_is_refused() {
        let m = machine();
        let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        let a = vec![9u8; 4 * PAGE_SIZE]; // compresses to almost nothing
        let c = container(&m, 1, &mut enc, &[(0x1000, &a)]);
        assert!(c.len() < PAGE_SIZE, "the container itself is small");
        let mut st = StagedEpoch::default();
        let e = st
            .parse(
                &c,
                &Limits::default(),
                Some(&m.fingerprint()),
                2 * PAGE_SIZE as u64,
            )
            .unwrap_err();
        assert!(e.to_string().contains("bytes of staging allowed"), "{e}");
        st.parse(
            &c,
            &Limits::default(),
            Some(&m.fingerprint()),
            4 * PAGE_SIZE as u64,
        )
        .unwrap();
    }

    #[test]
    fn a_damaged_container_is_refused_whole() {
        let m = machine();
        let mut enc = MemoryEncoder::new(Compression::None).unwrap();
        let a = page(5);
        let mut c = container(&m, 1, &mut enc, &[(0x1000, &a)]);
        let n = c.len();
        c[n - 40] ^= 1; // inside the Memory payload: its CRC fails
        let mut st = StagedEpoch::default();
        assert!(st
            .parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .is_err());
        // A record beyond guest memory parses (the container cannot know the
        // VM) but does not fit, so the standby refuses it before the ack.
        let c = container(&m, 1, &mut enc, &[(64 * MIB, &a)]);
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        let e = st.check_fits(&Ram::new(4 * MIB).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("not inside one guest memory region"),
            "{e}"
        );
    }

    /// A container with one Disk section for disk `index`: `blocks` at
    /// byte offsets, then `holes`.
    fn disk_container(
        m: &MachineConfig,
        index: u32,
        blocks: &[(u64, &[u8])],
        holes: &[(u64, u64)],
    ) -> Vec<u8> {
        let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        let mut w = CheckpointWriter::new(Vec::new(), &Header::full(1, m.fingerprint())).unwrap();
        w.write_section(SectionId::Config, &m.encode()).unwrap();
        let mut payload = Vec::new();
        crate::store::write_disk(
            &mut w,
            index,
            &mut enc,
            holes,
            blocks.iter().copied(),
            &mut payload,
        )
        .unwrap();
        w.finish().unwrap()
    }

    fn replica(tag: &str, bytes: u64) -> std::sync::Arc<DiskImage> {
        let path = std::env::temp_dir().join(format!("hs-staged-{tag}-{}.img", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let spec = crate::devices::virtio::block::DiskSpec {
            path: path.clone(),
            read_only: false,
        };
        let d = std::sync::Arc::new(DiskImage::open(&spec).unwrap());
        std::fs::remove_file(path).unwrap(); // the open file lives on
        d
    }

    #[test]
    fn stored_bytes_are_applied_from_the_container_and_only_from_the_one_parsed() {
        let m = machine();
        let ram = Ram::new(4 * MIB).unwrap();
        let (a, b) = (page(5), page(7));
        let mut st = StagedEpoch::default();
        // Pages sent as they are: nothing is copied to the arena.
        let mut plain = MemoryEncoder::new(Compression::None).unwrap();
        let c = container(&m, 1, &mut plain, &[(0x3000, &a), (0x5000, &b)]);
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        assert!(st.arena.is_empty(), "raw pages were copied");
        // The same bytes elsewhere are not the container parsed.
        let copy = c.clone();
        let e = st
            .apply(&copy, &ram, Prior::Unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other than the one parsed"), "{e}");
        let e = st.apply_disks(&c[..c.len() - 1], &[], false).unwrap_err();
        assert!(e.to_string().contains("other than the one parsed"), "{e}");
        assert_eq!(read(&ram, 0x3000), vec![0u8; PAGE_SIZE], "applied anyway");
        // Another container of the same length in the same buffer (the
        // buffer refilled): its End section differs, so it is refused too.
        let mut refilled = c.clone();
        st.parse(
            &refilled,
            &Limits::default(),
            Some(&m.fingerprint()),
            u64::MAX,
        )
        .unwrap();
        let other = container(&m, 1, &mut plain, &[(0x3000, &b), (0x5000, &a)]);
        assert_eq!(other.len(), refilled.len());
        refilled.copy_from_slice(&other);
        let e = st
            .apply(&refilled, &ram, Prior::Unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other than the one parsed"), "{e}");
        // A parse that failed leaves nothing to apply, even from its bytes.
        let mut bad = c.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0xff;
        st.parse(&bad, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap_err();
        let e = st
            .apply(&bad, &ram, Prior::Unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other than the one parsed"), "{e}");
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        st.apply(&c, &ram, Prior::Unknown).unwrap();
        assert_eq!((read(&ram, 0x3000), read(&ram, 0x5000)), (a.clone(), b));
        // Decompressed pages live in the arena, and apply the same way.
        let mut z = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        let text = vec![b'x'; PAGE_SIZE];
        let c = container(&m, 1, &mut z, &[(0x3000, &text)]);
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        assert_eq!(st.arena.len(), PAGE_SIZE, "decoded bytes are in the arena");
        st.apply(&c, &ram, Prior::Unknown).unwrap();
        assert_eq!(read(&ram, 0x3000), text);
    }

    #[test]
    fn disk_blocks_stage_and_apply_only_to_matching_replicas() {
        use std::os::unix::fs::FileExt;
        let m = machine();
        let (a, b) = (page(3), page(9));
        let mut two = a.clone();
        two.extend_from_slice(&b);
        let c = disk_container(&m, 1, &[(8192, &two)], &[(0, 2)]);
        let mut st = StagedEpoch::default();
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        assert!(st.has_disk_ops());
        // Disk 1 must exist, and the blocks must start inside it.
        let e = st.check_disks(&[MIB]).unwrap_err().to_string();
        assert!(e.contains("disk 1") && e.contains("1 replica disks"), "{e}");
        let e = st.check_disks(&[MIB, 8192]).unwrap_err().to_string();
        assert!(e.contains("offset 0x2000 of disk 1"), "{e}");
        st.check_disks(&[MIB, MIB]).unwrap();
        let disks = [replica("d0", MIB), replica("d1", MIB)];
        disks[1].file.write_all_at(&[0x77; 8192], 0).unwrap();
        assert_eq!(
            st.apply_disks(&c, &disks, true).unwrap(),
            4 * PAGE_SIZE as u64
        );
        let mut got = vec![0u8; 4 * PAGE_SIZE];
        disks[1].file.read_exact_at(&mut got, 0).unwrap();
        assert!(
            got[..8192].iter().all(|&x| x == 0),
            "the hole was not punched"
        );
        assert_eq!(&got[8192..], &two[..]);
        // A disk whose size is not a multiple of 4 KiB: the last block is
        // written only up to the end.
        let odd = replica("odd", 8192 + 512);
        let c = disk_container(&m, 0, &[(8192, &a)], &[]);
        st.parse(&c, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .unwrap();
        st.check_disks(&[odd.bytes]).unwrap();
        assert_eq!(
            st.apply_disks(&c, std::slice::from_ref(&odd), false)
                .unwrap(),
            512
        );
        assert_eq!(
            odd.file.metadata().unwrap().len(),
            8192 + 512,
            "the replica grew"
        );
    }

    #[test]
    fn an_authenticated_stage_skips_only_the_section_crcs() {
        let m = machine();
        let mut enc = MemoryEncoder::new(Compression::None).unwrap();
        let a = page(9);
        let good = container(&m, 1, &mut enc, &[(0, &a)]);
        // A byte of the page changes under its section's CRC.
        let at = good.windows(16).position(|w| w == &a[..16]).unwrap();
        let mut flipped = good.clone();
        flipped[at] ^= 0x01;
        let fp = m.fingerprint();
        let e = StagedEpoch::default()
            .parse(&flipped, &Limits::default(), Some(&fp), u64::MAX)
            .unwrap_err();
        assert!(
            e.to_string().contains("CRC") || e.to_string().contains("checksum"),
            "{e}"
        );
        // Over the authenticated stream the CRC is not recomputed: the page
        // applies as sent.
        let mut st = StagedEpoch::authenticated();
        st.parse(&flipped, &Limits::default(), Some(&fp), u64::MAX)
            .unwrap();
        let ram = Ram::new(4 * MIB).unwrap();
        st.apply(&flipped, &ram, Prior::Unknown).unwrap();
        let mut want = a.clone();
        want[0] ^= 0x01;
        assert_eq!(read(&ram, 0), want);
        // Every other check still holds: a cut container is refused.
        assert!(st
            .parse(
                &good[..good.len() - 1],
                &Limits::default(),
                Some(&fp),
                u64::MAX
            )
            .is_err());
    }

    #[test]
    fn damaged_disk_sections_are_refused_before_anything_is_staged() {
        let m = machine();
        let a = page(5);
        let good = disk_container(&m, 0, &[(0, &a)], &[]);
        let mut st = StagedEpoch::default();
        for cut in [good.len() - 1, good.len() - 30, 100] {
            assert!(st
                .parse(
                    &good[..cut],
                    &Limits::default(),
                    Some(&m.fingerprint()),
                    u64::MAX
                )
                .is_err());
        }
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 40] ^= 0x10;
        assert!(st
            .parse(&bad, &Limits::default(), Some(&m.fingerprint()), u64::MAX)
            .is_err());
        // Decoding past the staging cap is refused too.
        let e = st
            .parse(&good, &Limits::default(), Some(&m.fingerprint()), 100)
            .unwrap_err();
        assert!(e.to_string().contains("bytes of staging allowed"), "{e}");
    }
}
