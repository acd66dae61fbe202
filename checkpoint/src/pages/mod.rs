//! Page records: the payload of `Memory` sections.
//!
//! A Memory section payload is a sequence of records, each
//! `{gpa: u64, npages: u32, encoding: u8, data_len: u32, data}` (little
//! endian, 17-byte record header). Records are applied in order.
//!
//! [`MemoryEncoder`] turns a run of guest pages into records (zero pages as
//! data-less `Zero` records, the rest `Raw`, `Zstd`, or `XorZstd` deltas
//! against the last version sent when the encoder has a [`DeltaCache`]);
//! [`decode_records`] validates records and hands the decoded bytes to a
//! sink.

use zstd::bulk::Compressor;

use crate::delta::{xor_into, DeltaCache};

use crate::error::{CheckpointError, Result};
use crate::memcopy;

mod decode;
pub mod runs;
pub use decode::{decode_records, decode_records_with_deltas, decode_records_zero_aware};

/// Guest page size in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Size of a record header in bytes.
pub const RECORD_HEADER_LEN: usize = 17;
/// Largest `npages` a decoder accepts in one record (64 MiB of guest memory).
pub const MAX_RECORD_PAGES: u32 = 16 * 1024;
/// Largest number of pages the encoder puts in one `Raw`/`Zstd` record
/// (1 MiB): bounds the decoder's buffer and gives zstd a useful window.
pub const DATA_RECORD_PAGES: usize = 256;
/// Suggested longest run to pass to one [`MemoryEncoder::encode_run`] call
/// (8 MiB).
pub const RECOMMENDED_RUN_PAGES: usize = 2048;
/// Suggested payload size at which to cut a Memory section (32 MiB).
///
/// Flushing once the buffer reaches this, with runs of at most
/// [`RECOMMENDED_RUN_PAGES`], keeps every section under the default 64 MiB
/// section limit: encoding never grows data by more than a record header
/// per record.
pub const SECTION_TARGET_BYTES: usize = 32 << 20;

/// How a record's data is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// `npages * 4096` bytes verbatim.
    Raw = 0,
    /// All pages zero; no data.
    Zero = 1,
    /// One zstd frame decompressing to exactly `npages * 4096` bytes.
    Zstd = 2,
    /// One zstd frame decompressing to exactly `npages * 4096` bytes that
    /// are XORed into the pages' current contents: the contents the reader
    /// holds after applying every earlier record of the stream.
    XorZstd = 3,
    /// Scattered pages in one record: `npages` little-endian u64 entries,
    /// each a page address whose bit 0 says how its bytes apply (0: they
    /// are the page, 1: XOR them into the page, as `XorZstd`), then
    /// `npages * 4096` bytes verbatim, in entry order. The first entry's
    /// address equals the record's `gpa`.
    Batch = 4,
    /// As `Batch`, but the bytes after the entries are one zstd frame that
    /// decompresses to exactly `npages * 4096` bytes.
    BatchZstd = 5,
    /// Scattered pages as XOR deltas of their changed words, no entropy
    /// coder: per page `addr: u64, nruns: u16`, then per run `first: u16,
    /// nwords: u16` and `nwords` 8-byte XOR words (see `runs`). The first
    /// entry's address equals the record's `gpa`.
    XorRuns = 6,
    /// `XorRuns` entries compressed: a u32 LE length `n` (at most `npages`
    /// times the largest entry a page can have), then one zstd frame that
    /// decompresses to exactly `n` bytes of `XorRuns` entries.
    XorRunsZstd = 7,
}

impl TryFrom<u8> for Encoding {
    type Error = CheckpointError;

    fn try_from(v: u8) -> Result<Self> {
        match v {
            0 => Ok(Encoding::Raw),
            1 => Ok(Encoding::Zero),
            2 => Ok(Encoding::Zstd),
            3 => Ok(Encoding::XorZstd),
            4 => Ok(Encoding::Batch),
            5 => Ok(Encoding::BatchZstd),
            6 => Ok(Encoding::XorRuns),
            7 => Ok(Encoding::XorRunsZstd),
            other => Err(CheckpointError::UnknownEncoding(other)),
        }
    }
}

/// Compression setting of a [`MemoryEncoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Non-zero pages are stored `Raw`.
    None,
    /// Non-zero pages are zstd-compressed when that makes them smaller.
    Zstd {
        /// zstd level (1 is fast and usually enough for memory).
        level: i32,
    },
}

/// Counters accumulated by a [`MemoryEncoder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Guest bytes given to the encoder.
    pub raw_bytes: u64,
    /// Bytes of records produced, record headers included.
    pub encoded_bytes: u64,
    /// Pages stored as `Zero`.
    pub zero_pages: u64,
    /// Pages stored as `Raw`.
    pub raw_pages: u64,
    /// Pages stored as `Zstd`.
    pub compressed_pages: u64,
    /// Records produced.
    pub records: u64,
    /// Data records stored `Raw` without a compression attempt (adaptive skip).
    pub skipped_records: u64,
    /// Pages stored as `XorZstd` deltas.
    pub delta_pages: u64,
    /// Pages whose previous version was in the delta cache but whose delta
    /// did not pay (sent `Raw`/`Zstd` instead).
    pub delta_misses: u64,
}

impl MemoryStats {
    /// `encoded_bytes / raw_bytes` (0 when nothing was encoded).
    pub fn ratio(&self) -> f64 {
        if self.raw_bytes == 0 {
            0.0
        } else {
            self.encoded_bytes as f64 / self.raw_bytes as f64
        }
    }

    /// Adds `other`'s counters to these (e.g. to sum per-thread encoders).
    pub fn merge(&mut self, other: &MemoryStats) {
        self.raw_bytes += other.raw_bytes;
        self.encoded_bytes += other.encoded_bytes;
        self.zero_pages += other.zero_pages;
        self.raw_pages += other.raw_pages;
        self.compressed_pages += other.compressed_pages;
        self.records += other.records;
        self.skipped_records += other.skipped_records;
        self.delta_pages += other.delta_pages;
        self.delta_misses += other.delta_misses;
    }
}

/// Whether `x` is a multiple of [`PAGE_SIZE`].
fn page_aligned(x: u64) -> bool {
    x & (PAGE_SIZE as u64 - 1) == 0
}

/// Whether `bytes` are all zero; compares 8 bytes at a time.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(64);
    let blocks_zero = words.by_ref().all(|block| {
        block.chunks_exact(8).fold(0u64, |acc, w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            acc | u64::from_ne_bytes(a)
        }) == 0
    });
    blocks_zero && words.remainder().iter().all(|&b| b == 0)
}

/// Encodes runs of guest pages into Memory-section records.
pub struct MemoryEncoder {
    compress: Compression,
    compressor: Option<Compressor<'static>>,
    scratch: Vec<u8>,
    stats: MemoryStats,
    /// When to stop trying zstd on pages (incompressible memory).
    plain: Adaptive,
    /// When to stop trying XOR deltas (pages rewritten whole). Kept apart
    /// from `plain`: random pages that do not compress say nothing about
    /// whether sparse rewrites of other pages make good deltas.
    deltas: Adaptive,
    /// Last version sent of recently sent pages, for `XorZstd` deltas.
    delta: Option<DeltaCache>,
    /// XOR deltas are built here before compression.
    xor_scratch: Vec<u8>,
    /// Whether short runs are gathered into `Batch` records, and cached
    /// pages into `XorRuns` records.
    batching: bool,
    /// Pending batch of plain pages.
    batch_plain: PendingBatch,
    /// Pending `XorRuns` record: its page entries (kept apart from plain
    /// pages, which may go through zstd).
    runs: PendingRuns,
    /// Whether `XorRuns` entries are tried with zstd.
    runs_zstd: bool,
}

/// Page entries waiting for an `XorRuns` record.
#[derive(Default)]
struct PendingRuns {
    pages: usize,
    first: u64,
    data: Vec<u8>,
}

/// Pages waiting for a `Batch` record.
#[derive(Default)]
struct PendingBatch {
    /// Entries: address | XOR bit.
    addrs: Vec<u64>,
    /// Their bytes (pages, or XOR deltas), in entry order.
    data: Vec<u8>,
}

/// Runs of at most this many pages go into batches when batching is on.
pub const BATCH_RUN_MAX: usize = 8;
/// A cached page goes into an `XorRuns` record when its entry (the changed
/// words and their run heads) takes at most this many bytes, a quarter page;
/// otherwise it goes whole, as a plain page.
pub const RUNS_MAX_BYTES: usize = 1024;

/// After this many consecutive data records that zstd shrinks by less than
/// 1/32, the encoder stops trying ...
pub const ADAPTIVE_MISSES: u32 = 4;
/// ... for this many records, then tries again. Incompressible memory (media,
/// encrypted or random data) then costs a memcpy instead of a zstd pass.
pub const ADAPTIVE_SKIP: u32 = 64;

impl MemoryEncoder {
    /// An encoder with the given compression setting.
    pub fn new(compress: Compression) -> Result<Self> {
        let compressor = match compress {
            Compression::None => None,
            Compression::Zstd { level } => {
                Some(Compressor::new(level).map_err(CheckpointError::Zstd)?)
            }
        };
        Ok(MemoryEncoder {
            compress,
            compressor,
            scratch: Vec::new(),
            stats: MemoryStats::default(),
            plain: Adaptive::default(),
            deltas: Adaptive::default(),
            delta: None,
            xor_scratch: Vec::new(),
            batching: false,
            batch_plain: PendingBatch::default(),
            runs: PendingRuns::default(),
            runs_zstd: true,
        })
    }

    /// Gathers short runs (at most [`BATCH_RUN_MAX`] pages) into `Batch`
    /// records of up to [`DATA_RECORD_PAGES`] scattered pages, compressed
    /// as one zstd frame: scattered dirty pages then cost one frame per
    /// batch instead of one per page. Batches are written when full and at
    /// [`flush`](Self::flush), so with batching on, call `flush` before
    /// using the output, and give each page at most once between flushes
    /// (a batch applies after the records written before the flush).
    pub fn set_batching(&mut self, on: bool) {
        self.batching = on;
    }

    /// Writes the pending batches, if any, to `out`.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<()> {
        self.flush_runs(out)?;
        self.flush_batch(out)
    }

    fn flush_batch(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let mut b = std::mem::take(&mut self.batch_plain);
        let res = self.write_batch(&b, out);
        b.addrs.clear();
        b.data.clear();
        // Keep the buffers (already faulted in) for the next batch.
        self.batch_plain = b;
        res
    }

    /// Whether `XorRuns` entries go through zstd (`XorRunsZstd`) when that
    /// makes them smaller: fewer bytes for a slow link, for a few tenths of
    /// a µs per page of CPU on both sides. On by default with compression.
    pub fn set_runs_compression(&mut self, on: bool) {
        self.runs_zstd = on;
    }

    fn flush_runs(&mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.runs.pages == 0 {
            return Ok(());
        }
        let mut compressed = false;
        if let (Some(c), true) = (self.compressor.as_mut(), self.runs_zstd) {
            zstd_into(c, &self.runs.data, &mut self.scratch)?;
            compressed = self.scratch.len() + 4 < self.runs.data.len();
        }
        let r = &mut self.runs;
        let data_len = if compressed {
            4 + self.scratch.len()
        } else {
            r.data.len()
        };
        let enc = if compressed {
            Encoding::XorRunsZstd
        } else {
            Encoding::XorRuns
        };
        push_record_header(out, r.first, r.pages as u32, enc, data_len as u32);
        if compressed {
            out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
            memcopy::extend(out, &self.scratch);
        } else {
            memcopy::extend(out, &r.data);
        }
        self.stats.records += 1;
        self.stats.encoded_bytes += (RECORD_HEADER_LEN + data_len) as u64;
        r.pages = 0;
        r.data.clear();
        Ok(())
    }

    fn write_batch(&mut self, b: &PendingBatch, out: &mut Vec<u8>) -> Result<()> {
        let n = b.addrs.len();
        if n == 0 {
            return Ok(());
        }
        // Plain pages only (deltas go as `XorRuns`): the adaptive policy
        // for incompressible memory decides whether to try zstd.
        let smaller = self.try_plain_zstd(&b.data)?;
        let encoding = if smaller {
            Encoding::BatchZstd
        } else {
            Encoding::Batch
        };
        let body: &[u8] = match encoding {
            Encoding::BatchZstd => &self.scratch,
            _ => &b.data,
        };
        let data_len = n * 8 + body.len();
        push_record_header(out, b.addrs[0], n as u32, encoding, data_len as u32);
        for a in &b.addrs {
            out.extend_from_slice(&a.to_le_bytes());
        }
        memcopy::extend(out, body);
        match encoding {
            Encoding::BatchZstd => self.stats.compressed_pages += n as u64,
            _ => self.stats.raw_pages += n as u64,
        }
        self.stats.records += 1;
        self.stats.encoded_bytes += (RECORD_HEADER_LEN + data_len) as u64;
        Ok(())
    }

    /// Adds one non-zero page to a pending record: to the `XorRuns` record
    /// when its previous version is cached and few words changed, else to
    /// the batch of plain pages. The delta cache then holds `page`.
    fn batch_page(&mut self, pfn: u64, page: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let gpa = pfn * PAGE_SIZE as u64;
        if let (Some(cache), true) = (self.delta.as_mut(), self.compressor.is_some()) {
            if let Some(old) = cache.get_mut(pfn) {
                let r = &mut self.runs;
                if runs::encode_page(gpa, page, old, &mut r.data, RUNS_MAX_BYTES) {
                    // `old` now equals `page`: the cache is up to date.
                    if r.pages == 0 {
                        r.first = gpa;
                    }
                    r.pages += 1;
                    self.stats.delta_pages += 1;
                    if r.pages >= DATA_RECORD_PAGES {
                        self.flush_runs(out)?;
                    }
                    return Ok(());
                }
                // Too many changes: `old` is half updated; the page goes
                // whole and is cached whole below.
                self.stats.delta_misses += 1;
            }
        }
        self.batch_plain.addrs.push(gpa);
        memcopy::extend(&mut self.batch_plain.data, page);
        if let Some(d) = self.delta.as_mut() {
            d.insert(pfn, page);
        }
        if self.batch_plain.addrs.len() >= DATA_RECORD_PAGES {
            self.flush_batch(out)?;
        }
        Ok(())
    }

    /// Gives the encoder a delta cache: pages it has sent before (and that
    /// are still cached) are sent as `XorZstd` deltas when that pays. Only
    /// for a stream whose reader applies every record in order; the owner
    /// must call [`reset_delta`](Self::reset_delta) whenever the reader may
    /// have missed records (see [`DeltaCache`]). Ignored without
    /// compression, since an uncompressed delta is as big as the page.
    pub fn set_delta_cache(&mut self, cache: Option<DeltaCache>) {
        self.delta = cache;
    }

    /// The delta cache's capacity in bytes (0 without one).
    pub fn delta_capacity_bytes(&self) -> u64 {
        self.delta.as_ref().map_or(0, DeltaCache::capacity_bytes)
    }

    /// Forgets every cached page: the next version of each page is sent
    /// whole. Call when the reader may not hold what was sent.
    pub fn reset_delta(&mut self) {
        if let Some(d) = self.delta.as_mut() {
            d.clear();
        }
    }

    /// The compression setting.
    pub fn compression(&self) -> Compression {
        self.compress
    }

    /// Counters since creation or the last [`take_stats`](Self::take_stats).
    pub fn stats(&self) -> &MemoryStats {
        &self.stats
    }

    /// Returns the counters and resets them.
    pub fn take_stats(&mut self) -> MemoryStats {
        std::mem::take(&mut self.stats)
    }

    /// Appends records for the guest pages `pages` starting at `gpa` to
    /// `out`.
    ///
    /// Zero pages become `Zero` records (consecutive ones coalesced, up to
    /// [`MAX_RECORD_PAGES`] per record); other pages are grouped into
    /// records of at most [`DATA_RECORD_PAGES`] pages, stored `Zstd` when
    /// compression is on and shrinks them, else `Raw`.
    ///
    /// `gpa` must be page aligned and `pages.len()` a multiple of
    /// [`PAGE_SIZE`]. See [`SECTION_TARGET_BYTES`] for sizing sections.
    pub fn encode_run(&mut self, gpa: u64, pages: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if !page_aligned(gpa) {
            return Err(CheckpointError::InvalidArgument(format!(
                "encode_run: gpa {gpa:#x} is not page aligned"
            )));
        }
        if !page_aligned(pages.len() as u64) {
            return Err(CheckpointError::InvalidArgument(format!(
                "encode_run: {} bytes is not a whole number of pages",
                pages.len()
            )));
        }
        if gpa.checked_add(pages.len() as u64).is_none() {
            return Err(CheckpointError::InvalidArgument(format!(
                "encode_run: run of {} bytes at {gpa:#x} overflows the address space",
                pages.len()
            )));
        }
        let npages = pages.len() / PAGE_SIZE;
        if npages == 0 {
            return Ok(());
        }
        let page = |i: usize| &pages[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        let first_pfn = gpa / PAGE_SIZE as u64;

        if self.batching && npages <= BATCH_RUN_MAX {
            for i in 0..npages {
                let pfn = first_pfn + i as u64;
                if is_zero(page(i)) {
                    self.emit_zero(pfn * PAGE_SIZE as u64, 1, out);
                } else {
                    self.batch_page(pfn, page(i), out)?;
                }
                self.stats.raw_bytes += PAGE_SIZE as u64;
            }
            return Ok(());
        }

        let mut start = 0;
        let mut start_class = self.classify(first_pfn, page(0));
        loop {
            let cap = if start_class == Class::Zero {
                MAX_RECORD_PAGES as usize
            } else {
                DATA_RECORD_PAGES
            };
            let mut end = start + 1;
            let mut next_class = None;
            while end < npages && end - start < cap {
                let c = self.classify(first_pfn + end as u64, page(end));
                if c != start_class {
                    next_class = Some(c);
                    break;
                }
                end += 1;
            }
            let run_gpa = gpa + (start * PAGE_SIZE) as u64;
            let data = &pages[start * PAGE_SIZE..end * PAGE_SIZE];
            match start_class {
                Class::Zero => {
                    self.emit_zero(run_gpa, end - start, out);
                }
                Class::Cached if self.batching => {
                    // Page by page into `XorRuns` (which caches each page).
                    for (i, p) in data.chunks_exact(PAGE_SIZE).enumerate() {
                        self.batch_page(first_pfn + (start + i) as u64, p, out)?;
                    }
                }
                Class::Cached => self.emit_delta(run_gpa, data, out)?,
                Class::Data => self.emit_data(run_gpa, data, out)?,
            }
            if start_class == Class::Data || (start_class == Class::Cached && !self.batching) {
                if let Some(d) = self.delta.as_mut() {
                    for (i, p) in data.chunks_exact(PAGE_SIZE).enumerate() {
                        d.insert(first_pfn + (start + i) as u64, p);
                    }
                }
            }
            self.stats.raw_bytes += data.len() as u64;
            if end >= npages {
                return Ok(());
            }
            start = end;
            start_class =
                next_class.unwrap_or_else(|| self.classify(first_pfn + start as u64, page(start)));
        }
    }

    /// How page frame `pfn` with contents `page` is to be sent.
    fn classify(&self, pfn: u64, page: &[u8]) -> Class {
        if is_zero(page) {
            Class::Zero
        } else if self.compressor.is_some() && self.delta.as_ref().is_some_and(|d| d.contains(pfn))
        {
            Class::Cached
        } else {
            Class::Data
        }
    }

    /// A run of pages whose previous versions are all cached: sends the
    /// XOR delta when it compresses to at most 1/8 of the pages, else the
    /// pages themselves.
    fn emit_delta(&mut self, gpa: u64, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let npages = data.len() / PAGE_SIZE;
        if self.deltas.skipping() {
            self.stats.delta_misses += npages as u64;
            return self.emit_data(gpa, data, out);
        }
        let (Some(cache), Some(c)) = (self.delta.as_ref(), self.compressor.as_mut()) else {
            return self.emit_data(gpa, data, out);
        };
        self.xor_scratch.resize(data.len(), 0);
        let first = gpa / PAGE_SIZE as u64;
        for (i, (dst, new)) in self
            .xor_scratch
            .chunks_exact_mut(PAGE_SIZE)
            .zip(data.chunks_exact(PAGE_SIZE))
            .enumerate()
        {
            let Some(old) = cache.get(first + i as u64) else {
                return self.emit_data(gpa, data, out);
            };
            xor_into(dst, new, old);
        }
        zstd_into(c, &self.xor_scratch, &mut self.scratch)?;
        if self.scratch.len() > data.len() / 8 {
            self.stats.delta_misses += npages as u64;
            self.deltas.miss();
            return self.emit_data(gpa, data, out);
        }
        self.deltas.hit();
        push_record_header(
            out,
            gpa,
            npages as u32,
            Encoding::XorZstd,
            self.scratch.len() as u32,
        );
        memcopy::extend(out, &self.scratch);
        self.stats.delta_pages += npages as u64;
        self.stats.records += 1;
        self.stats.encoded_bytes += (RECORD_HEADER_LEN + self.scratch.len()) as u64;
        Ok(())
    }

    /// Appends `Zero` records for `npages` pages at `gpa` known to be zero
    /// (memory never written), without looking at any bytes.
    pub fn encode_zero_run(&mut self, gpa: u64, npages: u64, out: &mut Vec<u8>) -> Result<()> {
        if !page_aligned(gpa) {
            return Err(CheckpointError::InvalidArgument(format!(
                "encode_zero_run: gpa {gpa:#x} is not page aligned"
            )));
        }
        let mut done = 0u64;
        while done < npages {
            let n = (npages - done).min(u64::from(MAX_RECORD_PAGES));
            self.emit_zero(gpa + done * PAGE_SIZE as u64, n as usize, out);
            self.stats.raw_bytes += n * PAGE_SIZE as u64;
            done += n;
        }
        Ok(())
    }

    /// Writes a `Zero` record; the pages leave the delta cache (the reader
    /// no longer holds their cached contents).
    fn emit_zero(&mut self, gpa: u64, npages: usize, out: &mut Vec<u8>) {
        push_record_header(out, gpa, npages as u32, Encoding::Zero, 0);
        if let Some(d) = self.delta.as_mut() {
            d.invalidate(gpa / PAGE_SIZE as u64, npages as u64);
        }
        self.stats.zero_pages += npages as u64;
        self.stats.records += 1;
        self.stats.encoded_bytes += RECORD_HEADER_LEN as u64;
    }

    /// Tries zstd on plain page bytes under the adaptive policy (skipped
    /// while incompressible memory was seen lately). True when
    /// `self.scratch` now holds a frame smaller than `data`.
    fn try_plain_zstd(&mut self, data: &[u8]) -> Result<bool> {
        let Some(c) = self.compressor.as_mut() else {
            return Ok(false);
        };
        if self.plain.skipping() {
            self.stats.skipped_records += 1;
            return Ok(false);
        }
        zstd_into(c, data, &mut self.scratch)?;
        if self.scratch.len() > data.len() - data.len() / 32 {
            self.plain.miss();
        } else {
            self.plain.hit();
        }
        Ok(self.scratch.len() < data.len())
    }

    fn emit_data(&mut self, gpa: u64, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let npages = data.len() / PAGE_SIZE;
        let encoding = if self.try_plain_zstd(data)? {
            Encoding::Zstd
        } else {
            Encoding::Raw
        };
        let body: &[u8] = match encoding {
            Encoding::Zstd => &self.scratch,
            _ => data,
        };
        push_record_header(out, gpa, npages as u32, encoding, body.len() as u32);
        memcopy::extend(out, body);
        match encoding {
            Encoding::Zstd => self.stats.compressed_pages += npages as u64,
            _ => self.stats.raw_pages += npages as u64,
        }
        self.stats.records += 1;
        self.stats.encoded_bytes += (RECORD_HEADER_LEN + body.len()) as u64;
        Ok(())
    }
}

/// Adaptive skipping: after [`ADAPTIVE_MISSES`] failed attempts in a row,
/// the next [`ADAPTIVE_SKIP`] records are not tried.
#[derive(Default)]
struct Adaptive {
    /// Consecutive attempts that did not pay.
    misses: u32,
    /// Records still to send without trying.
    skip_left: u32,
}

impl Adaptive {
    /// Whether to skip this record's attempt (counts it down).
    fn skipping(&mut self) -> bool {
        if self.skip_left > 0 {
            self.skip_left -= 1;
            true
        } else {
            false
        }
    }

    fn hit(&mut self) {
        self.misses = 0;
    }

    fn miss(&mut self) {
        self.misses += 1;
        if self.misses >= ADAPTIVE_MISSES {
            self.misses = 0;
            self.skip_left = ADAPTIVE_SKIP;
        }
    }
}

/// How [`MemoryEncoder::encode_run`] sends a page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero,
    /// Non-zero, previous version in the delta cache.
    Cached,
    /// Non-zero, nothing to diff against.
    Data,
}

fn push_record_header(out: &mut Vec<u8>, gpa: u64, npages: u32, enc: Encoding, data_len: u32) {
    out.extend_from_slice(&gpa.to_le_bytes());
    out.extend_from_slice(&npages.to_le_bytes());
    out.push(enc as u8);
    out.extend_from_slice(&data_len.to_le_bytes());
}

/// Compresses `src` into `dst` (cleared first) as one zstd frame.
fn zstd_into(c: &mut Compressor<'static>, src: &[u8], dst: &mut Vec<u8>) -> Result<()> {
    dst.clear();
    dst.reserve(zstd::zstd_safe::compress_bound(src.len()));
    c.compress_to_buffer(src, dst)
        .map_err(CheckpointError::Zstd)?;
    Ok(())
}

#[cfg(test)]
mod tests;

/// A xorshift64 stream for the page tests' pseudo-random data.
#[cfg(test)]
pub(crate) fn test_xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
