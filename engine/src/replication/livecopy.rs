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
//! thread and a reading thread of its own (the reader reads and encodes,
//! the sender writes), so the primary keeps taking epochs for the other
//! spares meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

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

/// How many encoded containers may wait for the socket: the reading side
/// runs this far ahead of the shipping side, so the guest's pages are read
/// and encoded while the socket is full (on a 1 GiB copy the sender waited
/// for the socket a quarter of the time, reading nothing).
const PIPELINE_DEPTH: usize = 2;

/// One encoded container on its way from the reading side to the shipping
/// side.
struct Encoded {
    bytes: Vec<u8>,
    /// The round's label (the sequence number it moves the spare to).
    label: u64,
    /// Pages or disk blocks in it.
    units: u64,
    how: ChunkCoding,
    /// The last container of its decision group: the shipping side
    /// reports the group's pace.
    closes_group: bool,
    /// The last container of its list (a round's memory, or one disk):
    /// the next group's pace starts when its first container is ready,
    /// not when this one was taken.
    ends_list: bool,
    /// Part of the catch-up round.
    catch_up: bool,
}

/// What the shipping side hands back to the reading side.
enum Back {
    /// A sent container's buffer, to be written over.
    Buffer(Vec<u8>),
    /// A decision group went out: its coding, guest bytes and seconds.
    Paced {
        how: ChunkCoding,
        bytes: u64,
        secs: f64,
    },
}

/// What a copy tells its link, and asks it: each container sent, the copy
/// read (the encoder then switches the link), and whether the link was
/// lost while the copy waits for its catch-up round. Called from the two
/// threads of the copy.
pub(super) struct CopySignals<'a> {
    /// Told each container's sequence number before it is sent (for ack
    /// latencies).
    pub sent: &'a (dyn Fn(u64) + Sync),
    /// Told the copy finished reading.
    pub read: &'a (dyn Fn() + Sync),
    /// Whether the link was lost meanwhile.
    pub lost: &'a (dyn Fn() -> bool + Sync),
}

/// The reading side of a copy: reads the guest's pages and disk blocks,
/// encodes them into containers and hands them to the shipping side.
struct Reader {
    zstd: MemoryEncoder,
    plain: MemoryEncoder,
    /// Plain or zstd, group by group, by the pace each achieves; `None`:
    /// plain throughout (the link has no compression).
    coding: Option<CopyCoding>,
    compression: Compression,
    bufs: store::EncodeBuffers,
    scratch: Vec<u8>,
    /// The decision the next containers follow, and how many were encoded
    /// under it.
    group: Option<(ChunkCoding, u32)>,
    /// Buffers the shipping side gave back.
    spare: Vec<Vec<u8>>,
    out: Sender<Encoded>,
    back: Receiver<Back>,
    catch_up: bool,
}

impl Reader {
    /// How the next container is coded: the group's decision, or a new one
    /// taken on the paces reported so far.
    fn coding(&mut self) -> ChunkCoding {
        for b in self.back.try_iter() {
            match b {
                Back::Buffer(v) if self.spare.len() <= PIPELINE_DEPTH => self.spare.push(v),
                Back::Buffer(_) => {}
                Back::Paced { how, bytes, secs } => {
                    if let Some(c) = self.coding.as_mut() {
                        c.sent(how, bytes, secs);
                    }
                }
            }
        }
        self.bufs.container = self.spare.pop().unwrap_or_default();
        let coding = &self.coding;
        self.group
            .get_or_insert_with(|| {
                (
                    coding.as_ref().map_or(ChunkCoding::Plain, CopyCoding::next),
                    0,
                )
            })
            .0
    }

    /// Tells the decision how long a zstd container of `units` took to
    /// encode since `started` (the compressor's own rate).
    fn encoded(&mut self, how: ChunkCoding, units: u64, started: Instant) {
        // An empty container (an empty round's first, for its markers)
        // says nothing of the compressor's rate.
        if units == 0 {
            return;
        }
        if let (ChunkCoding::Zstd, Some(c)) = (how, self.coding.as_mut()) {
            c.compressed(units * PAGE_SIZE, started.elapsed().as_secs_f64());
        }
    }

    /// Hands a container of `units` to the shipping side.
    fn emit(&mut self, bytes: Vec<u8>, label: u64, units: u64, ends_list: bool) -> Result<()> {
        let (how, n) = self.group.get_or_insert((ChunkCoding::Plain, 0));
        let how = *how;
        *n += 1;
        let closes_group = *n == CHUNKS_PER_DECISION || ends_list;
        if closes_group {
            self.group = None;
        }
        self.out
            .send(Encoded {
                bytes,
                label,
                units,
                how,
                closes_group,
                ends_list,
                catch_up: self.catch_up,
            })
            .map_err(|_| EngineError::Link("the live copy's sending side stopped".into()))
    }
}

impl LiveCopy {
    /// Reads, encodes and sends the copy on `conn`, then the catch-up
    /// round the encoder hands over once it heard the copy was read.
    ///
    /// Two threads: this one ships containers to the socket while a reader
    /// thread reads and encodes up to [`PIPELINE_DEPTH`] containers ahead.
    /// The copy is read when the reader is done with it, whatever is still
    /// to be shipped.
    pub(super) fn send(
        &self,
        conn: &mut transport::Sender,
        term: u64,
        signals: &CopySignals<'_>,
    ) -> Result<CopyFigures> {
        let t0 = Instant::now();
        let (out, to_ship) = crossbeam::channel::bounded(PIPELINE_DEPTH);
        let (give_back, back) = crossbeam::channel::unbounded();
        let stopped = AtomicBool::new(false);
        let (read, shipped) = std::thread::scope(|s| {
            let reader = std::thread::Builder::new()
                .name("hs-copy-read".into())
                .spawn_scoped(s, || self.read(out, back, signals, &stopped))
                .map_err(EngineError::io("spawning a live copy's reading thread"))?;
            let shipped = self.ship(to_ship, give_back, conn, term, signals.sent);
            // A reader waiting for its catch-up round stops too.
            stopped.store(true, Ordering::SeqCst);
            let read = reader.join().unwrap_or_else(|_| {
                Err(EngineError::Link(
                    "a live copy's reading thread panicked".into(),
                ))
            });
            Ok::<_, EngineError>((read, shipped))
        })?;
        // The sending side's failure comes first: the reader then only saw
        // it stop. A reader that failed left the shipping side with fewer
        // containers, which is no copy at all.
        let mut figures = shipped?;
        read?;
        figures.secs = t0.elapsed().as_secs_f64();
        Ok(figures)
    }

    /// The reading side: the copy, then the catch-up round.
    fn read(
        &self,
        out: Sender<Encoded>,
        back: Receiver<Back>,
        signals: &CopySignals<'_>,
        stopped: &AtomicBool,
    ) -> Result<()> {
        let compression = copy_compression(self.compression);
        let mut zstd = MemoryEncoder::new(compression)?;
        let mut plain = MemoryEncoder::new(Compression::None)?;
        zstd.set_batching(true);
        plain.set_batching(true);
        let mut r = Reader {
            zstd,
            plain,
            coding: (compression != Compression::None).then(CopyCoding::new),
            compression,
            bufs: store::EncodeBuffers::default(),
            scratch: Vec::new(),
            group: None,
            spare: Vec::new(),
            out,
            back,
            catch_up: false,
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
        self.read_round(&mut r, &round)?;
        (signals.read)();
        let up = self.wait_round(&|| (signals.lost)() || stopped.load(Ordering::SeqCst))?;
        let memory = up.set.memory.into_runs();
        let disks: Vec<Vec<(u64, u64)>> = up.set.disks.into_iter().map(|d| d.into_runs()).collect();
        let round = Round {
            label: up.label,
            runs: &memory,
            zero_runs: &[],
            disks: disks.iter().map(|d| (&d[..], &[][..])).collect(),
        };
        r.catch_up = true;
        self.read_round(&mut r, &round)
    }

    /// Waits for the encoder to hand over the catch-up round (at its next
    /// epoch), unless the link is lost or the copy stopped meanwhile.
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

    /// Reads and encodes one round: memory, then each disk, in chunks. The
    /// first memory chunk always goes, though it may be empty: it carries
    /// the zero markers and the configuration, and moves the spare to the
    /// round's label.
    fn read_round(&self, r: &mut Reader, round: &Round<'_>) -> Result<()> {
        let header = Header::full(round.label, self.machine.fingerprint());
        let mut chunks = sync_chunks(round.runs);
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let how = r.coding();
            let enc = match how {
                ChunkCoding::Plain => &mut r.plain,
                ChunkCoding::Zstd => &mut r.zstd,
            };
            // Encoded straight from guest memory, with no copy of its own: a
            // page the running guest writes meanwhile may be read torn, and
            // is sent again, whole, by a later epoch (its dirty bit is set).
            let mut runs = Vec::with_capacity(chunk.len());
            for &(gpa, np) in chunk {
                let len = np * PAGE_SIZE;
                let (m, off) = self.ram.span(gpa, len).ok_or_else(|| {
                    EngineError::Memory(format!("pages at {gpa:#x} outside guest memory"))
                })?;
                runs.push((gpa, &m.as_slice()[off as usize..(off + len) as usize]));
            }
            let zero = if i == 0 { round.zero_runs } else { &[] };
            let t = Instant::now();
            let container = store::encode_memory_only(
                &header,
                &self.machine,
                zero,
                runs.into_iter(),
                enc,
                &mut r.bufs,
            )?;
            r.encoded(how, units_in(chunk), t);
            r.emit(container, round.label, units_in(chunk), i == last)?;
        }
        for (d, (disk, &(disk_runs, disk_zero))) in self.disks.iter().zip(&round.disks).enumerate()
        {
            let mut chunks = sync_chunks(disk_runs);
            if chunks.is_empty() && !disk_zero.is_empty() {
                chunks.push(Vec::new());
            }
            let last = chunks.len().saturating_sub(1);
            for (j, chunk) in chunks.iter().enumerate() {
                let how = r.coding();
                r.scratch.clear();
                for &(off, n) in chunk {
                    disk.read_blocks(off / BLOCK, n, &mut r.scratch)
                        .map_err(EngineError::io(format!(
                            "reading {} for a spare's live copy",
                            disk.path.display()
                        )))?;
                }
                let zero = if j == 0 { disk_zero } else { &[] };
                let t = Instant::now();
                let container = store::encode_disk_only(
                    &header,
                    &self.machine,
                    d as u32,
                    zero,
                    runs_in(chunk, &r.scratch),
                    match how {
                        ChunkCoding::Plain => Compression::None,
                        ChunkCoding::Zstd => r.compression,
                    },
                    &mut r.bufs,
                )?;
                r.encoded(how, units_in(chunk), t);
                r.emit(container, round.label, units_in(chunk), j == last)?;
            }
        }
        Ok(())
    }

    /// The shipping side: sends each container the reader hands over, in
    /// order, counts it, reports each group's pace and gives the buffer
    /// back. Ends when the reader is done (or gone).
    fn ship(
        &self,
        to_ship: Receiver<Encoded>,
        give_back: Sender<Back>,
        conn: &mut transport::Sender,
        term: u64,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<CopyFigures> {
        let mut f = CopyFigures::default();
        let mut end = self.end.clone();
        // Where the group in progress started, and its units so far.
        let (mut since, mut group_units) = (None, 0u64);
        for e in to_ship {
            let started = *since.get_or_insert_with(Instant::now);
            f.units += e.units;
            f.wire_bytes += e.bytes.len() as u64;
            if e.how == ChunkCoding::Plain {
                f.plain_units += e.units;
            }
            if e.catch_up {
                f.catch_up_units += e.units;
            }
            end.seq = e.label;
            sent(e.label);
            super::link::send_epoch(conn, term, e.label, true, &e.bytes, &end)
                .map_err(EngineError::Transport)?;
            group_units += e.units;
            if e.closes_group {
                let _ = give_back.send(Back::Paced {
                    how: e.how,
                    bytes: std::mem::take(&mut group_units) * PAGE_SIZE,
                    secs: started.elapsed().as_secs_f64(),
                });
                since = (!e.ends_list).then(Instant::now);
            }
            let _ = give_back.send(Back::Buffer(e.bytes));
        }
        Ok(f)
    }
}

/// Pages (or blocks) in a chunk's runs.
fn units_in(chunk: &[(u64, u64)]) -> u64 {
    chunk.iter().map(|r| r.1).sum()
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

#[cfg(test)]
#[path = "livecopy_tests.rs"]
mod pipeline_tests;
