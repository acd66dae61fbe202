//! Disks in local checkpoints: a base copy of every disk in the checkpoint
//! directory, as of a published checkpoint.
//!
//! The VM writes its own image live, so after a crash that image is ahead
//! of the newest checkpoint's memory. The directory therefore keeps, per
//! disk, `disk<N>.base` (sparse) and one `disks.seq` recording the
//! checkpoint the bases are at. Each checkpoint file carries the blocks its
//! epoch wrote (`Disk` sections); after a file is published its blocks are
//! written into the bases, the bases fsynced, and `disks.seq` advanced
//! (tmp + rename + fsync). A restore brings the bases up to the chain's
//! newest checkpoint by applying the `Disk` sections of every chain file
//! newer than `disks.seq`, then copies each base over the VM's image
//! (allocated extents copied, holes punched), so the restored VM's disk is
//! exactly the one that goes with the restored memory. `disks.list` names
//! the VM's images (`ro`/`rw`, a tab, the path), one per line.

use std::fs::{self, File};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use checkpoint::format::{CheckpointReader, Limits, SectionId};
use checkpoint::{DiskLayout, Fingerprint};

use crate::capture::PageBatch;
use crate::devices::virtio::block::disk::BLOCK;
use crate::devices::virtio::block::{DiskImage, DiskSpec};
use crate::error::Result;
use crate::store::store_err;

const SEQ_FILE: &str = "disks.seq";
const LIST_FILE: &str = "disks.list";

fn base_name(i: usize) -> String {
    format!("disk{i}.base")
}

/// Writes `bytes` to `dir/name` durably (tmp, fsync, rename, fsync dir).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |e: std::io::Error| store_err(dir, format!("writing {name}: {e}"));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, dir.join(name)).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// The base copies of a checkpoint directory.
pub struct DiskBases {
    dir: PathBuf,
    bases: Vec<Arc<DiskImage>>,
    seq: u64,
}

impl DiskBases {
    /// Starts the bases of a new chain: empty sparse copies of the VM's
    /// disks (the first, full checkpoint carries every allocated block).
    pub fn create(dir: &Path, disks: &[DiskSpec], layouts: &[DiskLayout]) -> Result<DiskBases> {
        let mut list = String::new();
        let mut bases = Vec::new();
        for (i, (spec, l)) in disks.iter().zip(layouts).enumerate() {
            let path = dir.join(base_name(i));
            File::create(&path)
                .and_then(|f| f.set_len(l.bytes))
                .map_err(|e| store_err(dir, format!("creating {}: {e}", path.display())))?;
            bases.push(open_base(dir, &path)?);
            let abs = fs::canonicalize(&spec.path).unwrap_or_else(|_| spec.path.clone());
            let mode = if spec.read_only { "ro" } else { "rw" };
            list.push_str(&format!("{mode}\t{}\n", abs.display()));
        }
        write_atomic(dir, LIST_FILE, list.as_bytes())?;
        write_atomic(dir, SEQ_FILE, b"0\n")?;
        Ok(DiskBases {
            dir: dir.to_path_buf(),
            bases,
            seq: 0,
        })
    }

    /// Opens the bases of an existing directory, checked against the
    /// checkpoint's disk layout; returns them and the VM's images.
    pub fn open(dir: &Path, layouts: &[DiskLayout]) -> Result<(DiskBases, Vec<DiskSpec>)> {
        let read = |name: &str| {
            fs::read_to_string(dir.join(name)).map_err(|e| store_err(dir, format!("{name}: {e}")))
        };
        let seq: u64 = read(SEQ_FILE)?
            .trim()
            .parse()
            .map_err(|_| store_err(dir, format!("{SEQ_FILE} does not hold a number")))?;
        let mut specs = Vec::new();
        for line in read(LIST_FILE)?.lines() {
            let (mode, path) = line
                .split_once('\t')
                .ok_or_else(|| store_err(dir, format!("{LIST_FILE}: bad line {line:?}")))?;
            specs.push(DiskSpec {
                path: path.into(),
                read_only: mode == "ro",
            });
        }
        if specs.len() != layouts.len() {
            return Err(store_err(
                dir,
                format!(
                    "{LIST_FILE} names {} disks, the checkpoints hold {}",
                    specs.len(),
                    layouts.len()
                ),
            ));
        }
        let mut bases = Vec::new();
        for (i, l) in layouts.iter().enumerate() {
            let b = open_base(dir, &dir.join(base_name(i)))?;
            if b.bytes != l.bytes {
                return Err(store_err(
                    dir,
                    format!(
                        "{} has {} bytes, the disk {}",
                        base_name(i),
                        b.bytes,
                        l.bytes
                    ),
                ));
            }
            bases.push(b);
        }
        Ok((
            DiskBases {
                dir: dir.to_path_buf(),
                bases,
                seq,
            },
            specs,
        ))
    }

    /// The checkpoint the bases are at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes checkpoint `seq`'s blocks (already published) into the
    /// bases, flushes them, and records `seq`.
    pub fn apply_batches(&mut self, seq: u64, disks: &[PageBatch]) -> Result<()> {
        for (b, d) in disks.iter().zip(&self.bases) {
            let io = |e: std::io::Error| store_err(&self.dir, format!("{}: {e}", d.path.display()));
            for &(off, n) in &b.zero_runs {
                d.punch_blocks(off, n * BLOCK).map_err(io)?;
            }
            for (off, data) in b.iter() {
                d.write_blocks(off, data).map_err(io)?;
            }
            d.file.sync_data().map_err(io)?;
        }
        self.set_seq(seq)
    }

    fn set_seq(&mut self, seq: u64) -> Result<()> {
        write_atomic(&self.dir, SEQ_FILE, format!("{seq}\n").as_bytes())?;
        self.seq = seq;
        Ok(())
    }

    /// Applies the `Disk` sections of a verified checkpoint file `seq` to
    /// the bases (a restore catching up), flushes them and records `seq`.
    pub fn apply_file(&mut self, seq: u64, path: &Path, fp: &Fingerprint) -> Result<()> {
        let f = File::open(path)
            .map_err(|e| store_err(&self.dir, format!("{}: {e}", path.display())))?;
        let mut rd = CheckpointReader::new(BufReader::new(f), &Limits::default(), Some(fp))?;
        while let Some((id, payload)) = rd.next_section()? {
            if id != SectionId::Disk {
                continue;
            }
            let (index, _) = checkpoint::disk::split(&payload)?;
            let d = self.bases.get(index as usize).ok_or_else(|| {
                store_err(
                    &self.dir,
                    format!(
                        "{}: a block of disk {index}, which does not exist",
                        path.display()
                    ),
                )
            })?;
            let bad = |e: std::io::Error| {
                checkpoint::CheckpointError::Decode(format!("{}: {e}", d.path.display()))
            };
            checkpoint::disk::decode(
                &payload,
                |off, data| d.write_blocks(off, data).map(|_| ()).map_err(bad),
                |off, len| d.punch_blocks(off, len).map(|_| ()).map_err(bad),
            )?;
        }
        for d in &self.bases {
            d.file
                .sync_data()
                .map_err(|e| store_err(&self.dir, format!("{}: {e}", d.path.display())))?;
        }
        self.set_seq(seq)
    }

    /// Makes `target` (the VM's image) a copy of base `i`: allocated
    /// extents copied, everything else punched (it stays sparse).
    pub fn copy_to(&self, i: usize, target: &Path) -> Result<()> {
        let b = &self.bases[i];
        let io = |e: std::io::Error| {
            store_err(&self.dir, format!("restoring {}: {e}", target.display()))
        };
        let t = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map_err(io)?;
        if t.metadata().map_err(io)?.is_file() {
            t.set_len(b.bytes).map_err(io)?;
        }
        let spec = DiskSpec {
            path: target.to_path_buf(),
            read_only: false,
        };
        let tgt = DiskImage::open(&spec).map_err(|e| store_err(&self.dir, e))?;
        tgt.punch(0, b.bytes).map_err(io)?;
        let mut buf = Vec::new();
        for r in b.allocated_blocks() {
            let mut at = r.start as u64;
            while at < r.end as u64 {
                let n = (r.end as u64 - at).min(256);
                buf.clear();
                b.read_blocks(at, n, &mut buf).map_err(io)?;
                tgt.write_blocks(at * BLOCK, &buf).map_err(io)?;
                at += n;
            }
        }
        tgt.file.sync_all().map_err(io)
    }
}

fn open_base(dir: &Path, path: &Path) -> Result<Arc<DiskImage>> {
    let spec = DiskSpec {
        path: path.to_path_buf(),
        read_only: false,
    };
    DiskImage::open(&spec)
        .map(Arc::new)
        .map_err(|e| store_err(dir, e))
}
