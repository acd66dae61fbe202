//! Local checkpoints in a directory: the file-backed twin of a shadow.
//!
//! Files are named `<seq:020>.full.ckpt` and `<seq:020>.incr.ckpt`. Each is
//! written to a hidden `.tmp` file, fsynced, renamed into place and the
//! directory fsynced: a crash at any moment leaves either the old set or the
//! new set of published files, never a torn one (stray `.tmp` files are
//! ignored and removed at the next start).
//!
//! The store keeps an image of guest memory as of the last published
//! checkpoint (like a shadow's staged memory). Compaction writes that image
//! as a new full checkpoint and deletes the older chain, so the directory does
//! not grow without bound and no VM pause is needed for it.
//!
//! Restore picks the newest full checkpoint and the chain of incrementals on
//! top of it, verifies every file completely (magic, version, fingerprint,
//! checksums, chain links) before touching any memory, then applies them.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use checkpoint::fingerprint::{Fingerprint, MachineConfig};
use checkpoint::format::{
    self, CheckpointKind, CheckpointReader, CheckpointWriter, Header, Limits, SectionId, Sink,
};
use checkpoint::memcopy::VecSink;
use checkpoint::pages::{self, Compression, MemoryEncoder, MemoryStats};

use crate::capture::Epoch;
use crate::error::{EngineError, Result};
use crate::memory::{Ram, PAGE_SIZE};
use crate::snapshot::{write_state, StateSections};
use crate::store_disks::DiskBases;

/// Raw page bytes per Memory section.
const SECTION_RAW_BYTES: usize = 8 << 20;

/// A checkpoint directory error naming `dir` (every store module's).
pub(crate) fn store_err(dir: &Path, msg: impl Into<String>) -> EngineError {
    EngineError::Store {
        dir: dir.to_path_buf(),
        msg: msg.into(),
    }
}

fn file_name(seq: u64, full: bool) -> String {
    format!("{seq:020}.{}.ckpt", if full { "full" } else { "incr" })
}

/// A published checkpoint file found in a directory.
#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    full: bool,
    path: PathBuf,
}

fn list(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| store_err(dir, format!("cannot read: {e}")))?;
    for ent in rd {
        let ent = ent.map_err(|e| store_err(dir, format!("cannot read: {e}")))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".ckpt") else {
            continue;
        };
        let Some((seq, kind)) = stem.split_once('.') else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        let full = match kind {
            "full" => true,
            "incr" => false,
            _ => continue,
        };
        out.push(Entry {
            seq,
            full,
            path: ent.path(),
        });
    }
    out.sort_by_key(|e| (e.seq, !e.full));
    Ok(out)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store_err(dir, format!("fsync: {e}")))
}

pub use crate::snapshot::EpochState;

/// Writes page runs as Memory sections of bounded size.
fn write_pages<'a, W: Sink>(
    w: &mut CheckpointWriter<W>,
    enc: &mut MemoryEncoder,
    zero_runs: &[(u64, u64)],
    runs: impl Iterator<Item = (u64, &'a [u8])>,
    payload: &mut Vec<u8>,
) -> Result<()> {
    write_records(w, SectionId::Memory, &[], enc, zero_runs, runs, payload)
}

/// Writes one disk's blocks as Disk sections of bounded size (`runs` and
/// `zero_runs` in byte offsets and 4 KiB blocks).
pub fn write_disk<'a, W: Sink>(
    w: &mut CheckpointWriter<W>,
    index: u32,
    enc: &mut MemoryEncoder,
    zero_runs: &[(u64, u64)],
    runs: impl Iterator<Item = (u64, &'a [u8])>,
    payload: &mut Vec<u8>,
) -> Result<()> {
    let header = checkpoint::disk::header(index);
    write_records(w, SectionId::Disk, &header, enc, zero_runs, runs, payload)
}

/// Writes page records as `id` sections of bounded size, each payload
/// starting with `prefix` (built in place in a container in memory,
/// else in `payload`).
fn write_records<'a, W: Sink>(
    w: &mut CheckpointWriter<W>,
    id: SectionId,
    prefix: &[u8],
    enc: &mut MemoryEncoder,
    zero_runs: &[(u64, u64)],
    runs: impl Iterator<Item = (u64, &'a [u8])>,
    payload: &mut Vec<u8>,
) -> Result<()> {
    let step = pages::RECOMMENDED_RUN_PAGES * PAGE_SIZE as usize;
    let mut chunks = runs
        .flat_map(|(gpa, data)| {
            data.chunks(step)
                .enumerate()
                .map(move |(i, c)| (gpa + (i * step) as u64, c))
        })
        .peekable();
    // Known-zero runs first (markers only, in the first section), so data
    // for the same pages, if any, is applied after them.
    let mut zero_runs = Some(zero_runs).filter(|z| !z.is_empty());
    // A section is started only for something to put in it.
    while zero_runs.is_some() || chunks.peek().is_some() {
        w.write_section_with(id, payload, |buf| -> Result<bool> {
            let start = buf.len();
            buf.extend_from_slice(prefix);
            for &(gpa, npages) in zero_runs.take().unwrap_or_default() {
                enc.encode_zero_run(gpa, npages, buf)?;
            }
            let mut raw_in_section = 0usize;
            for (at, chunk) in chunks.by_ref() {
                enc.encode_run(at, chunk, buf)?;
                raw_in_section += chunk.len();
                if raw_in_section >= SECTION_RAW_BYTES {
                    break;
                }
            }
            enc.flush(buf)?;
            Ok(buf.len() - start > prefix.len())
        })?;
    }
    Ok(())
}

/// Writes every disk's blocks of an epoch.
fn write_disks<W: Sink>(
    w: &mut CheckpointWriter<W>,
    disks: &[crate::capture::PageBatch],
    bufs: &mut EncodeBuffers,
    compression: pages::Compression,
) -> Result<()> {
    for (i, b) in disks.iter().enumerate() {
        if b.runs.is_empty() && b.zero_runs.is_empty() {
            continue;
        }
        let mut payload = std::mem::take(&mut bufs.payload);
        let enc = bufs.disk_encoder(compression)?;
        let res = write_disk(w, i as u32, enc, &b.zero_runs, b.iter(), &mut payload);
        bufs.payload = payload;
        res?;
    }
    Ok(())
}

/// Buffers reused from one in-memory encoding to the next, so steady-state
/// encoding writes into memory that is already faulted in (a fresh buffer
/// costs a page fault per 4 KiB on these hosts: more than the encoding).
#[derive(Default)]
pub struct EncodeBuffers {
    /// The next container is written into this (taken, then handed back
    /// by whoever sent the previous one).
    pub container: Vec<u8>,
    /// Memory-section payload under construction.
    pub payload: Vec<u8>,
    /// The encoder of disk blocks (no XOR deltas), made on first use.
    disk: Option<MemoryEncoder>,
}

impl EncodeBuffers {
    /// The disk-block encoder, with `compression`.
    pub fn disk_encoder(&mut self, compression: pages::Compression) -> Result<&mut MemoryEncoder> {
        if self
            .disk
            .as_ref()
            .is_none_or(|e| e.compression() != compression)
        {
            let mut e = MemoryEncoder::new(compression)?;
            e.set_batching(true);
            self.disk = Some(e);
        }
        Ok(self.disk.as_mut().expect("made above"))
    }
}

/// Writer side: publishes checkpoints into a directory.
pub struct DirStore {
    dir: PathBuf,
    machine: MachineConfig,
    fingerprint: Fingerprint,
    image: Ram,
    last_seq: Option<u64>,
    incr_since_full: u32,
    /// Compact after this many incrementals.
    pub compact_every: u32,
    compression: Compression,
    /// Memory encoding counters of the last write.
    pub last_stats: MemoryStats,
    /// Base copies of the VM's disks (`store_disks.rs`), if it has any.
    disks: Option<DiskBases>,
}

impl DirStore {
    /// Opens (creating if needed) a checkpoint directory for a VM with this
    /// configuration. `continue_from` continues an existing chain at
    /// `(seq, image)` after a restore (the disk bases are the directory's);
    /// otherwise the first epoch must be full, and `disks` names the VM's
    /// images (their bases are created).
    pub fn open(
        dir: &Path,
        machine: &MachineConfig,
        continue_from: Option<(u64, Ram)>,
        disks: &[crate::devices::virtio::block::DiskSpec],
    ) -> Result<DirStore> {
        fs::create_dir_all(dir).map_err(|e| store_err(dir, format!("cannot create: {e}")))?;
        let rd = fs::read_dir(dir).map_err(|e| store_err(dir, format!("cannot read: {e}")))?;
        for ent in rd.flatten() {
            if ent.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(ent.path());
            }
        }
        let continuing = continue_from.is_some();
        let (last_seq, image) = match continue_from {
            Some((seq, image)) => (Some(seq), image),
            None => {
                if !list(dir)?.is_empty() {
                    return Err(store_err(
                        dir,
                        "already holds checkpoints of another run: use `hotspare restore` to continue it, or an empty directory",
                    ));
                }
                // An end record with no checkpoint to follow belongs to
                // nothing: a new run's would be refused as stale.
                match fs::remove_file(dir.join(crate::store_end::END_FILE)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(store_err(dir, format!("removing a stale end record: {e}")))
                    }
                    _ => {}
                }
                let bytes = machine.mem_regions.iter().map(|r| r.size).sum();
                (None, Ram::new(bytes)?)
            }
        };
        let disks = match (machine.disks.is_empty(), continuing) {
            (true, _) => None,
            (false, true) => Some(DiskBases::open(dir, &machine.disks)?.0),
            (false, false) => Some(DiskBases::create(dir, disks, &machine.disks)?),
        };
        Ok(DirStore {
            disks,
            dir: dir.to_path_buf(),
            fingerprint: machine.fingerprint(),
            machine: machine.clone(),
            image,
            last_seq,
            incr_since_full: 0,
            compact_every: 32,
            compression: Compression::Zstd { level: 1 },
            last_stats: MemoryStats::default(),
        })
    }

    /// Records durably that the guest ended with `exit_code`, after the
    /// newest checkpoint, having printed `output` (starting at console
    /// position `start`) since: what a restore shows instead of running the
    /// guest again (`store_end.rs`). Call before that output is released.
    pub fn write_end(&self, start: u64, output: Vec<u8>, exit_code: i32) -> Result<()> {
        let after_seq = self
            .last_seq
            .ok_or_else(|| store_err(&self.dir, "the guest ended before the first checkpoint"))?;
        if output.len() > crate::store_end::MAX_OUTPUT {
            return Err(store_err(
                &self.dir,
                format!("{} bytes of output since the last checkpoint are more than an end record holds", output.len()),
            ));
        }
        let rec = crate::store_end::EndRecord {
            after_seq,
            start,
            exit_code,
            output,
        };
        self.publish(crate::store_end::END_FILE, |w| {
            w.write_all(&rec.encode()).map_err(|e| {
                store_err(
                    &self.dir,
                    format!("write {}: {e}", crate::store_end::END_FILE),
                )
            })
        })?;
        Ok(())
    }

    /// The sequence number of the newest published checkpoint.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    fn publish(
        &self,
        name: &str,
        body: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<PathBuf> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let fin = self.dir.join(name);
        let f = File::create(&tmp)
            .map_err(|e| store_err(&self.dir, format!("create {}: {e}", tmp.display())))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let res = body(&mut w).and_then(|_| {
            crate::faults::hit(crate::faults::Point::StoreMidWrite);
            let f = w.into_inner().map_err(|e| {
                store_err(&self.dir, format!("write {}: {}", tmp.display(), e.error()))
            })?;
            f.sync_all()
                .map_err(|e| store_err(&self.dir, format!("fsync {}: {e}", tmp.display())))
        });
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &fin)
            .map_err(|e| store_err(&self.dir, format!("rename {}: {e}", tmp.display())))?;
        fsync_dir(&self.dir)?;
        Ok(fin)
    }

    /// Writes an epoch durably. A full epoch starts a new chain; an
    /// incremental one goes on top of the last published checkpoint.
    pub fn write_epoch(&mut self, ep: &Epoch) -> Result<u64> {
        let seq = self.last_seq.map_or(1, |s| s + 1);
        let header = match (ep.full, self.last_seq) {
            (true, _) => Header::full(seq, self.fingerprint),
            (false, Some(base)) => Header::incremental(seq, base, self.fingerprint),
            (false, None) => {
                return Err(store_err(
                    &self.dir,
                    "the first checkpoint of a chain must be full",
                ))
            }
        };
        let state = ep.state();
        let mut enc = MemoryEncoder::new(self.compression)?;
        let compression = self.compression;
        let machine = &self.machine;
        self.publish(&file_name(seq, ep.full), |w| {
            let mut cw = CheckpointWriter::new(w, &header)?;
            write_state(&mut cw, machine, &state)?;
            write_pages(
                &mut cw,
                &mut enc,
                &ep.pages.zero_runs,
                ep.pages.iter(),
                &mut Vec::new(),
            )?;
            write_disks(
                &mut cw,
                &ep.disks,
                &mut EncodeBuffers::default(),
                compression,
            )?;
            cw.finish()?;
            Ok(())
        })?;
        self.last_stats = enc.take_stats();
        for &(gpa, n) in &ep.pages.zero_runs {
            self.image.zero_range(gpa, n * PAGE_SIZE)?;
        }
        for (gpa, data) in ep.pages.iter() {
            let (r, off) = self.image.locate(gpa).ok_or_else(|| {
                store_err(&self.dir, format!("page {gpa:#x} outside guest memory"))
            })?;
            r.write(off, data);
        }
        self.last_seq = Some(seq);
        if let Some(b) = &mut self.disks {
            // Published: its blocks go into the bases (a crash before this
            // is caught up by the restore from the file itself).
            b.apply_batches(seq, &ep.disks)?;
        }
        if ep.full {
            self.remove_older_than(seq)?;
            self.incr_since_full = 0;
        } else {
            self.incr_since_full += 1;
            if self.incr_since_full >= self.compact_every {
                self.compact(&state)?;
            }
        }
        Ok(seq)
    }

    /// Writes the memory image as a full checkpoint at the last seq and drops the older chain.
    fn compact(&mut self, state: &EpochState) -> Result<()> {
        let Some(seq) = self.last_seq else {
            return Ok(());
        };
        let header = Header::full(seq, self.fingerprint);
        let mut enc = MemoryEncoder::new(self.compression)?;
        let machine = &self.machine;
        let image = &self.image;
        self.publish(&file_name(seq, true), |w| {
            let mut cw = CheckpointWriter::new(w, &header)?;
            write_state(&mut cw, machine, state)?;
            write_pages(
                &mut cw,
                &mut enc,
                &[],
                image.regions.iter().map(|r| (r.gpa, r.as_slice())),
                &mut Vec::new(),
            )?;
            cw.finish()?;
            Ok(())
        })?;
        self.remove_older_than(seq)?;
        self.incr_since_full = 0;
        Ok(())
    }

    /// Deletes every published file that the full checkpoint `seq` supersedes.
    fn remove_older_than(&self, seq: u64) -> Result<()> {
        for e in list(&self.dir)? {
            if e.seq < seq || (e.seq == seq && !e.full) {
                fs::remove_file(&e.path).map_err(|err| {
                    store_err(&self.dir, format!("remove {}: {err}", e.path.display()))
                })?;
            }
        }
        fsync_dir(&self.dir)
    }
}

/// A verified chain of checkpoint files, ready to apply.
pub struct Chain {
    /// The directory.
    pub dir: PathBuf,
    /// The VM configuration.
    pub machine: MachineConfig,
    /// The newest sequence number.
    pub seq: u64,
    /// (seq, path), oldest first.
    files: Vec<(u64, PathBuf)>,
}

/// Finds and fully verifies the newest complete chain in `dir`.
pub fn find_chain(dir: &Path) -> Result<Chain> {
    if !dir.is_dir() {
        return Err(store_err(dir, "does not exist or is not a directory"));
    }
    let entries = list(dir)?;
    let full = entries
        .iter()
        .rev()
        .find(|e| e.full)
        .ok_or_else(|| store_err(dir, "holds no complete full checkpoint"))?;
    let limits = Limits::default();
    let open = |p: &Path| {
        File::open(p)
            .map(BufReader::new)
            .map_err(|e| store_err(dir, format!("open {}: {e}", p.display())))
    };
    let verify = |p: &Path, fp: Option<&Fingerprint>| -> Result<Header> {
        format::verify(open(p)?, &limits, fp)
            .map_err(|e| store_err(dir, format!("{} is unusable: {e}", p.display())))
    };
    let head = verify(&full.path, None)?;
    if head.kind != CheckpointKind::Full || head.seq != full.seq {
        return Err(store_err(
            dir,
            format!(
                "{} does not hold the full checkpoint its name says",
                full.path.display()
            ),
        ));
    }
    // The Config section must hash to the header's fingerprint.
    let mut rd = CheckpointReader::new(open(&full.path)?, &limits, None)?;
    let machine = match rd.next_section()? {
        Some((SectionId::Config, p)) => MachineConfig::decode(&p)?,
        _ => {
            return Err(store_err(
                dir,
                format!("{} has no Config section first", full.path.display()),
            ))
        }
    };
    if machine.fingerprint() != head.fingerprint {
        return Err(store_err(
            dir,
            format!(
                "{}: Config section does not match the header fingerprint",
                full.path.display()
            ),
        ));
    }
    let mut files = vec![(full.seq, full.path.clone())];
    let mut seq = full.seq;
    for e in entries.iter().filter(|e| !e.full && e.seq > full.seq) {
        let h = verify(&e.path, Some(&head.fingerprint))?;
        if h.kind != CheckpointKind::Incremental || h.seq != e.seq {
            return Err(store_err(
                dir,
                format!(
                    "{} does not hold the incremental checkpoint its name says",
                    e.path.display()
                ),
            ));
        }
        if h.base_seq != seq {
            return Err(store_err(
                dir,
                format!(
                    "{} applies on top of checkpoint {}, but the chain is at {seq}",
                    e.path.display(),
                    h.base_seq
                ),
            ));
        }
        files.push((e.seq, e.path.clone()));
        seq = e.seq;
    }
    Ok(Chain {
        dir: dir.to_path_buf(),
        machine,
        seq,
        files,
    })
}

impl Chain {
    /// The chain's files, as (seq, path), oldest first.
    pub fn files(&self) -> &[(u64, PathBuf)] {
        &self.files
    }

    /// Applies every file's memory to `ram` (oldest first) and returns the
    /// newest file's state.
    pub fn apply(&self, ram: &Ram) -> Result<EpochState> {
        let fp = self.machine.fingerprint();
        let mut last = None;
        for (_, path) in &self.files {
            let f = File::open(path)
                .map_err(|e| store_err(&self.dir, format!("open {}: {e}", path.display())))?;
            let state = apply_checkpoint(BufReader::new(f), ram, &fp)
                .map_err(|e| store_err(&self.dir, format!("{}: {e}", path.display())))?;
            last = Some(state);
        }
        last.ok_or_else(|| store_err(&self.dir, "empty chain"))
    }
}

/// Applies one checkpoint's memory to `ram` and returns its state. The
/// checkpoint must have been verified first (`checkpoint::verify`): a stream
/// that fails halfway leaves `ram` partly written.
pub fn apply_checkpoint<R: std::io::Read>(r: R, ram: &Ram, fp: &Fingerprint) -> Result<EpochState> {
    let mut rd = CheckpointReader::new(r, &Limits::default(), Some(fp))?;
    let mut state = StateSections::default();
    let mem_err = |e: EngineError| checkpoint::CheckpointError::Decode(e.to_string());
    while let Some((id, payload)) = rd.next_section()? {
        if id == SectionId::Disk {
            // Disks are restored from their bases (`store_disks.rs`).
            continue;
        }
        if id != SectionId::Memory {
            state.take(id, &payload)?;
            continue;
        }
        pages::decode_records_with_deltas(
            &payload,
            |gpa, data| ram.write(gpa, data).map_err(mem_err),
            // Zero runs drop the memory instead of writing zeros into it.
            |gpa, len| ram.zero_range(gpa, len).map_err(mem_err),
            // Deltas are XORed into what the pages hold now.
            |gpa, delta| ram.xor(gpa, delta).map_err(mem_err),
        )?;
    }
    state.state()
}

/// Encodes zero runs and page runs as a memory-only checkpoint (a pre-copy
/// chunk: Config and Memory sections, no state) into `bufs.container`.
pub fn encode_memory_only<'a>(
    header: &Header,
    machine: &MachineConfig,
    zero_runs: &[(u64, u64)],
    runs: impl Iterator<Item = (u64, &'a [u8])>,
    enc: &mut MemoryEncoder,
    bufs: &mut EncodeBuffers,
) -> Result<Vec<u8>> {
    let mut cw = precopy_writer(header, machine, bufs)?;
    write_pages(&mut cw, enc, zero_runs, runs, &mut bufs.payload)?;
    Ok(cw.finish()?.0)
}

/// A pre-copy container under construction in `bufs.container`, its
/// Config section written.
fn precopy_writer(
    header: &Header,
    machine: &MachineConfig,
    bufs: &mut EncodeBuffers,
) -> Result<CheckpointWriter<VecSink>> {
    let mut out = std::mem::take(&mut bufs.container);
    out.clear();
    let mut cw = CheckpointWriter::new(VecSink(out), header)?;
    cw.write_section(SectionId::Config, &machine.encode())?;
    Ok(cw)
}

/// Encodes one disk's blocks as a pre-copy container (Config and Disk
/// sections) into `bufs.container`.
pub fn encode_disk_only<'a>(
    header: &Header,
    machine: &MachineConfig,
    index: u32,
    zero_runs: &[(u64, u64)],
    runs: impl Iterator<Item = (u64, &'a [u8])>,
    compression: pages::Compression,
    bufs: &mut EncodeBuffers,
) -> Result<Vec<u8>> {
    let mut cw = precopy_writer(header, machine, bufs)?;
    let mut payload = std::mem::take(&mut bufs.payload);
    let enc = bufs.disk_encoder(compression)?;
    let res = write_disk(&mut cw, index, enc, zero_runs, runs, &mut payload);
    bufs.payload = payload;
    res?;
    Ok(cw.finish()?.0)
}

/// Encodes an epoch as a complete checkpoint container in memory (for the
/// replication stream) into `bufs.container`. Returns the bytes and the
/// memory encoding figures.
pub fn encode_checkpoint(
    header: &Header,
    machine: &MachineConfig,
    ep: &Epoch,
    enc: &mut MemoryEncoder,
    bufs: &mut EncodeBuffers,
) -> Result<(Vec<u8>, MemoryStats)> {
    let mut out = std::mem::take(&mut bufs.container);
    out.clear();
    out.reserve(ep.pages.data.len() / 2 + 4096);
    let mut cw = CheckpointWriter::new(VecSink(out), header)?;
    write_state(&mut cw, machine, &ep.state())?;
    write_pages(
        &mut cw,
        enc,
        &ep.pages.zero_runs,
        ep.pages.iter(),
        &mut bufs.payload,
    )?;
    let stats = enc.take_stats();
    write_disks(&mut cw, &ep.disks, bufs, enc.compression())?;
    Ok((cw.finish()?.0, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use checkpoint::fingerprint::Fingerprint;

    /// Pages that fill sections exactly (twice `SECTION_RAW_BYTES`) make
    /// exactly two sections, built in place, and no empty third is even
    /// started: a writer allowed two sections takes them.
    #[test]
    fn pages_filling_sections_exactly_start_no_empty_one() {
        let data: Vec<u8> = (0..2 * SECTION_RAW_BYTES)
            .map(|i| (i / PAGE_SIZE as usize % 251 + 1) as u8)
            .collect();
        let limits = Limits {
            max_sections: 2,
            ..Limits::default()
        };
        let header = Header::full(1, Fingerprint::from_bytes([3; 32]));
        for sink_in_memory in [true, false] {
            let mut enc = MemoryEncoder::new(Compression::None).unwrap();
            let runs = std::iter::once((0x10_0000u64, &data[..]));
            let bytes = if sink_in_memory {
                let mut cw = CheckpointWriter::with_limits(Vec::new(), &header, &limits).unwrap();
                write_pages(&mut cw, &mut enc, &[], runs, &mut Vec::new()).unwrap();
                cw.finish().unwrap()
            } else {
                let sink = std::io::BufWriter::new(Vec::new());
                let mut cw = CheckpointWriter::with_limits(sink, &header, &limits).unwrap();
                write_pages(&mut cw, &mut enc, &[], runs, &mut Vec::new()).unwrap();
                cw.finish().unwrap().into_inner().unwrap()
            };
            let mut r = CheckpointReader::new(&bytes[..], &limits, None).unwrap();
            let mut back = vec![0u8; data.len()];
            let mut sections = 0;
            while let Some((id, payload)) = r.next_section().unwrap() {
                assert_eq!(id, SectionId::Memory);
                sections += 1;
                pages::decode_records(&payload, |gpa, page| {
                    let at = (gpa - 0x10_0000) as usize;
                    back[at..at + page.len()].copy_from_slice(page);
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(sections, 2);
            assert!(back == data, "the pages came back changed");
        }
    }

    /// Nothing to write starts no section at all.
    #[test]
    fn no_pages_write_no_section() {
        let limits = Limits {
            max_sections: 0,
            ..Limits::default()
        };
        let header = Header::full(1, Fingerprint::from_bytes([3; 32]));
        let mut cw = CheckpointWriter::with_limits(Vec::new(), &header, &limits).unwrap();
        let mut enc = MemoryEncoder::new(Compression::None).unwrap();
        write_pages(&mut cw, &mut enc, &[], std::iter::empty(), &mut Vec::new()).unwrap();
        assert_eq!(cw.sections_written(), 0);
    }
}
