//! The primary's initial sync: a live, iterative pre-copy of memory and
//! disks in chunks while the guest runs, then one paused epoch with the
//! state (the first commit). A child module of `primary`, so it works on
//! the replicator's own fields.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use checkpoint::format::Header;
use checkpoint::pages::MemoryEncoder;
use crossbeam::channel;

use super::super::link::{Body, Outgoing};
use super::super::wire::{self, EpochEnd};
use super::Replicator;
use crate::capture;
use crate::devices::virtio::block::disk::BLOCK;
use crate::error::{EngineError, Result};
use crate::memory::PAGE_SIZE;
use crate::store;
use crate::vm::Vm;

/// Pre-copy stops after this many rounds...
const PRECOPY_MAX_ROUNDS: usize = 8;
/// ... or once a round has fewer dirty pages than this ...
const PRECOPY_SMALL: u64 = 1024;
/// ... or when a round does not shrink the dirty set by at least 10%.
const PRECOPY_SHRINK: f64 = 0.9;

/// A sync round is sent in pre-copy containers of at most this many pages
/// (4 MiB), so sending and applying overlap with reading and encoding.
const SYNC_CHUNK_PAGES: u64 = 1024;

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

impl Replicator {
    /// The initial sync: live, iterative pre-copy while the guest runs, then
    /// one paused epoch with the state (the first commit).
    pub(super) fn sync(&mut self, vm: &Vm) -> Result<()> {
        let t0 = Instant::now();
        let mut prev = u64::MAX;
        let (mut total_pages, mut wire_bytes) = (0u64, 0u64);
        let mut rounds = 0;
        // One encoder and one set of buffers for the whole sync: adaptive
        // compression carries over, and no chunk writes into fresh memory.
        let mut enc = MemoryEncoder::new(self.cfg.compression)?;
        let mut bufs = store::EncodeBuffers::default();
        let mut scratch: Vec<u8> = Vec::new();
        for round in 0..PRECOPY_MAX_ROUNDS {
            let t = Instant::now();
            let (pr, harvest) = capture::precopy_round(vm, &mut self.ledger, round == 0)?;
            // Sent as part of the sync; a failed sync starts over with every page.
            self.ledger.commit(harvest);
            let n = pr.pages();
            // The round goes out in chunks, each its own pre-copy container,
            // so the shadow receives and applies one chunk while the next is
            // read and encoded. Round 0 always sends a first chunk: it is
            // the full one, carries the zero markers and starts the shadow's
            // memory.
            let mut chunks = sync_chunks(&pr.runs);
            if round == 0 && chunks.is_empty() {
                chunks.push(Vec::new());
            }
            for (i, chunk) in chunks.iter().enumerate() {
                let full = round == 0 && i == 0;
                let zero = if full { &pr.zero_runs[..] } else { &[] };
                wire_bytes +=
                    self.send_sync_chunk(vm, full, zero, chunk, &mut scratch, &mut enc, &mut bufs)?;
            }
            // Then the disks: blocks read from the running disk (a block
            // written meanwhile is marked again and goes out later).
            let mut disk_blocks = 0;
            for (i, d) in pr.disks.iter().enumerate() {
                let mut chunks = sync_chunks(&d.runs);
                if chunks.is_empty() && !d.zero_runs.is_empty() {
                    chunks.push(Vec::new());
                }
                for (j, chunk) in chunks.iter().enumerate() {
                    let zero = if j == 0 { &d.zero_runs[..] } else { &[] };
                    wire_bytes +=
                        self.send_disk_chunk(vm, i, zero, chunk, &mut scratch, &mut bufs)?;
                }
                disk_blocks += d.runs.iter().map(|r| r.1).sum::<u64>();
            }
            let n = n + disk_blocks;
            total_pages += n;
            rounds += 1;
            eprintln!(
                "hotspare: full sync round {round}: {n} pages and disk blocks ({:.1} MiB, {:.1} MiB of disk) in {:.1} ms",
                (n * PAGE_SIZE) as f64 / (1 << 20) as f64,
                (disk_blocks * BLOCK) as f64 / (1 << 20) as f64,
                t.elapsed().as_secs_f64() * 1e3
            );
            if round > 0 && (n < PRECOPY_SMALL || n as f64 > prev as f64 * PRECOPY_SHRINK) {
                break;
            }
            prev = n;
        }
        self.need_full = false;
        self.first_commit = true;
        self.epoch(vm)?;
        let last = self.stats.epochs.last().cloned().unwrap_or_default();
        let secs = t0.elapsed().as_secs_f64();
        self.stats
            .syncs
            .push((rounds, total_pages * PAGE_SIZE, secs));
        let mib = |p: u64| (p * PAGE_SIZE) as f64 / (1 << 20) as f64;
        eprintln!(
            "hotspare: full sync complete: {rounds} pre-copy rounds, {:.1} MiB copied while running ({:.0} MiB/s, \
             {:.1} MiB on the wire) in {:.3} s; final pause {:.2} ms with {} pages",
            mib(total_pages),
            mib(total_pages) / secs,
            wire_bytes as f64 / (1 << 20) as f64,
            secs,
            last.pause.as_secs_f64() * 1e3,
            last.pages
        );
        tracing::info!("protected by shadow {}", self.cfg.shadow);
        self.announced_unprotected = false;
        Ok(())
    }

    /// Reads the pages of `chunk` from the running guest, encodes them (with
    /// `zero` markers first) as one pre-copy container and hands it to the
    /// sender. Returns the container's size.
    #[allow(clippy::too_many_arguments)]
    fn send_sync_chunk(
        &mut self,
        vm: &Vm,
        full: bool,
        zero: &[(u64, u64)],
        chunk: &[(u64, u64)],
        scratch: &mut Vec<u8>,
        enc: &mut MemoryEncoder,
        bufs: &mut store::EncodeBuffers,
    ) -> Result<u64> {
        scratch.clear();
        for &(gpa, np) in chunk {
            let len = np * PAGE_SIZE;
            let (r, off) = vm.ram.span(gpa, len).ok_or_else(|| {
                EngineError::Memory(format!("dirty pages at {gpa:#x} outside guest memory"))
            })?;
            scratch.extend_from_slice(&r.as_slice()[off as usize..(off + len) as usize]);
        }
        let runs = runs_in(chunk, scratch);
        self.seq += 1;
        let seq = self.seq;
        let fp = vm.machine.fingerprint();
        let header = if full {
            Header::full(seq, fp)
        } else {
            Header::incremental(seq, seq - 1, fp)
        };
        if bufs.container.capacity() == 0 {
            bufs.container = self.pool.1.try_recv().unwrap_or_default();
        }
        let container = store::encode_memory_only(&header, &vm.machine, zero, runs, enc, bufs)?;
        self.send_precopy(vm, seq, container)
    }

    /// Reads the blocks of `chunk` (byte offset, blocks) from the running
    /// disk `index`, encodes them (with `zero` holes first) as one pre-copy
    /// container and hands it to the sender. Returns the container's size.
    fn send_disk_chunk(
        &mut self,
        vm: &Vm,
        index: usize,
        zero: &[(u64, u64)],
        chunk: &[(u64, u64)],
        scratch: &mut Vec<u8>,
        bufs: &mut store::EncodeBuffers,
    ) -> Result<u64> {
        let disk = &vm.disks[index];
        scratch.clear();
        for &(off, n) in chunk {
            disk.read_blocks(off / BLOCK, n, scratch)
                .map_err(EngineError::io(format!(
                    "reading {} for the sync",
                    disk.path.display()
                )))?;
        }
        let runs = runs_in(chunk, scratch);
        self.seq += 1;
        let seq = self.seq;
        let header = Header::incremental(seq, seq - 1, vm.machine.fingerprint());
        if bufs.container.capacity() == 0 {
            bufs.container = self.pool.1.try_recv().unwrap_or_default();
        }
        let container = store::encode_disk_only(
            &header,
            &vm.machine,
            index as u32,
            zero,
            runs,
            self.cfg.compression,
            bufs,
        )?;
        self.send_precopy(vm, seq, container)
    }

    /// Hands a pre-copy container to the sender, waiting for room; returns
    /// its size.
    fn send_precopy(&mut self, vm: &Vm, seq: u64, container: Vec<u8>) -> Result<u64> {
        let len = container.len() as u64;
        let pos = vm.console_position();
        let link = self.link.as_ref().expect("sync without a link");
        link.shared.track(seq);
        let out = Outgoing {
            seq,
            precopy: true,
            body: Body::Encoded(container),
            end: EpochEnd {
                seq,
                output_start: pos,
                output: Vec::new(),
                released: pos,
                figures: wire::EpochReport::default(),
                memory_hash: None,
                fence: self.fence_info.clone(),
            },
        };
        // The queue is usually full during a sync: wait for room, but give
        // up as soon as the link is declared lost (a dead shadow must not
        // hold the supervisor here).
        let failed = || EngineError::Config("the link failed during the initial sync".into());
        let mut out = out;
        loop {
            let Some(tx) = link.tx.as_ref() else {
                return Err(failed());
            };
            match tx.send_timeout(out, Duration::from_millis(50)) {
                Ok(()) => break,
                Err(channel::SendTimeoutError::Timeout(o)) => out = o,
                Err(channel::SendTimeoutError::Disconnected(_)) => return Err(failed()),
            }
            if link.shared.lost.load(Ordering::SeqCst) {
                return Err(failed());
            }
        }
        if link.shared.lost.load(Ordering::SeqCst) {
            return Err(failed());
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
