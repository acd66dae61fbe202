//! Shared inputs for the criterion benchmarks of hotspare's hot paths
//! (the checkpoint-performance issue).
//!
//! The benchmarks themselves live in `benches/benches/*.rs`; this library
//! holds what several of them (and `examples/ratios.rs`) need:
//!
//! - [`Rng`]: a small seeded generator, so every run benches the same bytes;
//! - page generators: [`Content`] (what one page holds), [`sparse_update`]
//!   (a few words changed since the previous epoch) and [`Profile`] (the
//!   workload profiles, including a [`Profile::Mixed`] guest);
//! - dirty-bitmap generators: [`Density`] and [`dirty_bitmap`];
//! - buffer placement: [`Placed`] and [`PlacedOut`] put benchmark buffers
//!   at fixed offsets within a page, so copy speeds do not depend on where
//!   the allocator happened to put them;
//! - [`xor_delta`]: a **prototype** of the planned XOR-delta page encoding,
//!   used only to measure whether it is worth building. Nothing outside
//!   `benches/` uses it.
//!
//! Everything is deterministic for a given seed. The page contents are
//! synthetic stand-ins for guest memory, not samples of a real guest: the
//! ratios and speeds they give are good for comparing encodings and for
//! spotting regressions, not as a promise about any particular workload.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use checkpoint::DirtyBitmap;

pub use checkpoint::PAGE_SIZE;

/// Pages in 1 GiB of guest memory (262144).
pub const GIB_PAGES: usize = (1 << 30) / PAGE_SIZE;

/// Number of `u64` words a "sparse update" changes in a page.
pub const SPARSE_WORDS: usize = 4;

/// Words in one page.
const PAGE_WORDS: usize = PAGE_SIZE / 8;

/// SplitMix64: a tiny, fast, seeded generator. Not for anything but
/// making benchmark inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` must be non-zero; the tiny modulo bias does
    /// not matter here).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------

/// What one page holds before any sparse update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// All zero (untouched or freed guest memory).
    Zero,
    /// ASCII words separated by spaces and newlines (page cache of text
    /// files, logs, source code).
    Text,
    /// Arrays of 64-byte kernel-like structs: pointers into one area, small
    /// counters and flags, a hash, padding. Compresses moderately.
    Structured,
    /// Pseudo-random bytes (encrypted or already compressed data);
    /// incompressible.
    Random,
}

impl Content {
    /// Every kind, in a fixed order.
    pub const ALL: [Content; 4] = [
        Content::Zero,
        Content::Text,
        Content::Structured,
        Content::Random,
    ];

    /// Short name used in benchmark ids and tables.
    pub fn name(self) -> &'static str {
        match self {
            Content::Zero => "zero",
            Content::Text => "text",
            Content::Structured => "structured",
            Content::Random => "random",
        }
    }

    /// Overwrites `page` (one page, [`PAGE_SIZE`] bytes) with this content.
    pub fn fill(self, page: &mut [u8], rng: &mut Rng) {
        assert_eq!(page.len(), PAGE_SIZE, "Content::fill takes one page");
        match self {
            Content::Zero => page.fill(0),
            Content::Text => fill_text(page, rng),
            Content::Structured => fill_structured(page, rng),
            Content::Random => rng.fill(page),
        }
    }
}

/// The vocabulary of [`Content::Text`] pages.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "memory",
    "page",
    "dirty",
    "checkpoint",
    "standby",
    "primary",
    "epoch",
    "kernel",
    "device",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "client",
    "server",
    "connection",
    "timeout",
    "value",
    "return",
    "struct",
    "fn",
    "let",
    "mut",
    "impl",
    "pub",
    "use",
    "self",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "->",
    "//",
    "0",
    "1",
    "2",
    "42",
    "1024",
    "0x7f3a",
    "2024-05-17T12:00:00Z",
    "GET",
    "/api/v1/items",
    "200",
    "404",
    "user_id",
];

fn fill_text(page: &mut [u8], rng: &mut Rng) {
    let mut i = 0;
    while i < page.len() {
        let word = WORDS[rng.below(WORDS.len())].as_bytes();
        let n = word.len().min(page.len() - i);
        page[i..i + n].copy_from_slice(&word[..n]);
        i += n;
        if i < page.len() {
            page[i] = if rng.below(12) == 0 { b'\n' } else { b' ' };
            i += 1;
        }
    }
}

fn fill_structured(page: &mut [u8], rng: &mut Rng) {
    // 64 records of 64 bytes.
    let area = 0xffff_8880_0000_0000u64 | ((rng.below(1 << 12) as u64) << 24);
    for (i, rec) in page.chunks_exact_mut(64).enumerate() {
        let next = if rng.below(4) == 0 {
            0
        } else {
            area | ((rng.below(1 << 18) as u64) << 6)
        };
        let prev = area | ((rng.below(1 << 18) as u64) << 6);
        let refcount = 1 + rng.below(8) as u32;
        let flags = [0x1u32, 0x3, 0x11, 0x8000_0001][rng.below(4)];
        let counter = (i as u64) * 4096 + rng.below(4096) as u64;
        let hash = rng.next_u64();
        rec[0..8].copy_from_slice(&next.to_le_bytes());
        rec[8..16].copy_from_slice(&prev.to_le_bytes());
        rec[16..20].copy_from_slice(&refcount.to_le_bytes());
        rec[20..24].copy_from_slice(&flags.to_le_bytes());
        rec[24..32].copy_from_slice(&counter.to_le_bytes());
        rec[32..40].copy_from_slice(&hash.to_le_bytes());
        rec[40..64].fill(0);
    }
}

/// Changes `nwords` randomly chosen, 8-byte aligned `u64` words of `page`
/// to new non-zero values (a guest that touched a few counters or pointers
/// since the previous epoch). The same word may be chosen twice.
pub fn sparse_update(page: &mut [u8], nwords: usize, rng: &mut Rng) {
    assert_eq!(page.len(), PAGE_SIZE, "sparse_update takes one page");
    for _ in 0..nwords {
        let w = rng.below(PAGE_WORDS) * 8;
        let old = u64::from_le_bytes(page[w..w + 8].try_into().unwrap_or_default());
        // XOR with a non-zero value: the word always changes.
        let v = old ^ (rng.next_u64() | 1);
        page[w..w + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// A workload profile: how the pages of a run are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// All pages zero.
    Zero,
    /// Zero pages in which [`SPARSE_WORDS`] words were written.
    SparseZero,
    /// [`Content::Structured`] pages (a different one each) in which
    /// [`SPARSE_WORDS`] words changed since the previous epoch. Without a
    /// delta encoding these encode like structured pages; see
    /// [`xor_delta`] for what a delta would save.
    SparseFixed,
    /// [`Content::Text`] pages.
    Text,
    /// [`Content::Random`] pages (incompressible).
    Random,
    /// A guest-like mix, page by page: 35% zero, 10% sparse-zero, 20%
    /// sparse-fixed, 20% text, 15% random. The weights are an assumption,
    /// not a measurement of a real guest.
    Mixed,
}

impl Profile {
    /// Every profile, in the order of the tables.
    pub const ALL: [Profile; 6] = [
        Profile::Zero,
        Profile::SparseZero,
        Profile::SparseFixed,
        Profile::Text,
        Profile::Random,
        Profile::Mixed,
    ];

    /// Short name used in benchmark ids and tables.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Zero => "zero",
            Profile::SparseZero => "sparse_zero",
            Profile::SparseFixed => "sparse_fixed",
            Profile::Text => "text",
            Profile::Random => "random",
            Profile::Mixed => "mixed",
        }
    }

    /// Overwrites `page` (one page) with a page of this profile.
    pub fn fill_page(self, page: &mut [u8], rng: &mut Rng) {
        let p = match self {
            Profile::Mixed => match rng.below(100) {
                0..=34 => Profile::Zero,
                35..=44 => Profile::SparseZero,
                45..=64 => Profile::SparseFixed,
                65..=84 => Profile::Text,
                _ => Profile::Random,
            },
            p => p,
        };
        match p {
            Profile::Zero => Content::Zero.fill(page, rng),
            Profile::SparseZero => {
                Content::Zero.fill(page, rng);
                sparse_update(page, SPARSE_WORDS, rng);
            }
            Profile::SparseFixed => {
                Content::Structured.fill(page, rng);
                sparse_update(page, SPARSE_WORDS, rng);
            }
            Profile::Text => Content::Text.fill(page, rng),
            Profile::Random | Profile::Mixed => Content::Random.fill(page, rng),
        }
    }

    /// `npages` consecutive pages of this profile, made from `seed`.
    pub fn run(self, npages: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0u8; npages * PAGE_SIZE];
        for page in buf.chunks_exact_mut(PAGE_SIZE) {
            self.fill_page(page, &mut rng);
        }
        buf
    }
}

/// Pages a run-length-`run_pages` benchmark encodes per iteration: the
/// run itself, except that single-page runs are benched as 64 isolated
/// pages (so one iteration averages over 64 different pages of the
/// profile, e.g. the mix of [`Profile::Mixed`]).
pub fn bench_pages(run_pages: usize) -> usize {
    run_pages.max(64)
}

/// Encodes `pages` at `gpa` with one [`MemoryEncoder::encode_run`] call per
/// `run_pages` pages, appending records to `out` — what the engine does
/// for dirty ranges of that length.
///
/// [`MemoryEncoder::encode_run`]: checkpoint::MemoryEncoder::encode_run
pub fn encode_in_runs(
    enc: &mut checkpoint::MemoryEncoder,
    gpa: u64,
    pages: &[u8],
    run_pages: usize,
    out: &mut Vec<u8>,
) -> checkpoint::Result<()> {
    let step = run_pages.max(1) * PAGE_SIZE;
    for (i, run) in pages.chunks(step).enumerate() {
        enc.encode_run(gpa + (i * step) as u64, run, out)?;
    }
    Ok(())
}

/// A run of pages as the previous epoch had them and as they are now, for
/// delta encodings.
#[derive(Clone, Debug)]
pub struct UpdatedRun {
    /// The pages at the previous checkpoint.
    pub prev: Vec<u8>,
    /// The same pages now: `prev` with `nwords` words changed per page.
    pub cur: Vec<u8>,
}

impl UpdatedRun {
    /// `npages` pages of `content` (a different page each), each then
    /// given a [`sparse_update`] of `nwords` words.
    pub fn new(content: Content, npages: usize, nwords: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut prev = vec![0u8; npages * PAGE_SIZE];
        for page in prev.chunks_exact_mut(PAGE_SIZE) {
            content.fill(page, &mut rng);
        }
        let mut cur = prev.clone();
        for page in cur.chunks_exact_mut(PAGE_SIZE) {
            sparse_update(page, nwords, &mut rng);
        }
        UpdatedRun { prev, cur }
    }
}

// ---------------------------------------------------------------------------
// Buffer placement
// ---------------------------------------------------------------------------

/// Where `bytes` starts within its 4 KiB page.
pub fn page_offset(bytes: &[u8]) -> usize {
    bytes.as_ptr() as usize % PAGE_SIZE
}

/// A byte buffer whose contents start at a chosen offset within a 4 KiB
/// page (0: page aligned, like guest memory).
///
/// Why it matters: glibc 2.36's `memcpy` on this machine's AMD EPYC is
/// about 15 times slower for 4 KiB–256 KiB copies whose destination lies
/// 1–15 bytes past the source modulo 4 KiB. Buffers placed wherever the
/// allocator puts them make decode figures jump between runs; placing
/// them like the engine does keeps the benches comparable. The
/// `copy_256KiB` group of the `pages` bench shows the effect itself.
#[derive(Clone, Debug)]
pub struct Placed {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Placed {
    /// `len` zero bytes starting at `offset` (taken modulo 4096) in a page.
    pub fn zeroed(len: usize, offset: usize) -> Self {
        let buf = vec![0u8; len + 2 * PAGE_SIZE];
        let base = (PAGE_SIZE - page_offset(&buf)) % PAGE_SIZE;
        Placed {
            buf,
            start: base + offset % PAGE_SIZE,
            len,
        }
    }

    /// A copy of `data` starting at `offset` (modulo 4096) in a page.
    pub fn copy_of(data: &[u8], offset: usize) -> Self {
        let mut p = Placed::zeroed(data.len(), offset);
        p.as_mut_slice().copy_from_slice(data);
        p
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// An output `Vec` for encoders whose appended bytes start at a fixed
/// offset within a page, run after run.
///
/// The `Vec` keeps a few padding bytes in front; [`reset`](Self::reset)
/// truncates back to them instead of clearing, so the appended data always
/// starts at the same address. The capacity must cover the largest output,
/// or the `Vec` moves (still correct, only no longer placed).
#[derive(Debug)]
pub struct PlacedOut {
    vec: Vec<u8>,
    prefix: usize,
}

impl PlacedOut {
    /// Room for `capacity` bytes starting at `offset` (modulo 4096) in a
    /// page. The engine's section buffers are large heap blocks, which
    /// glibc places 16 bytes into a page, so 16 mimics them.
    pub fn new(capacity: usize, offset: usize) -> Self {
        let mut vec = Vec::with_capacity(capacity + 2 * PAGE_SIZE);
        let base = vec.as_ptr() as usize % PAGE_SIZE;
        let prefix = (PAGE_SIZE - base + offset % PAGE_SIZE) % PAGE_SIZE;
        vec.resize(prefix, 0);
        PlacedOut { vec, prefix }
    }

    /// Drops what was appended and returns the `Vec` to append to.
    pub fn reset(&mut self) -> &mut Vec<u8> {
        self.vec.truncate(self.prefix);
        &mut self.vec
    }

    /// What was appended since the last reset.
    pub fn data(&self) -> &[u8] {
        &self.vec[self.prefix..]
    }
}

// ---------------------------------------------------------------------------
// Dirty bitmaps
// ---------------------------------------------------------------------------

/// How many pages of a region are dirty, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Density {
    /// This many pages at random places (isolated single pages, mostly).
    Random(usize),
    /// About this many pages (rounded down to whole clusters) in
    /// non-overlapping clusters of `run` consecutive pages at random,
    /// unaligned places.
    Clustered {
        /// Total dirty pages wanted.
        pages: usize,
        /// Pages per cluster.
        run: usize,
    },
    /// Every page.
    All,
}

impl Density {
    /// Short name used in benchmark ids.
    pub fn name(self) -> String {
        match self {
            Density::Random(n) => format!("random_{n}"),
            Density::Clustered { pages, run } => format!("clustered_{pages}_runs_of_{run}"),
            Density::All => "all".into(),
        }
    }
}

/// A bitmap of `npages` pages dirty as `density` says, made from `seed`.
///
/// # Panics
/// If the density asks for more pages than fit.
pub fn dirty_bitmap(npages: usize, density: Density, seed: u64) -> DirtyBitmap {
    let mut rng = Rng::new(seed);
    let mut b = DirtyBitmap::new(npages);
    match density {
        Density::Random(n) => {
            assert!(n <= npages, "{n} dirty pages do not fit in {npages}");
            while b.count() < n {
                // count() is O(words); batch the sets to keep this quick.
                for _ in 0..(n - b.count()) {
                    b.set(rng.below(npages));
                }
            }
        }
        Density::Clustered { pages, run } => {
            let run = run.max(1);
            let clusters = pages / run;
            assert!(
                clusters * (run + 1) <= npages,
                "{clusters} clusters of {run} do not fit in {npages} pages"
            );
            let mut placed = 0;
            while placed < clusters {
                let start = rng.below(npages - run + 1);
                // Keep a clear page on each side so clusters never merge.
                let lo = start.saturating_sub(1);
                let hi = (start + run + 1).min(npages);
                if (lo..hi).any(|p| b.is_set(p)) {
                    continue;
                }
                b.set_range(start..start + run);
                placed += 1;
            }
        }
        Density::All => b.set_range(0..npages),
    }
    b
}

// ---------------------------------------------------------------------------
// XOR-delta prototype
// ---------------------------------------------------------------------------

pub mod xor_delta {
    //! **PROTOTYPE — used only for measurement.** Nothing in the engine or
    //! the checkpoint format uses this; it exists so the `xor_delta` bench
    //! can tell whether the planned XOR-delta page encoding is worth
    //! building, and what it would cost per page.
    //!
    //! The idea: the primary keeps the page as sent at the previous epoch;
    //! for a dirty page it XORs the new content against it. A guest that
    //! changed a few words leaves a delta that is zero almost everywhere,
    //! which either a zero-run encoding ([`sparse_encode`]) or zstd of the
    //! delta shrinks to a few bytes, even when the page itself does not
    //! compress.
    //!
    //! The sparse format here (not a spec, just enough to measure sizes):
    //! per page, a `u16` count of runs, then per run of non-zero `u64`
    //! words a `u16` first-word index, a `u16` word count and the words.

    use std::io;

    use zstd::bulk::Compressor;

    use super::{PAGE_SIZE, PAGE_WORDS};

    /// `out[i] = prev[i] ^ cur[i]`, 8 bytes at a time. All three must have
    /// the same length, a multiple of 8.
    pub fn xor_into(prev: &[u8], cur: &[u8], out: &mut [u8]) {
        assert!(
            prev.len() == cur.len() && cur.len() == out.len() && cur.len().is_multiple_of(8),
            "xor_into: lengths {} {} {}",
            prev.len(),
            cur.len(),
            out.len()
        );
        for ((o, a), b) in out
            .chunks_exact_mut(8)
            .zip(prev.chunks_exact(8))
            .zip(cur.chunks_exact(8))
        {
            let x = u64::from_ne_bytes(a.try_into().unwrap_or_default())
                ^ u64::from_ne_bytes(b.try_into().unwrap_or_default());
            o.copy_from_slice(&x.to_ne_bytes());
        }
    }

    /// Appends the zero-run (sparse) encoding of one page's delta to `out`
    /// and returns its length in bytes. `delta` is one page.
    pub fn sparse_encode(delta: &[u8], out: &mut Vec<u8>) -> usize {
        assert_eq!(delta.len(), PAGE_SIZE, "sparse_encode takes one page");
        let word =
            |i: usize| u64::from_ne_bytes(delta[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let start_len = out.len();
        out.extend_from_slice(&[0, 0]); // run count, patched below
        let mut runs: u16 = 0;
        let mut i = 0;
        while i < PAGE_WORDS {
            if word(i) == 0 {
                i += 1;
                continue;
            }
            let first = i;
            while i < PAGE_WORDS && word(i) != 0 {
                i += 1;
            }
            out.extend_from_slice(&(first as u16).to_le_bytes());
            out.extend_from_slice(&((i - first) as u16).to_le_bytes());
            out.extend_from_slice(&delta[first * 8..i * 8]);
            runs += 1;
        }
        out[start_len..start_len + 2].copy_from_slice(&runs.to_le_bytes());
        out.len() - start_len
    }

    /// Applies one page's sparse delta (from [`sparse_encode`]) to `page`
    /// in place and returns the bytes of `enc` consumed. Used by the tests
    /// to prove the encoding round-trips.
    pub fn sparse_apply(page: &mut [u8], enc: &[u8]) -> Result<usize, String> {
        let take = |at: usize, n: usize| -> Result<&[u8], String> {
            enc.get(at..at + n)
                .ok_or_else(|| format!("sparse delta truncated at byte {at}"))
        };
        let le16 = |b: &[u8]| usize::from(u16::from_le_bytes([b[0], b[1]]));
        let runs = le16(take(0, 2)?);
        let mut at = 2;
        for _ in 0..runs {
            let first = le16(take(at, 2)?);
            let n = le16(take(at + 2, 2)?);
            at += 4;
            if first + n > PAGE_WORDS {
                return Err(format!("run {first}+{n} is past the page"));
            }
            let words = take(at, n * 8)?;
            for (p, d) in page[first * 8..(first + n) * 8].iter_mut().zip(words) {
                *p ^= d;
            }
            at += n * 8;
        }
        Ok(at)
    }

    /// Sizes produced by the three ways of shipping a run of dirty pages
    /// that [`DeltaEncoder`] measures.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DeltaSizes {
        /// Bytes of the run.
        pub raw: usize,
        /// zstd of the pages themselves (what `MemoryEncoder` does today).
        pub direct_zstd: usize,
        /// Zero-run encoding of the XOR delta, page by page.
        pub xor_sparse: usize,
        /// zstd of the XOR delta of the whole run.
        pub xor_zstd: usize,
    }

    /// Reusable buffers and compressor for the measurements.
    pub struct DeltaEncoder {
        compressor: Compressor<'static>,
        delta: Vec<u8>,
        scratch: Vec<u8>,
    }

    impl DeltaEncoder {
        /// An encoder whose zstd runs at `level`.
        pub fn new(level: i32) -> io::Result<Self> {
            Ok(DeltaEncoder {
                compressor: Compressor::new(level)?,
                delta: Vec::new(),
                scratch: Vec::new(),
            })
        }

        fn zstd(&mut self, data_is_delta: bool, cur: &[u8]) -> io::Result<usize> {
            let data: &[u8] = if data_is_delta { &self.delta } else { cur };
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(data.len()));
            self.compressor.compress_to_buffer(data, &mut self.scratch)
        }

        /// Today's path: zstd of `cur` as one frame. Returns its size.
        pub fn direct_zstd(&mut self, cur: &[u8]) -> io::Result<usize> {
            self.zstd(false, cur)
        }

        /// XOR against `prev`, then zstd of the whole delta as one frame.
        /// Returns the compressed size.
        pub fn xor_zstd(&mut self, prev: &[u8], cur: &[u8]) -> io::Result<usize> {
            self.delta.resize(cur.len(), 0);
            xor_into(prev, cur, &mut self.delta);
            self.zstd(true, cur)
        }

        /// XOR against `prev`, then the zero-run encoding of each page's
        /// delta, appended to `out` (cleared first). Returns the size.
        pub fn xor_sparse(&mut self, prev: &[u8], cur: &[u8], out: &mut Vec<u8>) -> usize {
            out.clear();
            self.delta.resize(cur.len(), 0);
            xor_into(prev, cur, &mut self.delta);
            for page in self.delta.chunks_exact(PAGE_SIZE) {
                sparse_encode(page, out);
            }
            out.len()
        }

        /// All three sizes for one run.
        pub fn sizes(&mut self, prev: &[u8], cur: &[u8]) -> io::Result<DeltaSizes> {
            let mut out = Vec::new();
            Ok(DeltaSizes {
                raw: cur.len(),
                direct_zstd: self.direct_zstd(cur)?,
                xor_sparse: self.xor_sparse(prev, cur, &mut out),
                xor_zstd: self.xor_zstd(prev, cur)?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::xor_delta::*;
    use super::*;

    #[test]
    fn generators_are_deterministic_and_sized() {
        for p in Profile::ALL {
            let a = p.run(8, 1);
            assert_eq!(a.len(), 8 * PAGE_SIZE);
            assert_eq!(a, p.run(8, 1), "{}", p.name());
        }
        assert!(checkpoint::pages::is_zero(&Profile::Zero.run(4, 0)));
        let sz = Profile::SparseZero.run(1, 3);
        let nonzero_words = sz
            .chunks_exact(8)
            .filter(|w| w.iter().any(|&b| b != 0))
            .count();
        assert!((1..=SPARSE_WORDS).contains(&nonzero_words));
        assert!(Profile::Text.run(1, 0).iter().all(u8::is_ascii));
    }

    #[test]
    fn placement() {
        for off in [0, 1, 16, 4095] {
            let p = Placed::copy_of(&[1, 2, 3], off);
            assert_eq!(page_offset(p.as_slice()), off);
            assert_eq!(p.as_slice(), &[1, 2, 3]);
            let mut o = PlacedOut::new(100, off);
            o.reset().extend_from_slice(&[9; 100]);
            assert_eq!(page_offset(o.data()), off);
            assert_eq!(o.data(), &[9; 100]);
            o.reset().push(1);
            assert_eq!((page_offset(o.data()), o.data()), (off, &[1u8][..]));
        }
    }

    #[test]
    fn bitmap_densities() {
        let n = GIB_PAGES;
        assert_eq!(dirty_bitmap(n, Density::Random(1000), 1).count(), 1000);
        let c = dirty_bitmap(
            n,
            Density::Clustered {
                pages: 25_000,
                run: 64,
            },
            1,
        );
        assert_eq!(c.count(), 25_000 / 64 * 64);
        assert_eq!(c.ranges().count(), 25_000 / 64);
        assert!(c.ranges().all(|r| r.len() == 64));
        assert_eq!(dirty_bitmap(n, Density::All, 0).ranges().count(), 1);
    }

    #[test]
    fn sparse_delta_round_trips() {
        for content in Content::ALL {
            let run = UpdatedRun::new(content, 4, 7, 9);
            let mut delta = vec![0u8; run.cur.len()];
            xor_into(&run.prev, &run.cur, &mut delta);
            let mut rebuilt = run.prev.clone();
            for (page, d) in rebuilt
                .chunks_exact_mut(PAGE_SIZE)
                .zip(delta.chunks_exact(PAGE_SIZE))
            {
                let mut enc = Vec::new();
                let n = sparse_encode(d, &mut enc);
                assert_eq!(sparse_apply(page, &enc).unwrap(), n);
            }
            assert_eq!(rebuilt, run.cur, "{}", content.name());
        }
        assert!(sparse_apply(&mut [0u8; PAGE_SIZE], &[1, 0, 0]).is_err());
    }

    #[test]
    fn delta_beats_direct_on_sparse_updates() {
        let run = UpdatedRun::new(Content::Random, 64, SPARSE_WORDS, 5);
        let s = DeltaEncoder::new(1)
            .unwrap()
            .sizes(&run.prev, &run.cur)
            .unwrap();
        assert!(s.direct_zstd >= s.raw, "{s:?}");
        assert!(s.xor_sparse < s.raw / 50, "{s:?}");
        assert!(s.xor_zstd < s.raw / 20, "{s:?}");
    }
}
