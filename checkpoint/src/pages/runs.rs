//! `XorRuns` records: pages whose previous version the reader holds, sent as
//! the runs of 8-byte words that changed, XOR-coded, with no entropy coder.
//!
//! A sparse rewrite of a page (a few words) costs one pass over the new and
//! the cached page on the sender, and a few word writes on the receiver,
//! where an `XorZstd`/`BatchZstd` delta costs a 4 KiB XOR buffer, a zstd
//! frame and its decompression. `docs/checkpoint-format.md` has the layout:
//! per page, `addr: u64, nruns: u16`, then per run `first: u16, nwords: u16`
//! and `nwords` XOR words, all little endian.

use super::decode::{bad, check_entry, XorSink};
use super::PAGE_SIZE;
use crate::error::Result;

/// 8-byte words in a page.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;
/// Most runs one page can have (changed and unchanged words alternating).
pub const MAX_RUNS: usize = PAGE_WORDS / 2;
/// Bytes of a page entry's head (`addr`, `nruns`).
const ENTRY_HEAD: usize = 10;
/// Bytes of a run's head (`first`, `nwords`).
const RUN_HEAD: usize = 4;
/// The largest entry a page can have: every run head and every word.
pub const MAX_ENTRY_BYTES: usize = ENTRY_HEAD + MAX_RUNS * RUN_HEAD + PAGE_SIZE;

fn word(p: &[u8], w: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[w * 8..w * 8 + 8]);
    u64::from_le_bytes(b)
}

/// Whether the 8 words from `w` (a multiple of 8) are the same in `a` and
/// `b`: one OR of XORs, which the compiler vectorises.
fn block_same(a: &[u8], b: &[u8], w: usize) -> bool {
    let (a, b) = (&a[w * 8..w * 8 + 64], &b[w * 8..w * 8 + 64]);
    a.chunks_exact(8)
        .zip(b.chunks_exact(8))
        .fold(0u64, |acc, (x, y)| {
            let (mut p, mut q) = ([0u8; 8], [0u8; 8]);
            p.copy_from_slice(x);
            q.copy_from_slice(y);
            acc | (u64::from_ne_bytes(p) ^ u64::from_ne_bytes(q))
        })
        == 0
}

/// Appends the entry of the page at `addr` to `out`: the runs of words in
/// which `new` differs from `old`, XOR-coded, and makes `old` equal to `new`
/// word by word as it goes. Returns `false`, with `out` as it was, when the
/// entry would pass `limit` bytes; `old` is then only partly updated, so
/// the caller must overwrite it with `new`. Both pages are [`PAGE_SIZE`]
/// bytes.
pub(super) fn encode_page(
    addr: u64,
    new: &[u8],
    old: &mut [u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> bool {
    let (new, old) = (&new[..PAGE_SIZE], &mut old[..PAGE_SIZE]);
    let mark = out.len();
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    let mut nruns = 0u16;
    let mut w = 0;
    while w < PAGE_WORDS {
        if w % 8 == 0 && block_same(new, old, w) {
            w += 8;
            continue;
        }
        let (n, o) = (word(new, w), word(old, w));
        if n == o {
            w += 1;
            continue;
        }
        let head = out.len();
        out.extend_from_slice(&[0; RUN_HEAD]);
        let first = w;
        // The words this entry may still take within `limit`: a page
        // rewritten whole (random data) stops here after a quarter of its
        // words instead of coding all of them only to be refused.
        let room = (limit + mark).saturating_sub(out.len()) / 8;
        while w < PAGE_WORDS {
            let (n, o) = (word(new, w), word(old, w));
            if n == o {
                break;
            }
            if w - first == room {
                out.truncate(mark);
                return false;
            }
            out.extend_from_slice(&(n ^ o).to_le_bytes());
            old[w * 8..w * 8 + 8].copy_from_slice(&n.to_le_bytes());
            w += 1;
        }
        out[head..head + 2].copy_from_slice(&(first as u16).to_le_bytes());
        out[head + 2..head + 4].copy_from_slice(&((w - first) as u16).to_le_bytes());
        nruns += 1;
        if out.len() - mark > limit {
            out.truncate(mark);
            return false;
        }
    }
    out[mark + 8..mark + 10].copy_from_slice(&nruns.to_le_bytes());
    true
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([d[at], d[at + 1]])
}

/// Walks the `npages` entries of an `XorRuns` record's `data`, checking
/// every bound before reading, and calls `run(gpa, xor_bytes)` for each run
/// when `deliver` is set. `off` (the record's offset) and `gpa` (its first
/// page) name the record in errors. Checks: each entry's head and runs are
/// complete; addresses are page aligned, do not overflow, and the first is
/// `gpa`; at most [`MAX_RUNS`] runs per page; runs are non-empty, ascending,
/// do not overlap and stay inside the page; the entries fill `data` exactly.
pub(super) fn walk(
    data: &[u8],
    npages: usize,
    gpa: u64,
    off: usize,
    mut run: XorSink<'_>,
) -> Result<()> {
    let mut p = 0usize;
    for i in 0..npages {
        if data.len() - p < ENTRY_HEAD {
            return Err(bad(
                off,
                format!(
                    "XorRuns entry {i} needs {ENTRY_HEAD} bytes, only {} left",
                    data.len() - p
                ),
            ));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&data[p..p + 8]);
        let addr = u64::from_le_bytes(a);
        let nruns = usize::from(u16_at(data, p + 8));
        p += ENTRY_HEAD;
        check_entry("XorRuns", off, i, addr, addr, gpa)?;
        if nruns > MAX_RUNS {
            return Err(bad(
                off,
                format!("XorRuns entry {i} has {nruns} runs, more than a page's {MAX_RUNS}"),
            ));
        }
        let mut end = 0usize;
        for r in 0..nruns {
            if data.len() - p < RUN_HEAD {
                return Err(bad(
                    off,
                    format!("XorRuns entry {i}: run {r}'s head is cut short"),
                ));
            }
            let first = usize::from(u16_at(data, p));
            let n = usize::from(u16_at(data, p + 2));
            p += RUN_HEAD;
            if n == 0 || first < end || first + n > PAGE_WORDS {
                return Err(bad(
                    off,
                    format!(
                        "XorRuns entry {i}: run {r} (words {first}..{}) is empty, overlaps the \
                         previous run or leaves the page's {PAGE_WORDS} words",
                        first + n
                    ),
                ));
            }
            if data.len() - p < n * 8 {
                return Err(bad(
                    off,
                    format!(
                        "XorRuns entry {i}: run {r} needs {} bytes, only {} left",
                        n * 8,
                        data.len() - p
                    ),
                ));
            }
            if let Some(f) = run.as_mut() {
                f(addr + (first * 8) as u64, &data[p..p + n * 8])?;
            }
            p += n * 8;
            end = first + n;
        }
    }
    if p != data.len() {
        return Err(bad(
            off,
            format!(
                "XorRuns record has {} bytes after its {npages} entries",
                data.len() - p
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(data: &[u8], npages: usize, gpa: u64) -> Vec<(u64, Vec<u8>)> {
        let mut v = Vec::new();
        let mut f = |g: u64, b: &[u8]| {
            v.push((g, b.to_vec()));
            Ok(())
        };
        walk(data, npages, gpa, 0, None).unwrap();
        walk(data, npages, gpa, 0, Some(&mut f)).unwrap();
        v
    }

    #[test]
    fn changed_words_become_runs_and_old_follows_new() {
        let old0: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 31) as u8).collect();
        let mut new = old0.clone();
        // Words 0, 1 (one run), 9 (alone, in the second block), 511 (last).
        for w in [0usize, 1, 9, 511] {
            new[w * 8 + 3] ^= 0x5a;
        }
        let mut old = old0.clone();
        let mut out = Vec::new();
        assert!(encode_page(0x7000, &new, &mut old, &mut out, 4096));
        assert_eq!(old, new);
        assert_eq!(out.len(), ENTRY_HEAD + 3 * RUN_HEAD + 4 * 8);
        let runs = runs_of(&out, 1, 0x7000);
        let at: Vec<(u64, usize)> = runs.iter().map(|(g, b)| (*g, b.len())).collect();
        assert_eq!(at, [(0x7000, 16), (0x7000 + 72, 8), (0x7000 + 4088, 8)]);
        // Applying the runs to the old page gives the new one.
        let mut page = old0;
        for (g, b) in runs {
            let o = (g - 0x7000) as usize;
            page[o..o + b.len()]
                .iter_mut()
                .zip(&b)
                .for_each(|(p, x)| *p ^= x);
        }
        assert_eq!(page, new);
    }

    #[test]
    fn an_unchanged_page_has_no_runs_and_a_big_change_is_refused() {
        let page = vec![7u8; PAGE_SIZE];
        let mut old = page.clone();
        let mut out = vec![1, 2, 3];
        assert!(encode_page(0, &page, &mut old, &mut out, 1024));
        assert_eq!(out.len(), 3 + ENTRY_HEAD);
        assert!(runs_of(&out[3..], 1, 0).is_empty());
        // Every other word changed: 256 runs, far over 1 KiB.
        let mut new = page.clone();
        for w in (0..PAGE_WORDS).step_by(2) {
            new[w * 8] = 0;
        }
        let mut out = vec![9];
        assert!(!encode_page(0, &new, &mut old, &mut out, 1024));
        assert_eq!(out, [9]);
        // With room, the same page is 256 runs, the most a page can have.
        let mut old = page.clone();
        assert!(encode_page(0, &new, &mut old, &mut out, 8192));
        assert_eq!(runs_of(&out[1..], 1, 0).len(), MAX_RUNS);
    }

    /// The early stop of a long run changes nothing: for any page and any
    /// limit, the entry is refused exactly when its full encoding is longer
    /// than the limit, and is otherwise the full encoding.
    #[test]
    fn an_entry_is_refused_exactly_when_its_full_encoding_passes_the_limit() {
        let mut next = super::super::test_xorshift(0x2545_f491_4f6c_dd1d);
        for case in 0..2_000 {
            let old0: Vec<u8> = (0..PAGE_SIZE).map(|_| next() as u8).collect();
            let mut new = old0.clone();
            // From one changed word to all of them, in runs of any length.
            let changes = 1 + (next() % 600) as usize;
            for _ in 0..changes {
                let (w, len) = ((next() % 512) as usize, 1 + (next() % 64) as usize);
                for x in w..(w + len).min(PAGE_WORDS) {
                    new[x * 8] ^= 1 + (next() % 255) as u8;
                }
            }
            let mut full = Vec::new();
            assert!(encode_page(
                0x1000,
                &new,
                &mut old0.clone(),
                &mut full,
                usize::MAX
            ));
            let limit = (next() % (full.len() as u64 + 64)) as usize;
            let mut out = vec![0xee; 3];
            let ok = encode_page(0x1000, &new, &mut old0.clone(), &mut out, limit);
            assert_eq!(
                ok,
                full.len() <= limit,
                "case {case}: {} bytes, limit {limit}",
                full.len()
            );
            if ok {
                assert_eq!(&out[3..], &full[..], "case {case}");
            } else {
                assert_eq!(out, [0xee; 3], "case {case}: a refused entry left bytes");
            }
        }
    }

    #[test]
    fn malformed_records_are_refused_with_the_reason() {
        let err = |d: &[u8], n: usize| walk(d, n, 0, 17, None).unwrap_err().to_string();
        let mut good = Vec::new();
        let mut old = vec![0u8; PAGE_SIZE];
        let mut new = old.clone();
        new[80] = 1;
        assert!(encode_page(0, &new, &mut old, &mut good, 4096));
        assert!(err(&good[..5], 1).contains("needs 10 bytes"));
        assert!(err(&good[..12], 1).contains("head is cut short"));
        assert!(err(&good[..good.len() - 1], 1).contains("needs 8 bytes"));
        assert!(err(&[good.clone(), vec![0]].concat(), 1).contains("after its 1 entries"));
        assert!(err(&good, 2).contains("entry 1 needs"));
        let mut b = good.clone();
        b[0] = 8;
        assert!(err(&b, 1).contains("not a page address"));
        let mut b = good.clone();
        b[1] = 0x10;
        assert!(err(&b, 1).contains("the record says 0x0"));
        let mut b = good.clone();
        b[12..14].copy_from_slice(&0u16.to_le_bytes()); // nwords 0
        b[10..12].copy_from_slice(&510u16.to_le_bytes());
        assert!(err(&b, 1).contains("is empty"));
        let mut b = good.clone();
        b[10..12].copy_from_slice(&512u16.to_le_bytes()); // first past the page
        assert!(err(&b, 1).contains("leaves the page"));
        let mut b = good.clone();
        b[8..10].copy_from_slice(&257u16.to_le_bytes());
        assert!(err(&b, 1).contains("257 runs"));
        // Two runs, the second overlapping the first.
        let mut b = good[..10].to_vec();
        b[8..10].copy_from_slice(&2u16.to_le_bytes());
        for first in [4u16, 4] {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&[0; 8]);
        }
        assert!(err(&b, 1).contains("overlaps"));
    }
}
