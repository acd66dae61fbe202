//! A joining spare's live copy: every page and disk block ever written,
//! read from the running guest and sent as pre-copy containers, before the
//! spare receives the epochs after its join point (`docs/spares.md`).
//!
//! The containers are all of kind Full with the join point's sequence
//! number: each carries a part of memory (the first also the zero markers),
//! and the spare applies them without committing anything. The epochs after
//! the join point follow, increments on top of the copy. A page written
//! while it is copied is dirty in a later epoch, so the spare's state is
//! exact only at epochs captured after the copy finished reading: epochs
//! before that reach it as pre-copy, and its first commit is one of those
//! after (`commit.rs`, `CommitSet::copied`). Runs on the link's sender
//! thread, so the primary keeps taking epochs for the other spares meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};

use super::catchup::CatchUpRound;
use super::copycoding::{ChunkCoding, CopyCoding};
use super::wire::EpochEnd;
use crate::capture::PrecopyRound;
use crate::devices::virtio::block::disk::{DiskImage, BLOCK};
use crate::error::{EngineError, Result};
use crate::memory::{Ram, PAGE_SIZE};
use crate::store;
use checkpoint::fingerprint::MachineConfig;
use checkpoint::format::Header;
use checkpoint::pages::{Compression, MemoryEncoder};

/// A sync round is sent in pre-copy containers of at most this many pages
/// (1 MiB), so sending and applying overlap with reading and encoding. At
/// 4 MiB the two ends took turns more than they overlapped: a 1 GiB mixed
/// copy to protected took a median 1.22 s against 1.155 s at 1 MiB
/// (`docs/performance.md`, "Smaller containers").
const SYNC_CHUNK_PAGES: u64 = 256;

/// Containers per coding decision: [`CopyCoding`] measures the pace of
/// 4 MiB of pages at a time, so that a probe still spans the socket's
/// buffers whatever the container size.
const CHUNKS_PER_DECISION: u32 = 4;

/// The zstd level of a live copy's chunks that go compressed (those that
/// go plain are chosen by [`CopyCoding`]). When a copy is bound by CPU on
/// both ends, a fast level pays: on the harness's mixed pages
/// (`bench/compbench`, 512 KiB units) level -3 compresses 1.57x and
/// decompresses 2.3x as fast as level 1, for 9% more bytes, and a 1 GiB
/// guest's copy, all of it coded, took 0.66-0.72x the time (docs/performance.md,
/// "The live copy, phase by phase").
pub(super) const COPY_ZSTD_LEVEL: i32 = -3;

/// How a live copy's compressed chunks are coded, given the link's
/// setting: zstd at [`COPY_ZSTD_LEVEL`] unless the link asks for a faster
/// level still; with no compression on the link, every chunk goes plain.
pub(super) fn copy_compression(link: Compression) -> Compression {
    match link {
        Compression::None => Compression::None,
        Compression::Zstd { level } => Compression::Zstd {
            level: level.min(COPY_ZSTD_LEVEL),
        },
    }
}

/// The containers coded by one decision: how, since when, how many, and
/// their units.
struct Group {
    how: ChunkCoding,
    since: Instant,
    chunks: u32,
    units: u64,
}

/// Splits page runs `(gpa, pages)` into chunks of at most
/// [`SYNC_CHUNK_PAGES`] pages, in order (a long run is cut across chunks).
fn sync_chunks(runs: &[(u64, u64)]) -> Vec<Vec<(u64, u64)>> {
    let mut chunks = Vec::new();
    let (mut chunk, mut in_chunk) = (Vec::new(), 0u64);
    for &(gpa, np) in runs {
        let mut done = 0;
        while done < np {
            let k = (np - done).min(SYNC_CHUNK_PAGES - in_chunk);
            chunk.push((gpa + done * PAGE_SIZE, k));
            (done, in_chunk) = (done + k, in_chunk + k);
            if in_chunk == SYNC_CHUNK_PAGES {
                chunks.push(std::mem::take(&mut chunk));
                in_chunk = 0;
            }
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// The runs of `chunk` ((address, pages of 4 KiB)) as slices of `data`,
/// which holds their bytes back to back.
fn runs_in<'a>(
    chunk: &'a [(u64, u64)],
    data: &'a [u8],
) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
    let mut at = 0usize;
    chunk.iter().map(move |&(addr, n)| {
        let len = (n * PAGE_SIZE) as usize;
        let s = &data[at..at + len];
        at += len;
        (addr, s)
    })
}

/// What a joining spare's sender copies before it forwards epochs.
pub(super) struct LiveCopy {
    /// The join point: the copy is labelled with it, epochs after it follow.
    pub seq: u64,
    pub plan: PrecopyRound,
    pub ram: Arc<Ram>,
    pub disks: Vec<Arc<DiskImage>>,
    pub machine: MachineConfig,
    pub compression: Compression,
    /// The end frame every container of the copy carries (no output).
    pub end: EpochEnd,
    /// Where the encoder hands over the catch-up round once the copy is
    /// read (`catchup.rs`).
    pub catch_up: Receiver<CatchUpRound>,
}

/// What a live copy cost.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CopyFigures {
    /// Pages and disk blocks read (the copy and its catch-up round).
    pub units: u64,
    /// Container bytes sent.
    pub wire_bytes: u64,
    pub secs: f64,
    /// Of `units`, those sent in chunks coded plain (the rest: zstd).
    pub plain_units: u64,
    /// Of `units`, those of the catch-up round.
    pub catch_up_units: u64,
}

/// The encoders and buffers a copy's rounds share.
struct Copier {
    zstd: MemoryEncoder,
    plain: MemoryEncoder,
    /// Plain or zstd, chunk by chunk, by the pace each achieves; `None`:
    /// plain throughout (the link has no compression).
    coding: Option<CopyCoding>,
    compression: Compression,
    bufs: store::EncodeBuffers,
    scratch: Vec<u8>,
    figures: CopyFigures,
    /// The decision the next containers follow, once taken.
    group: Option<Group>,
}

impl Copier {
    /// How the next container is coded: the group's decision, or a new one.
    fn coding(&mut self) -> ChunkCoding {
        let coding = &self.coding;
        self.group
            .get_or_insert_with(|| Group {
                how: coding.as_ref().map_or(ChunkCoding::Plain, CopyCoding::next),
                since: Instant::now(),
                chunks: 0,
                units: 0,
            })
            .how
    }

    /// Counts a container of `units` just sent; a full group tells the
    /// decision how it went.
    fn sent(&mut self, units: u64) {
        if let Some(g) = self.group.as_mut() {
            g.chunks += 1;
            g.units += units;
            if g.how == ChunkCoding::Plain {
                self.figures.plain_units += units;
            }
            if g.chunks == CHUNKS_PER_DECISION {
                self.close();
            }
        }
    }

    /// Tells the decision how the group so far went (a round's end).
    fn close(&mut self) {
        if let Some(g) = self.group.take() {
            if let Some(c) = self.coding.as_mut() {
                c.sent(g.units * PAGE_SIZE, g.since.elapsed().as_secs_f64());
            }
        }
    }
}

/// What a copy tells its link, and asks it: each container sent, the copy
/// read (the encoder then switches the link), and whether the link was
/// lost while the sender waits for its catch-up round.
pub(super) struct CopySignals<'a> {
    /// Told each container's sequence number before it is sent (for ack
    /// latencies).
    pub sent: &'a dyn Fn(u64),
    /// Told the copy finished reading.
    pub read: &'a dyn Fn(),
    /// Whether the link was lost meanwhile.
    pub lost: &'a dyn Fn() -> bool,
}

impl LiveCopy {
    /// Reads, encodes and sends the copy on `conn`, then the catch-up
    /// round the encoder hands over once it heard the copy was read.
    pub(super) fn send(
        &self,
        conn: &mut transport::Sender,
        term: u64,
        signals: &CopySignals<'_>,
    ) -> Result<CopyFigures> {
        let t0 = Instant::now();
        let compression = copy_compression(self.compression);
        let mut zstd = MemoryEncoder::new(compression)?;
        let mut plain = MemoryEncoder::new(Compression::None)?;
        zstd.set_batching(true);
        plain.set_batching(true);
        let mut c = Copier {
            zstd,
            plain,
            coding: (compression != Compression::None).then(CopyCoding::new),
            compression,
            bufs: store::EncodeBuffers::default(),
            scratch: Vec::new(),
            figures: CopyFigures::default(),
            group: None,
        };
        let round = Round {
            label: self.seq,
            runs: &self.plan.runs,
            zero_runs: &self.plan.zero_runs,
            disks: self
                .plan
                .disks
                .iter()
                .map(|d| (&d.runs[..], &d.zero_runs[..]))
                .collect(),
        };
        self.send_round(&mut c, conn, term, &round, signals.sent)?;
        (signals.read)();
        let up = self.wait_round(signals.lost)?;
        let units = c.figures.units;
        let memory = up.set.memory.into_runs();
        let disks: Vec<Vec<(u64, u64)>> = up.set.disks.into_iter().map(|d| d.into_runs()).collect();
        let round = Round {
            label: up.label,
            runs: &memory,
            zero_runs: &[],
            disks: disks.iter().map(|d| (&d[..], &[][..])).collect(),
        };
        self.send_round(&mut c, conn, term, &round, signals.sent)?;
        c.figures.catch_up_units = c.figures.units - units;
        c.figures.secs = t0.elapsed().as_secs_f64();
        Ok(c.figures)
    }

    /// Waits for the encoder to hand over the catch-up round (at its next
    /// epoch), unless the link is lost meanwhile.
    fn wait_round(&self, lost: &dyn Fn() -> bool) -> Result<CatchUpRound> {
        loop {
            match self.catch_up.recv_timeout(Duration::from_millis(20)) {
                Ok(r) => return Ok(r),
                Err(RecvTimeoutError::Timeout) if !lost() => {}
                Err(_) => {
                    return Err(EngineError::Link(
                        "lost before the encoder handed over its catch-up round".into(),
                    ))
                }
            }
        }
    }

    /// Sends one round: memory, then each disk, in chunks. The first
    /// memory chunk always goes, though it may be empty: it carries the
    /// zero markers and the configuration, and moves the spare to the
    /// round's label.
    fn send_round(
        &self,
        c: &mut Copier,
        conn: &mut transport::Sender,
        term: u64,
        round: &Round<'_>,
        sent: &dyn Fn(u64),
    ) -> Result<()> {
        let header = Header::full(round.label, self.machine.fingerprint());
        let mut end = self.end.clone();
        end.seq = round.label;
        let mut chunks = sync_chunks(round.runs);
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let how = c.coding();
            let enc = match how {
                ChunkCoding::Plain => &mut c.plain,
                ChunkCoding::Zstd => &mut c.zstd,
            };
            // Encoded straight from guest memory, with no copy of its own: a
            // page the running guest writes meanwhile may be read torn, and
            // is sent again, whole, by a later epoch (its dirty bit is set).
            let mut runs = Vec::with_capacity(chunk.len());
            for &(gpa, np) in chunk {
                let len = np * PAGE_SIZE;
                let (r, off) = self.ram.span(gpa, len).ok_or_else(|| {
                    EngineError::Memory(format!("pages at {gpa:#x} outside guest memory"))
                })?;
                runs.push((gpa, &r.as_slice()[off as usize..(off + len) as usize]));
            }
            let zero = if i == 0 { round.zero_runs } else { &[] };
            let container = store::encode_memory_only(
                &header,
                &self.machine,
                zero,
                runs.into_iter(),
                enc,
                &mut c.bufs,
            )?;
            ship(c, conn, term, chunk, container, &end, sent)?;
        }
        c.close();
        for (d, (disk, &(disk_runs, disk_zero))) in self.disks.iter().zip(&round.disks).enumerate()
        {
            let mut chunks = sync_chunks(disk_runs);
            if chunks.is_empty() && !disk_zero.is_empty() {
                chunks.push(Vec::new());
            }
            for (j, chunk) in chunks.iter().enumerate() {
                let how = c.coding();
                c.scratch.clear();
                for &(off, n) in chunk {
                    disk.read_blocks(off / BLOCK, n, &mut c.scratch)
                        .map_err(EngineError::io(format!(
                            "reading {} for a spare's live copy",
                            disk.path.display()
                        )))?;
                }
                let zero = if j == 0 { disk_zero } else { &[] };
                let container = store::encode_disk_only(
                    &header,
                    &self.machine,
                    d as u32,
                    zero,
                    runs_in(chunk, &c.scratch),
                    match how {
                        ChunkCoding::Plain => Compression::None,
                        ChunkCoding::Zstd => c.compression,
                    },
                    &mut c.bufs,
                )?;
                ship(c, conn, term, chunk, container, &end, sent)?;
            }
            c.close();
        }
        Ok(())
    }
}

/// Runs of 4 KiB units: `(start byte, units)`.
type UnitRuns<'a> = &'a [(u64, u64)];

/// One round of a copy: the copy itself, or its catch-up.
struct Round<'a> {
    label: u64,
    runs: &'a [(u64, u64)],
    zero_runs: &'a [(u64, u64)],
    /// Per disk: (block runs, holes).
    disks: Vec<(UnitRuns<'a>, UnitRuns<'a>)>,
}

/// Sends one container of a round (holding `chunk`'s units), counts it,
/// and keeps its buffer for the next one.
fn ship(
    c: &mut Copier,
    conn: &mut transport::Sender,
    term: u64,
    chunk: &[(u64, u64)],
    container: Vec<u8>,
    end: &EpochEnd,
    sent: &dyn Fn(u64),
) -> Result<()> {
    let units = chunk.iter().map(|r| r.1).sum::<u64>();
    c.figures.units += units;
    c.figures.wire_bytes += container.len() as u64;
    sent(end.seq);
    super::link::send_epoch(conn, term, end.seq, true, &container, end)
        .map_err(EngineError::Transport)?;
    c.bufs.container = container;
    c.sent(units);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_copy_codes_with_a_fast_zstd_level_and_never_adds_compression() {
        assert_eq!(
            copy_compression(Compression::Zstd { level: 1 }),
            Compression::Zstd {
                level: COPY_ZSTD_LEVEL
            }
        );
        assert_eq!(
            copy_compression(Compression::Zstd { level: 19 }),
            Compression::Zstd {
                level: COPY_ZSTD_LEVEL
            }
        );
        // A link set faster still keeps its level.
        assert_eq!(
            copy_compression(Compression::Zstd { level: -7 }),
            Compression::Zstd { level: -7 }
        );
        assert_eq!(copy_compression(Compression::None), Compression::None);
    }

    #[test]
    fn a_copy_coded_at_the_fast_level_decodes_to_the_same_pages() {
        let mut next = crate::replication::xorshift(7);
        // Text-like pages (compressible) and random ones, as a guest has.
        let mut pages = vec![0u8; 64 * PAGE_SIZE as usize];
        for (i, b) in pages.iter_mut().enumerate() {
            *b = if (i / PAGE_SIZE as usize).is_multiple_of(2) {
                b"the quick brown fox "[i % 20]
            } else {
                next() as u8
            };
        }
        let mut enc = MemoryEncoder::new(copy_compression(Compression::Zstd { level: 1 })).unwrap();
        let mut out = Vec::new();
        enc.encode_run(0, &pages, &mut out).unwrap();
        enc.flush(&mut out).unwrap();
        assert!(out.len() < pages.len() * 3 / 4, "{} bytes", out.len());
        let mut back = vec![0u8; pages.len()];
        checkpoint::pages::decode_records(&out, |gpa, data| {
            back[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, pages);
    }

    #[test]
    fn sync_chunks_cover_every_page_once_in_order_within_the_bound() {
        let p = PAGE_SIZE;
        let runs = [(0, 10), (100 * p, 2000), (5000 * p, 1), (9000 * p, 1024)];
        let chunks = sync_chunks(&runs);
        assert!(chunks
            .iter()
            .all(|c| c.iter().map(|r| r.1).sum::<u64>() <= SYNC_CHUNK_PAGES));
        // Every chunk but the last is full.
        for c in &chunks[..chunks.len() - 1] {
            assert_eq!(c.iter().map(|r| r.1).sum::<u64>(), SYNC_CHUNK_PAGES);
        }
        let pages: Vec<u64> = chunks
            .iter()
            .flatten()
            .flat_map(|&(gpa, n)| (0..n).map(move |i| gpa / p + i))
            .collect();
        let want: Vec<u64> = runs
            .iter()
            .flat_map(|&(gpa, n)| (0..n).map(move |i| gpa / p + i))
            .collect();
        assert_eq!(pages, want);
        assert!(sync_chunks(&[]).is_empty());
    }
}
