//! Unit tests of the page records.
use super::decode::ZERO_CHUNK_PAGES;
use super::*;

fn collect(payload: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut v = Vec::new();
    decode_records(payload, |gpa, b| {
        v.push((gpa, b.to_vec()));
        Ok(())
    })?;
    Ok(v)
}

#[test]
fn zero_detection() {
    let mut p = vec![0u8; PAGE_SIZE];
    assert!(is_zero(&p));
    for i in [0, 7, 8, 63, 64, 4095] {
        p[i] = 1;
        assert!(!is_zero(&p), "byte {i}");
        p[i] = 0;
    }
    assert!(is_zero(&[]));
    assert!(!is_zero(&[0, 0, 0, 1]));
}

#[test]
fn zero_pages_coalesce_into_one_record() {
    let mut enc = MemoryEncoder::new(Compression::None).unwrap();
    let mut out = Vec::new();
    enc.encode_run(0x10_0000, &vec![0u8; 5 * PAGE_SIZE], &mut out)
        .unwrap();
    assert_eq!(out.len(), RECORD_HEADER_LEN);
    assert_eq!(&out[0..8], &0x10_0000u64.to_le_bytes());
    assert_eq!(&out[8..12], &5u32.to_le_bytes());
    assert_eq!(out[12], Encoding::Zero as u8);
    assert_eq!(&out[13..17], &[0, 0, 0, 0]);
    assert_eq!(enc.stats().zero_pages, 5);
    assert_eq!(enc.stats().records, 1);
}

#[test]
fn mixed_run_layout() {
    // data, zero, zero, data
    let mut pages = vec![0u8; 4 * PAGE_SIZE];
    pages[10] = 1;
    pages[3 * PAGE_SIZE + 5] = 2;
    let mut enc = MemoryEncoder::new(Compression::None).unwrap();
    let mut out = Vec::new();
    enc.encode_run(0, &pages, &mut out).unwrap();
    let recs = collect(&out).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0], (0, pages[..PAGE_SIZE].to_vec()));
    assert_eq!(recs[1], (PAGE_SIZE as u64, vec![0; 2 * PAGE_SIZE]));
    assert_eq!(
        recs[2],
        (3 * PAGE_SIZE as u64, pages[3 * PAGE_SIZE..].to_vec())
    );
    let s = enc.stats();
    assert_eq!((s.raw_pages, s.zero_pages, s.compressed_pages), (2, 2, 0));
    assert_eq!(s.raw_bytes, pages.len() as u64);
    assert_eq!(s.encoded_bytes, out.len() as u64);
}

#[test]
fn compression_only_when_it_shrinks() {
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
    let mut out = Vec::new();
    let compressible = vec![0x5au8; 2 * PAGE_SIZE];
    enc.encode_run(0, &compressible, &mut out).unwrap();
    assert_eq!(out[12], Encoding::Zstd as u8);
    assert!(out.len() < PAGE_SIZE);

    // Pseudo-random bytes do not compress: stored Raw.
    let mut x = super::test_xorshift(0x9E37_79B9_7F4A_7C15);
    let noisy: Vec<u8> = (0..PAGE_SIZE).map(|_| x() as u8).collect();
    let mut out2 = Vec::new();
    enc.encode_run(0x2000, &noisy, &mut out2).unwrap();
    assert_eq!(out2[12], Encoding::Raw as u8);
    assert_eq!(out2.len(), RECORD_HEADER_LEN + PAGE_SIZE);
    assert_eq!(collect(&out2).unwrap(), vec![(0x2000, noisy)]);
    let s = enc.take_stats();
    assert_eq!((s.compressed_pages, s.raw_pages), (2, 1));
    assert_eq!(enc.stats(), &MemoryStats::default());
}

#[test]
fn data_records_are_bounded() {
    let pages = vec![1u8; (DATA_RECORD_PAGES + 3) * PAGE_SIZE];
    let mut enc = MemoryEncoder::new(Compression::None).unwrap();
    let mut out = Vec::new();
    enc.encode_run(0, &pages, &mut out).unwrap();
    let recs = collect(&out).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].1.len(), DATA_RECORD_PAGES * PAGE_SIZE);
    assert_eq!(recs[1].0, (DATA_RECORD_PAGES * PAGE_SIZE) as u64);
}

#[test]
fn encode_run_rejects_bad_arguments() {
    let mut enc = MemoryEncoder::new(Compression::None).unwrap();
    let mut out = Vec::new();
    let e = enc.encode_run(1, &[0; PAGE_SIZE], &mut out).unwrap_err();
    assert!(e.to_string().contains("not page aligned"), "{e}");
    let e = enc.encode_run(0, &[0; 100], &mut out).unwrap_err();
    assert!(e.to_string().contains("whole number of pages"), "{e}");
    let e = enc
        .encode_run(u64::MAX - 4095, &[0; PAGE_SIZE], &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    assert!(out.is_empty());
    enc.encode_run(0, &[], &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn large_zero_record_is_delivered_in_bounded_pieces() {
    let mut out = Vec::new();
    push_record_header(&mut out, 0x1000, MAX_RECORD_PAGES, Encoding::Zero, 0);
    let mut total = 0usize;
    let mut next = 0x1000u64;
    decode_records(&out, |gpa, b| {
        assert_eq!(gpa, next);
        assert!(b.len() <= ZERO_CHUNK_PAGES * PAGE_SIZE);
        assert!(is_zero(b));
        next += b.len() as u64;
        total += b.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(total, MAX_RECORD_PAGES as usize * PAGE_SIZE);
}

#[test]
fn sink_errors_propagate() {
    let mut out = Vec::new();
    push_record_header(&mut out, 0, 1, Encoding::Zero, 0);
    let e = decode_records(&out, |_, _| {
        Err(CheckpointError::InvalidArgument("x".into()))
    })
    .unwrap_err();
    assert!(matches!(e, CheckpointError::InvalidArgument(_)));
}

#[test]
fn incompressible_data_stops_compression_attempts_and_compressible_data_resumes_them() {
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
    let mut x = super::test_xorshift(0x1234_5678_9abc_def1);
    let random: Vec<u8> = (0..DATA_RECORD_PAGES * PAGE_SIZE * 10)
        .map(|_| x() as u8)
        .collect();
    let mut out = Vec::new();
    enc.encode_run(0, &random, &mut out).unwrap();
    let s = enc.take_stats();
    assert_eq!(s.records, 10);
    assert_eq!(
        s.skipped_records,
        10 - u64::from(ADAPTIVE_MISSES),
        "attempts did not stop"
    );
    // Decodes back exactly.
    let mut back = Vec::new();
    decode_records(&out, |_, b| {
        back.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(back, random);
    // After the skip window, compressible data is compressed again.
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog. "
        .iter()
        .copied()
        .cycle()
        .take(DATA_RECORD_PAGES * PAGE_SIZE * 70)
        .collect();
    let mut out = Vec::new();
    enc.encode_run(0, &text, &mut out).unwrap();
    let s = enc.take_stats();
    // The rest of the skip window first, then every record compressed.
    let left = u64::from(ADAPTIVE_SKIP) - (10 - u64::from(ADAPTIVE_MISSES));
    assert_eq!(s.skipped_records, left);
    assert_eq!(
        s.compressed_pages,
        (70 - left) * DATA_RECORD_PAGES as u64,
        "compression never resumed"
    );
}

#[test]
fn known_zero_runs_are_markers_and_reach_a_zero_aware_sink_whole() {
    let mut enc = MemoryEncoder::new(Compression::None).unwrap();
    let mut out = Vec::new();
    let big = u64::from(MAX_RECORD_PAGES) * 2 + 5;
    enc.encode_zero_run(0x10_0000, big, &mut out).unwrap();
    enc.encode_run(
        0x10_0000 + big * PAGE_SIZE as u64,
        &[7u8; PAGE_SIZE],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        out.len(),
        4 * RECORD_HEADER_LEN + PAGE_SIZE,
        "zero runs carry no data"
    );
    let (mut zeros, mut data) = (Vec::new(), Vec::new());
    decode_records_zero_aware(
        &out,
        |gpa, b| {
            data.push((gpa, b.len()));
            Ok(())
        },
        |gpa, n| {
            zeros.push((gpa, n));
            Ok(())
        },
    )
    .unwrap();
    let total: u64 = zeros.iter().map(|z| z.1).sum();
    assert_eq!(total, big * PAGE_SIZE as u64);
    assert_eq!(zeros.len(), 3);
    assert_eq!(data, vec![(0x10_0000 + big * PAGE_SIZE as u64, PAGE_SIZE)]);
    assert!(enc.encode_zero_run(3, 1, &mut out).is_err());
}

#[test]
fn malformed_batch_records_are_refused_with_their_offset() {
    let page = vec![7u8; PAGE_SIZE];
    let batch = |gpa: u64, entries: &[u64], body: &[u8]| {
        let mut out = Vec::new();
        let data_len = entries.len() * 8 + body.len();
        push_record_header(
            &mut out,
            gpa,
            entries.len() as u32,
            Encoding::Batch,
            data_len as u32,
        );
        for e in entries {
            out.extend_from_slice(&e.to_le_bytes());
        }
        out.extend_from_slice(body);
        out
    };
    // A good one delivers each page at its own address.
    let two = [page.clone(), page.clone()].concat();
    let got = collect(&batch(0x3000, &[0x3000, 0x9000], &two)).unwrap();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![0x3000, 0x9000]
    );
    let cases: [(Vec<u8>, &str); 4] = [
        (batch(0x3000, &[0x3004], &page), "not a page address"),
        (batch(0x4000, &[0x3000], &page), "but the record says"),
        (
            batch(0x3000, &[0x3000], &page[..100]),
            "page bytes, expected",
        ),
        (batch(0x3000, &[0x3001], &page), "XOR delta"),
    ];
    for (rec, want) in cases {
        match collect(&rec).unwrap_err() {
            CheckpointError::BadRecord { offset, reason } => {
                assert_eq!(offset, 0);
                assert!(reason.contains(want), "{reason} (wanted {want})");
            }
            e => panic!("unexpected {e}"),
        }
    }
    // Fewer bytes than the entries need.
    let mut short = Vec::new();
    push_record_header(&mut short, 0x3000, 4, Encoding::Batch, 8);
    short.extend_from_slice(&0x3000u64.to_le_bytes());
    assert!(collect(&short)
        .unwrap_err()
        .to_string()
        .contains("less than its 32 bytes of entries"));
}

/// Encodes 16 scattered pages (every other page from 0x3000) twice, the
/// second time with the same few words changed in each, with a delta cache
/// and batching; returns the pages before and after, and the second payload.
fn runs_payload(runs_zstd: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
    enc.set_batching(true);
    enc.set_delta_cache(Some(DeltaCache::new(64)));
    enc.set_runs_compression(runs_zstd);
    let old: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    let mut new = old.clone();
    new[8..16].copy_from_slice(&[1; 8]);
    new[4000] ^= 0xff;
    let mut out = Vec::new();
    for version in [&old, &new] {
        out.clear();
        for i in 0..16u64 {
            enc.encode_run(0x3000 + i * 0x2000, version, &mut out)
                .unwrap();
        }
        enc.flush(&mut out).unwrap();
    }
    assert_eq!(enc.stats().delta_pages, 16);
    (old, new, out)
}

/// Applies `payload`'s deltas to 16 copies of `page` (as `runs_payload`
/// lays them out) and returns them.
fn apply_with_deltas(page: &[u8], payload: &[u8]) -> Result<Vec<Vec<u8>>> {
    let cell = std::cell::RefCell::new(vec![page.to_vec(); 16]);
    decode_records_with_deltas(
        payload,
        |_, _| panic!("no whole pages expected"),
        |_, _| panic!("no zero pages expected"),
        |gpa, d| {
            let (i, at) = (((gpa - 0x3000) / 0x2000) as usize, (gpa % 0x1000) as usize);
            crate::delta::xor_in_place(&mut cell.borrow_mut()[i][at..at + d.len()], d);
            Ok(())
        },
    )?;
    Ok(cell.into_inner())
}

#[test]
fn sparse_rewrites_travel_as_xor_runs_with_or_without_zstd() {
    for (zstd, enc) in [(false, Encoding::XorRuns), (true, Encoding::XorRunsZstd)] {
        let (old, new, out) = runs_payload(zstd);
        assert_eq!(out[12], enc as u8, "runs compression {zstd}");
        let pages = apply_with_deltas(&old, &out).unwrap();
        assert!(pages.iter().all(|p| *p == new));
        // Readers without base pages refuse them, naming the encoding.
        let e = decode_records(&out, |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains(&format!("{enc:?} record of XOR deltas")), "{e}");
    }
}

#[test]
fn malformed_xor_runs_zstd_records_are_refused() {
    let (old, _, out) = runs_payload(true);
    assert_eq!(out[12], Encoding::XorRunsZstd as u8);
    let err = |p: &[u8]| apply_with_deltas(&old, p).unwrap_err().to_string();
    // A length past what one page's entry can be: refused before any
    // allocation or decompression.
    let mut b = out.clone();
    b[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(err(&b).contains("more than 16 pages can have"));
    // A length that disagrees with the frame.
    let mut b = out.clone();
    let n = u32::from_le_bytes(b[17..21].try_into().unwrap());
    b[17..21].copy_from_slice(&(n + 1).to_le_bytes());
    assert!(err(&b).contains("zstd data"));
    // No room for the length.
    let mut b = out[..19].to_vec();
    b[13..17].copy_from_slice(&2u32.to_le_bytes());
    assert!(err(&b).contains("has no length"));
}

#[test]
fn a_reused_decompression_buffer_still_caps_each_record() {
    // A big compressible record first: the thread's buffer grows to 1 MiB.
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
    let mut big = Vec::new();
    enc.encode_run(0, &vec![3u8; 256 * PAGE_SIZE], &mut big)
        .unwrap();
    assert_eq!(big[12], Encoding::Zstd as u8);
    decode_records(&big, |_, _| Ok(())).unwrap();
    // Then one page claimed, two pages in the frame: refused, not written
    // into the spare capacity.
    let frame = zstd::bulk::compress(&vec![1u8; 2 * PAGE_SIZE], 1).unwrap();
    let mut rec = Vec::new();
    push_record_header(&mut rec, 0, 1, Encoding::Zstd, frame.len() as u32);
    rec.extend_from_slice(&frame);
    let e = decode_records(&rec, |_, _| Ok(())).unwrap_err().to_string();
    assert!(e.contains("does not decompress into 4096 bytes"), "{e}");
}
