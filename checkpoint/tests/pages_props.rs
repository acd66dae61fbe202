//! Page-record round trips and refusal of corrupt records.

use checkpoint::pages::{MAX_RECORD_PAGES, RECORD_HEADER_LEN};
use checkpoint::{
    decode_records, CheckpointError, Compression, Encoding, MemoryEncoder, PAGE_SIZE,
};
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};

#[derive(Clone, Debug)]
enum PageKind {
    Zero,
    Random(u64),
    /// Repeating short pattern: compresses well.
    Pattern(u8, u8),
    /// One non-zero byte somewhere.
    Sparse(u16, u8),
}

fn page_kind() -> impl Strategy<Value = PageKind> {
    prop_oneof![
        3 => Just(PageKind::Zero),
        2 => any::<u64>().prop_map(PageKind::Random),
        2 => (any::<u8>(), 1u8..16).prop_map(|(b, p)| PageKind::Pattern(b, p)),
        1 => (0u16..PAGE_SIZE as u16, 1u8..=255).prop_map(|(i, v)| PageKind::Sparse(i, v)),
    ]
}

fn make_pages(kinds: &[PageKind]) -> Vec<u8> {
    let mut out = vec![0u8; kinds.len() * PAGE_SIZE];
    for (k, page) in kinds.iter().zip(out.chunks_exact_mut(PAGE_SIZE)) {
        match *k {
            PageKind::Zero => {}
            PageKind::Random(seed) => rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(page),
            PageKind::Pattern(b, period) => {
                for (i, x) in page.iter_mut().enumerate() {
                    *x = b.wrapping_add((i % period as usize) as u8) | 1;
                }
            }
            PageKind::Sparse(i, v) => page[i as usize] = v,
        }
    }
    out
}

/// Decodes `payload` into a copy of guest memory starting at `base`.
fn apply(payload: &[u8], base: u64, mem: &mut [u8]) -> Result<(), CheckpointError> {
    decode_records(payload, |gpa, bytes| {
        assert_eq!(gpa % PAGE_SIZE as u64, 0);
        assert!(!bytes.is_empty());
        assert_eq!(bytes.len() % PAGE_SIZE, 0);
        let off = (gpa - base) as usize;
        mem[off..off + bytes.len()].copy_from_slice(bytes);
        Ok(())
    })
}

fn record(gpa: u64, npages: u32, enc: u8, data_len: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&gpa.to_le_bytes());
    v.extend_from_slice(&npages.to_le_bytes());
    v.push(enc);
    v.extend_from_slice(&data_len.to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn zero_record(gpa: u64) -> Vec<u8> {
    record(gpa, 1, Encoding::Zero as u8, 0, &[])
}

fn bad_record_err(payload: &[u8]) -> (usize, String) {
    match decode_records(payload, |_, _| Ok(())) {
        Err(CheckpointError::BadRecord { offset, reason }) => (offset, reason),
        other => panic!("expected BadRecord, got {other:?}"),
    }
}

#[test]
fn corrupt_records_are_refused_with_offset_and_reason() {
    let valid = zero_record(0);
    let page = vec![7u8; PAGE_SIZE];
    let squeezed = zstd::bulk::compress(&[0u8; PAGE_SIZE], 1).unwrap();
    let two_pages = zstd::bulk::compress(&[1u8; 2 * PAGE_SIZE], 1).unwrap();
    let bomb = zstd::bulk::compress(&vec![1u8; 8 << 20], 3).unwrap();
    let raw = Encoding::Raw as u8;
    let zero = Encoding::Zero as u8;
    let zst = Encoding::Zstd as u8;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            valid[..10].to_vec(),
            "record header needs 17 bytes, only 10 left",
        ),
        (
            record(0x1001, 1, zero, 0, &[]),
            "gpa 0x1001 is not page aligned",
        ),
        (record(0, 0, zero, 0, &[]), "npages is 0"),
        (
            record(0, MAX_RECORD_PAGES + 1, zero, 0, &[]),
            "exceeds the limit",
        ),
        (
            record(u64::MAX - 4095, 2, zero, 0, &[]),
            "overflow the address space",
        ),
        (record(0, 1, 9, 0, &[]), "unknown memory record encoding 9"),
        (record(0, 1, zero, 5, &[1; 5]), "Zero record has data_len 5"),
        (
            record(0, 1, raw, PAGE_SIZE as u32, &page[..100]),
            "data_len 4096 exceeds the 100 bytes left",
        ),
        (
            record(0, 1, raw, 100, &page[..100]),
            "Raw record has data_len 100, expected 4096",
        ),
        (
            record(0, 2, raw, PAGE_SIZE as u32, &page),
            "Raw record has data_len 4096, expected 8192",
        ),
        (
            record(0, 2, zst, squeezed.len() as u32, &squeezed),
            "decompresses to 4096 bytes, expected 8192",
        ),
        (
            record(0, 1, zst, two_pages.len() as u32, &two_pages),
            "does not decompress into 4096 bytes",
        ),
        (
            record(0, 1, zst, bomb.len() as u32, &bomb),
            "does not decompress into 4096 bytes",
        ),
        (record(0, 1, zst, 4, b"junk"), "does not decompress"),
        (
            record(0, 1, zst, 0, &[]),
            "decompresses to 0 bytes, expected 4096",
        ),
    ];
    for (rec, want) in cases {
        // Behind one valid record, so the offset must be reported as 17.
        let mut payload = valid.clone();
        payload.extend_from_slice(&rec);
        let (offset, reason) = bad_record_err(&payload);
        assert_eq!(offset, RECORD_HEADER_LEN, "{want}");
        let msg = CheckpointError::BadRecord {
            offset,
            reason: reason.clone(),
        }
        .to_string();
        assert!(msg.contains(want), "got {msg:?}, want {want:?}");
        assert!(msg.starts_with("invalid memory record at offset 17: "));
    }
}

#[test]
fn valid_hand_built_records_decode() {
    let squeezed = zstd::bulk::compress(&[5u8; 2 * PAGE_SIZE], 1).unwrap();
    let mut payload = record(
        0x2000,
        2,
        Encoding::Zstd as u8,
        squeezed.len() as u32,
        &squeezed,
    );
    payload.extend(record(
        0,
        1,
        Encoding::Raw as u8,
        PAGE_SIZE as u32,
        &[9u8; PAGE_SIZE],
    ));
    payload.extend(zero_record(0x1000));
    let mut mem = vec![0xeeu8; 4 * PAGE_SIZE];
    apply(&payload, 0, &mut mem).unwrap();
    assert!(mem[..PAGE_SIZE].iter().all(|&b| b == 9));
    assert!(mem[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 0));
    assert!(mem[2 * PAGE_SIZE..].iter().all(|&b| b == 5));
}

#[test]
fn zstd_never_loses_to_raw_and_stats_add_up() {
    let kinds: Vec<_> = (0..64)
        .map(|i| match i % 4 {
            0 => PageKind::Zero,
            1 => PageKind::Random(i),
            2 => PageKind::Pattern(i as u8, 3),
            _ => PageKind::Sparse(i as u16 * 7, 1),
        })
        .collect();
    let pages = make_pages(&kinds);
    let mut raw_enc = MemoryEncoder::new(Compression::None).unwrap();
    let mut zstd_enc = MemoryEncoder::new(Compression::Zstd { level: 3 }).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    raw_enc.encode_run(0, &pages, &mut a).unwrap();
    zstd_enc.encode_run(0, &pages, &mut b).unwrap();
    assert!(b.len() < a.len() / 2, "zstd {} vs raw {}", b.len(), a.len());
    let s = zstd_enc.stats();
    assert_eq!(s.zero_pages, 16);
    assert!(s.compressed_pages > 0);
    assert_eq!(s.zero_pages + s.raw_pages + s.compressed_pages, 64);
    assert!(s.ratio() < 0.5);
    let mut total = *raw_enc.stats();
    total.merge(s);
    assert_eq!(total.raw_bytes, 2 * pages.len() as u64);
    assert_eq!(total.encoded_bytes, (a.len() + b.len()) as u64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn encode_decode_round_trip(
        kinds in prop::collection::vec(page_kind(), 0..80),
        base_page in 0u64..(1 << 40),
        zstd in any::<bool>(),
        splits in prop::collection::vec(0usize..80, 0..4),
    ) {
        let pages = make_pages(&kinds);
        let base = base_page * PAGE_SIZE as u64;
        let compress = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
        let mut enc = MemoryEncoder::new(compress).unwrap();
        let mut payload = Vec::new();

        // Encode as several consecutive runs.
        let mut cuts: Vec<usize> = splits.into_iter().map(|s| s.min(kinds.len())).collect();
        cuts.push(0);
        cuts.push(kinds.len());
        cuts.sort_unstable();
        for w in cuts.windows(2) {
            let bytes = &pages[w[0] * PAGE_SIZE..w[1] * PAGE_SIZE];
            enc.encode_run(base + (w[0] * PAGE_SIZE) as u64, bytes, &mut payload).unwrap();
        }

        let mut mem = vec![0xa5u8; pages.len()];
        apply(&payload, base, &mut mem).unwrap();
        prop_assert!(mem == pages, "decoded memory differs");

        let s = *enc.stats();
        let zeros = pages.chunks_exact(PAGE_SIZE).filter(|p| p.iter().all(|&b| b == 0)).count();
        prop_assert_eq!(s.zero_pages, zeros as u64);
        prop_assert_eq!(s.zero_pages + s.raw_pages + s.compressed_pages, kinds.len() as u64);
        prop_assert_eq!(s.raw_bytes, pages.len() as u64);
        prop_assert_eq!(s.encoded_bytes, payload.len() as u64);
        if !zstd {
            prop_assert_eq!(s.compressed_pages, 0);
        }
        // Never larger than storing every non-zero page raw.
        let bound = (kinds.len() - zeros) * PAGE_SIZE + s.records as usize * RECORD_HEADER_LEN;
        prop_assert!(payload.len() <= bound);
    }

    #[test]
    fn arbitrary_bytes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..200)) {
        match decode_records(&payload, |_, _| Ok(())) {
            Ok(()) | Err(CheckpointError::BadRecord { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }

    #[test]
    fn mutated_payloads_are_refused_or_decode_cleanly(
        kinds in prop::collection::vec(page_kind(), 1..12),
        pos_frac in 0.0f64..1.0,
        mask in 1u8..=255,
    ) {
        let pages = make_pages(&kinds);
        let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
        let mut payload = Vec::new();
        enc.encode_run(0, &pages, &mut payload).unwrap();
        let pos = (payload.len() as f64 * pos_frac) as usize;
        prop_assume!(pos < payload.len());
        payload[pos] ^= mask;
        // Without the section CRC a flip may still decode (e.g. in raw data);
        // it must never panic, deliver out-of-contract slices, or fail with
        // anything but BadRecord.
        let r = decode_records(&payload, |gpa, b| {
            assert_eq!(gpa % PAGE_SIZE as u64, 0);
            assert!(!b.is_empty());
            assert_eq!(b.len() % PAGE_SIZE, 0);
            assert!(b.len() <= MAX_RECORD_PAGES as usize * PAGE_SIZE);
            Ok(())
        });
        match r {
            Ok(()) | Err(CheckpointError::BadRecord { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
        }
    }
}
