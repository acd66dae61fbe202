//! `page_records`: the page-record decoder of `Memory` and `Disk` sections
//! (`checkpoint::pages`, `checkpoint::disk`).
//!
//! Input: a control byte, then a Memory section payload. Checks:
//! - every span handed to a sink is page aligned, non-empty, whole pages
//!   and does not overflow, except an `XorRuns` run handed to the XOR sink:
//!   8-byte words at an 8-byte aligned address, inside one page;
//! - the three decoders agree: the zero-aware one accepts exactly what the
//!   delta-aware one accepts without XOR deltas, and delivers the same
//!   operations; the plain one delivers the same pages (zeros as zero-filled
//!   slices); the `Disk` decoder (the same records after a disk index)
//!   accepts what the zero-aware one does;
//! - round trip: the memory the records leave, encoded again by
//!   `MemoryEncoder` (compression, batching and XOR deltas chosen by the
//!   control byte), decodes to the same memory.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use checkpoint::delta::DeltaCache;
use checkpoint::pages::{self, PAGE_SIZE};
use checkpoint::{disk, Compression, MemoryEncoder};

const PAGE: u64 = PAGE_SIZE as u64;
/// Decoded pages past which the per-page checks and the round trip are
/// skipped, so one run costs little even when a tiny zstd frame expands to
/// 64 MiB.
const MODEL_PAGES: u64 = 64;

/// What a decoder delivered: data and XOR deltas with the CRC of each page.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Data(u64, Vec<u32>),
    Zero(u64, u64),
    Xor(u64, Vec<u32>),
}

fn check_span(gpa: u64, len: u64) {
    assert!(
        gpa.is_multiple_of(PAGE)
            && len > 0
            && len.is_multiple_of(PAGE)
            && gpa.checked_add(len).is_some(),
        "the decoder delivered {len:#x} bytes at {gpa:#x}"
    );
}

/// An XOR span: whole pages, or words inside one page.
fn check_xor_span(gpa: u64, len: u64) {
    if len >= PAGE {
        return check_span(gpa, len);
    }
    assert!(
        gpa.is_multiple_of(8) && len > 0 && len.is_multiple_of(8) && gpa % PAGE + len <= PAGE,
        "the decoder delivered an XOR run of {len:#x} bytes at {gpa:#x}"
    );
}

fn page_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(PAGE_SIZE).map(crc32fast::hash).collect()
}

/// Guest memory as records leave it; absent pages are zero (a present one
/// may be zero too).
#[derive(Default)]
struct Model {
    pages: BTreeMap<u64, Vec<u8>>,
    touched: BTreeSet<u64>,
}

impl Model {
    fn page(&self, pfn: u64) -> Vec<u8> {
        self.pages
            .get(&pfn)
            .cloned()
            .unwrap_or_else(|| vec![0; PAGE_SIZE])
    }

    fn set(&mut self, pfn: u64, p: Vec<u8>) {
        self.touched.insert(pfn);
        self.pages.insert(pfn, p);
    }

    fn apply(&mut self, gpa: u64, data: &[u8], xor: bool) {
        if data.len() < PAGE_SIZE {
            // Words of an XorRuns run, inside one page.
            let (pfn, at) = (gpa / PAGE, (gpa % PAGE) as usize);
            let mut cur = self.page(pfn);
            cur[at..at + data.len()]
                .iter_mut()
                .zip(data)
                .for_each(|(c, d)| *c ^= d);
            return self.set(pfn, cur);
        }
        for (i, p) in data.chunks(PAGE_SIZE).enumerate() {
            let pfn = gpa / PAGE + i as u64;
            let new = if xor {
                let mut cur = self.page(pfn);
                cur.iter_mut().zip(p).for_each(|(c, d)| *c ^= d);
                cur
            } else {
                p.to_vec()
            };
            self.set(pfn, new);
        }
    }

    fn zero(&mut self, gpa: u64, len: u64) {
        for pfn in gpa / PAGE..(gpa + len) / PAGE {
            self.touched.insert(pfn);
            self.pages.remove(&pfn);
        }
    }
}

/// What a decoder delivered. Past [`MODEL_PAGES`] only spans are kept (no
/// page CRCs, no model): the decoders deliver the same operations in the
/// same order, so they cross that point at the same operation.
#[derive(Default)]
struct Seen {
    ops: Vec<Op>,
    model: Model,
    pages: u64,
}

impl Seen {
    fn small(&self) -> bool {
        self.pages <= MODEL_PAGES
    }

    fn data(&mut self, gpa: u64, d: &[u8], xor: bool) {
        if xor {
            check_xor_span(gpa, d.len() as u64);
        } else {
            check_span(gpa, d.len() as u64);
        }
        self.pages = self.pages.saturating_add(d.len() as u64 / PAGE);
        let crcs = if self.small() {
            self.model.apply(gpa, d, xor);
            page_crcs(d)
        } else {
            vec![d.len() as u32]
        };
        self.ops.push(if xor {
            Op::Xor(gpa, crcs)
        } else {
            Op::Data(gpa, crcs)
        });
    }

    fn zero(&mut self, gpa: u64, len: u64) {
        check_span(gpa, len);
        self.ops.push(Op::Zero(gpa, len));
        self.pages = self.pages.saturating_add(len / PAGE);
        if self.small() {
            self.model.zero(gpa, len);
        }
    }
}

/// Decodes `payload` with the zero-aware decoder, or as a `Disk` section.
fn simple(payload: &[u8], as_disk: Option<u32>) -> (bool, Vec<Op>) {
    let seen = RefCell::new(Seen::default());
    let data = |gpa: u64, d: &[u8]| {
        seen.borrow_mut().data(gpa, d, false);
        Ok(())
    };
    let zero = |gpa: u64, len: u64| {
        seen.borrow_mut().zero(gpa, len);
        Ok(())
    };
    let ok = match as_disk {
        None => pages::decode_records_zero_aware(payload, data, zero).is_ok(),
        Some(index) => {
            let mut b = disk::header(index).to_vec();
            b.extend_from_slice(payload);
            let r = disk::decode(&b, data, zero);
            if let Ok(i) = r {
                assert_eq!(i, index, "the disk index changed");
            }
            r.is_ok()
        }
    };
    (ok, seen.into_inner().ops)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&ctl, payload)) = data.split_first() else {
        return;
    };
    let seen = RefCell::new(Seen::default());
    let full = pages::decode_records_with_deltas(
        payload,
        |gpa, d| {
            seen.borrow_mut().data(gpa, d, false);
            Ok(())
        },
        |gpa, len| {
            seen.borrow_mut().zero(gpa, len);
            Ok(())
        },
        |gpa, d| {
            seen.borrow_mut().data(gpa, d, true);
            Ok(())
        },
    )
    .is_ok();
    let seen = seen.into_inner();
    let has_xor = seen.ops.iter().any(|o| matches!(o, Op::Xor(..)));

    let (zero_aware, ops) = simple(payload, None);
    assert_eq!(
        zero_aware,
        full && !has_xor,
        "the zero-aware decoder disagrees with the delta-aware one"
    );
    assert!(
        seen.ops.starts_with(&ops),
        "the decoders delivered different operations"
    );
    let (as_disk, disk_ops) = simple(payload, Some(u32::from(ctl) * 0x0101_0101));
    assert_eq!(as_disk, zero_aware, "the Disk decoder disagrees");
    assert!(
        seen.ops.starts_with(&disk_ops),
        "the Disk decoder delivered other operations"
    );

    if !seen.small() {
        return;
    }
    // The plain decoder: the same pages, zero records as zero-filled slices.
    let plain_pages = RefCell::new(Vec::new());
    let plain = pages::decode_records(payload, |gpa, d| {
        check_span(gpa, d.len() as u64);
        let mut v = plain_pages.borrow_mut();
        v.extend(
            page_crcs(d)
                .into_iter()
                .enumerate()
                .map(|(i, c)| (gpa / PAGE + i as u64, c)),
        );
        Ok(())
    })
    .is_ok();
    assert_eq!(plain, zero_aware, "the plain decoder disagrees");
    let zero_crc = crc32fast::hash(&[0; PAGE_SIZE]);
    let expected: Vec<(u64, u32)> = ops
        .iter()
        .flat_map(|op| match op {
            Op::Data(gpa, crcs) | Op::Xor(gpa, crcs) => crcs
                .iter()
                .enumerate()
                .map(|(i, &c)| (gpa / PAGE + i as u64, c))
                .collect::<Vec<_>>(),
            Op::Zero(gpa, len) => (gpa / PAGE..(gpa + len) / PAGE)
                .map(|pfn| (pfn, zero_crc))
                .collect(),
        })
        .collect();
    assert_eq!(
        plain_pages.into_inner(),
        expected,
        "the plain decoder delivered other pages"
    );

    if full && !seen.model.touched.is_empty() {
        round_trip(ctl, &seen.model);
    }
}

/// Encodes the model's touched pages with a `MemoryEncoder` set up by `ctl`,
/// decodes the records into a fresh memory and compares.
fn round_trip(ctl: u8, want: &Model) {
    let compression = if ctl & 1 != 0 {
        Compression::Zstd {
            level: 1 + i32::from(ctl >> 4 & 3),
        }
    } else {
        Compression::None
    };
    let mut enc = MemoryEncoder::new(compression).expect("an encoder");
    enc.set_batching(ctl & 2 != 0);
    let mut got = Model::default();
    if ctl & 4 != 0 {
        // Send every page once with one byte changed, so the real version
        // can travel as XOR deltas against it.
        enc.set_delta_cache(Some(DeltaCache::new(64)));
        let base = encode(&mut enc, &want.touched, |pfn| {
            let mut p = want.page(pfn);
            p[0] ^= 0x5a;
            p
        });
        decode_into(&base, &mut got);
    }
    let out = encode(&mut enc, &want.touched, |pfn| want.page(pfn));
    decode_into(&out, &mut got);
    for &pfn in &want.touched {
        assert!(
            got.page(pfn) == want.page(pfn),
            "page {pfn:#x} differs after an encode/decode round trip ({compression:?}, ctl {ctl:#x})"
        );
    }
}

/// Encodes pages `pfns` (ascending), consecutive ones as one run.
fn encode(enc: &mut MemoryEncoder, pfns: &BTreeSet<u64>, page: impl Fn(u64) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut run: Vec<u8> = Vec::new();
    let mut first = 0;
    let mut next = None;
    for &pfn in pfns {
        if next != Some(pfn) && !run.is_empty() {
            enc.encode_run(first * PAGE, &run, &mut out)
                .expect("encode_run");
            run.clear();
        }
        if run.is_empty() {
            first = pfn;
        }
        run.extend_from_slice(&page(pfn));
        next = Some(pfn + 1);
    }
    if !run.is_empty() {
        enc.encode_run(first * PAGE, &run, &mut out)
            .expect("encode_run");
    }
    enc.flush(&mut out).expect("flush");
    out
}

fn decode_into(payload: &[u8], m: &mut Model) {
    let cell = RefCell::new(m);
    pages::decode_records_with_deltas(
        payload,
        |gpa, d| {
            cell.borrow_mut().apply(gpa, d, false);
            Ok(())
        },
        |gpa, len| {
            cell.borrow_mut().zero(gpa, len);
            Ok(())
        },
        |gpa, d| {
            cell.borrow_mut().apply(gpa, d, true);
            Ok(())
        },
    )
    .expect("records written by MemoryEncoder decode");
}
