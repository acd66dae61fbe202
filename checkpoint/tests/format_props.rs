//! Container round trips and refusal of every kind of damage.

mod common;

use checkpoint::format::Integrity;
use checkpoint::format::{END_PAYLOAD_LEN, HEADER_LEN, SECTION_HEADER_LEN};
use checkpoint::verify::{verify_slice_with, verify_with};
use checkpoint::{
    CheckpointError, CheckpointKind, CheckpointReader, Fingerprint, Header, Limits, SectionId,
    FORMAT_VERSION,
};
use common::{fp, kind, read_all, write, Trickle};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Any valid section list: each non-repeatable id at most once, Memory any
/// number of times, in any order.
fn sections() -> impl Strategy<Value = Vec<(SectionId, Vec<u8>)>> {
    (
        prop::collection::vec(prop::option::of(bytes(64)), 5),
        prop::collection::vec(bytes(300), 0..6),
    )
        .prop_map(|(singles, mems)| {
            let ids = [
                SectionId::Config,
                SectionId::Vcpus,
                SectionId::Vm,
                SectionId::Devices,
                SectionId::Console,
            ];
            let mut v: Vec<_> = ids
                .into_iter()
                .zip(singles)
                .filter_map(|(id, p)| p.map(|p| (id, p)))
                .collect();
            v.extend(mems.into_iter().map(|p| (SectionId::Memory, p)));
            v
        })
        .prop_shuffle()
}

fn header() -> impl Strategy<Value = Header> {
    (any::<bool>(), 1u64..u64::MAX, any::<[u8; 32]>()).prop_map(|(full, seq, f)| {
        let f = Fingerprint::from_bytes(f);
        if full {
            Header::full(seq, f)
        } else {
            Header::incremental(seq, seq / 2, f)
        }
    })
}

/// A small checkpoint with every kind of section.
fn sample() -> (Vec<u8>, Vec<(SectionId, Vec<u8>)>) {
    let sections = vec![
        (SectionId::Config, b"config".to_vec()),
        (SectionId::Vcpus, vec![1; 40]),
        (SectionId::Memory, vec![2; 100]),
        (SectionId::Vm, Vec::new()),
        (SectionId::Memory, vec![3; 7]),
        (SectionId::Console, 1234u64.to_le_bytes().to_vec()),
    ];
    (write(&Header::full(9, fp()), &sections), sections)
}

/// Which error kinds are right for damage at byte `pos` of a checkpoint
/// made of `sections` (plus End).
fn expected_kinds(sections: &[(SectionId, Vec<u8>)], pos: usize) -> &'static [&'static str] {
    if pos < 8 {
        return &["BadMagic"];
    }
    if pos < 12 {
        return &["UnsupportedVersion"];
    }
    if pos < HEADER_LEN {
        return &["HeaderChecksum"];
    }
    let mut start = HEADER_LEN;
    let lens = sections
        .iter()
        .map(|(id, p)| (*id, p.len()))
        .chain([(SectionId::End, END_PAYLOAD_LEN)]);
    for (id, len) in lens {
        let end = start + SECTION_HEADER_LEN + len;
        if pos < end {
            let off = pos - start;
            return match off {
                0..=3 => &["UnknownSection", "SectionChecksum"],
                4..=11 if id == SectionId::End => &["EndMismatch"],
                4..=11 => &["SectionTooLarge", "Truncated", "SectionChecksum"],
                _ => &["SectionChecksum"],
            };
        }
        start = end;
    }
    unreachable!("position {pos} beyond the checkpoint")
}

fn assert_flip_refused(bytes: &[u8], sections: &[(SectionId, Vec<u8>)], pos: usize, mask: u8) {
    let mut damaged = bytes.to_vec();
    damaged[pos] ^= mask;
    let limits = Limits {
        max_section_len: 1 << 20,
        max_sections: 100,
    };
    let err = read_all(&damaged[..], &limits, None)
        .expect_err(&format!("flip {mask:#x} at {pos} accepted"));
    let want = expected_kinds(sections, pos);
    assert!(
        want.contains(&kind(&err)),
        "flip {mask:#x} at byte {pos}: got {err} ({}), want one of {want:?}",
        kind(&err)
    );
}

#[test]
fn every_single_byte_flip_is_refused_with_the_right_error() {
    let (bytes, sections) = sample();
    for pos in 0..bytes.len() {
        for mask in [0x01, 0x10, 0x80, 0xff] {
            assert_flip_refused(&bytes, &sections, pos, mask);
        }
    }
}

#[test]
fn every_truncation_of_a_valid_checkpoint_is_refused() {
    let (bytes, _) = sample();
    for cut in 0..bytes.len() {
        let err = read_all(&bytes[..cut], &Limits::default(), None).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
    read_all(&bytes[..], &Limits::default(), None).unwrap();
}

#[test]
fn truncation_message_names_where() {
    let (bytes, _) = sample();
    // Cut 10 bytes into the Vcpus payload.
    let vcpus_payload = HEADER_LEN + SECTION_HEADER_LEN + 6 + SECTION_HEADER_LEN;
    let err = read_all(&bytes[..vcpus_payload + 10], &Limits::default(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "checkpoint truncated in section Vcpus: expected 40 bytes, got 10"
    );
    let err = read_all(&bytes[..HEADER_LEN + 3], &Limits::default(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "checkpoint truncated in section header #0: expected 16 bytes, got 3"
    );
}

#[test]
fn wrong_fingerprint_is_refused() {
    let (bytes, _) = sample();
    let other = Fingerprint::from_bytes([0x99; 32]);
    let err = read_all(&bytes[..], &Limits::default(), Some(&other)).unwrap_err();
    match &err {
        CheckpointError::FingerprintMismatch { expected, found } => {
            assert_eq!(*expected, other);
            assert_eq!(*found, fp());
        }
        e => panic!("wrong error {e}"),
    }
    assert!(err
        .to_string()
        .contains("different VM configuration (expected 999999999999, found 424242424242)"));
    read_all(&bytes[..], &Limits::default(), Some(&fp())).unwrap();
}

/// Rewrites the header's version and fixes its CRC.
fn with_version(bytes: &[u8], version: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&b[..HEADER_LEN - 4]);
    b[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn unknown_version_is_refused_naming_both_versions() {
    let (bytes, _) = sample();
    for v in [0, 1, FORMAT_VERSION + 1, FORMAT_VERSION + 100, u32::MAX] {
        let err = read_all(&with_version(&bytes, v)[..], &Limits::default(), None).unwrap_err();
        match err {
            CheckpointError::UnsupportedVersion { found, supported } => {
                assert_eq!((found, supported), (v, FORMAT_VERSION));
                let msg = err.to_string();
                assert!(msg.contains(&format!("version {v}")), "{msg}");
                assert!(msg.contains(&format!("version {FORMAT_VERSION}")), "{msg}");
            }
            e => panic!("version {v}: wrong error {e}"),
        }
    }
    // Even a short file with a future version says so.
    let err = read_all(
        &with_version(&bytes, FORMAT_VERSION + 1)[..20],
        &Limits::default(),
        None,
    )
    .unwrap_err();
    assert_eq!(kind(&err), "UnsupportedVersion");
}

fn header_then_section(raw_id: u32, len: u64, tail: &[u8]) -> Vec<u8> {
    let mut b = Header::full(1, fp()).encode().to_vec();
    b.extend_from_slice(&raw_id.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(tail);
    b
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    let b = header_then_section(SectionId::Memory.as_u32(), 1 << 60, b"tiny");
    let err = read_all(&b[..], &Limits::default(), None).unwrap_err();
    match err {
        CheckpointError::SectionTooLarge { id, len, limit } => {
            assert_eq!((id, len, limit), (SectionId::Memory, 1 << 60, 64 << 20));
        }
        e => panic!("wrong error {e}"),
    }
    // With no length limit at all the reader still does not allocate what
    // the header claims (that would abort the process): it reads what is
    // there and reports truncation.
    let unlimited = Limits {
        max_section_len: u64::MAX,
        max_sections: u32::MAX,
    };
    let err = read_all(&b[..], &unlimited, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint truncated in section Memory: expected {} bytes, got 4",
            1u64 << 60
        )
    );
}

#[test]
fn unknown_section_id_is_refused_by_number() {
    let b = header_then_section(77, 0, b"");
    let err = read_all(&b[..], &Limits::default(), None).unwrap_err();
    assert!(matches!(err, CheckpointError::UnknownSection(77)));
    assert!(err.to_string().contains("77"));
}

#[test]
fn too_many_sections_is_refused() {
    let sections: Vec<_> = (0..3).map(|_| (SectionId::Memory, vec![0u8; 4])).collect();
    let b = write(&Header::full(1, fp()), &sections);
    let limits = Limits {
        max_section_len: 100,
        max_sections: 2,
    };
    let err = read_all(&b[..], &limits, None).unwrap_err();
    assert!(matches!(err, CheckpointError::TooManySections { limit: 2 }));
    let limits = Limits {
        max_sections: 3,
        ..limits
    };
    assert_eq!(read_all(&b[..], &limits, None).unwrap().1.len(), 3);
}

/// Byte ranges of each non-End section in a checkpoint written from
/// `sections`.
fn section_spans(sections: &[(SectionId, Vec<u8>)]) -> Vec<std::ops::Range<usize>> {
    let mut start = HEADER_LEN;
    sections
        .iter()
        .map(|(_, p)| {
            let r = start..start + SECTION_HEADER_LEN + p.len();
            start = r.end;
            r
        })
        .collect()
}

#[test]
fn dropped_or_reordered_whole_sections_are_caught_by_end() {
    let (bytes, sections) = sample();
    let spans = section_spans(&sections);

    // Drop the second Memory section entirely (every remaining CRC is valid).
    let mut dropped = bytes[..spans[4].start].to_vec();
    dropped.extend_from_slice(&bytes[spans[4].end..]);
    let err = read_all(&dropped[..], &Limits::default(), None).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::EndMismatch {
                what: "section count",
                recorded: 6,
                actual: 5
            }
        ),
        "{err}"
    );

    // Swap the two Memory sections.
    let mut swapped = bytes[..spans[2].start].to_vec();
    swapped.extend_from_slice(&bytes[spans[4].clone()]);
    swapped.extend_from_slice(&bytes[spans[3].clone()]);
    swapped.extend_from_slice(&bytes[spans[2].clone()]);
    swapped.extend_from_slice(&bytes[spans[5].start..]);
    assert_eq!(swapped.len(), bytes.len());
    let err = read_all(&swapped[..], &Limits::default(), None).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::EndMismatch {
                what: "checksum of section checksums",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn reader_handles_short_reads_and_interrupts() {
    let (bytes, sections) = sample();
    for chunk in [1, 3, 17, 4096] {
        let r = Trickle {
            data: &bytes,
            chunk,
            interrupt: false,
        };
        let (h, got) = read_all(r, &Limits::default(), Some(&fp())).unwrap();
        assert_eq!(h.seq, 9);
        assert_eq!(got, sections);
    }
}

#[test]
fn reader_exposes_header() {
    let (bytes, _) = sample();
    let r = CheckpointReader::new(&bytes[..], &Limits::default(), None).unwrap();
    assert_eq!(r.header().kind, CheckpointKind::Full);
    assert_eq!(r.header().base_seq, 9);
    assert_eq!(r.sections_read(), 0);
    assert!(!r.is_done());
}

/// The example in docs/checkpoint-format.md.
#[test]
fn golden_empty_full_checkpoint() {
    let w = checkpoint::CheckpointWriter::new(
        Vec::new(),
        &Header::full(1, Fingerprint::from_bytes([0x11; 32])),
    )
    .unwrap();
    let bytes = w.finish().unwrap();
    let mut expected = b"HSPRCKPT".to_vec();
    expected.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0x11; 32]);
    expected.extend_from_slice(&[0x41, 0xf5, 0xd1, 0x70]);
    expected.extend_from_slice(&[0xff; 4]);
    expected.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[0xb0, 0x60, 0xec, 0x8c]);
    expected.extend_from_slice(&[0; 8]);
    assert_eq!(bytes, expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(h in header(), secs in sections(), chunk in 1usize..64) {
        let bytes = write(&h, &secs);
        let (h2, got) = read_all(&bytes[..], &Limits::default(), Some(&h.fingerprint)).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(&got, &secs);
        let trickle = Trickle { data: &bytes, chunk, interrupt: false };
        let (_, got) = read_all(trickle, &Limits::default(), None).unwrap();
        prop_assert_eq!(got, secs);
    }

    #[test]
    fn any_truncation_is_truncated(h in header(), secs in sections(), frac in 0.0f64..1.0) {
        let bytes = write(&h, &secs);
        let cut = ((bytes.len() as f64) * frac) as usize;
        prop_assume!(cut < bytes.len());
        let err = read_all(&bytes[..cut], &Limits::default(), None).unwrap_err();
        prop_assert!(matches!(err, CheckpointError::Truncated { .. }), "cut {}: {}", cut, err);
    }

    #[test]
    fn any_single_byte_flip_is_refused(
        h in header(),
        secs in sections(),
        frac in 0.0f64..1.0,
        mask in 1u8..=255,
    ) {
        let bytes = write(&h, &secs);
        let pos = ((bytes.len() as f64) * frac) as usize;
        prop_assume!(pos < bytes.len());
        assert_flip_refused(&bytes, &secs, pos, mask);
    }
}

/// Every section of `bytes` read with the borrowing reader, then, like
/// `read_all`, nothing checked past the End section.
fn read_borrowed(bytes: &[u8], limits: &Limits) -> Result<common::Checkpoint, CheckpointError> {
    let mut reader = CheckpointReader::new(bytes, limits, None)?;
    let mut out = Vec::new();
    while let Some((id, p)) = reader.next_section_borrowed()? {
        out.push((id, p.to_vec()));
    }
    Ok((*reader.header(), out))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The borrowing reader (in-memory containers: the standby) and the
    /// copying one take the same decisions, with the same errors, on any
    /// container: intact, cut, with a byte flipped, or with a byte more.
    #[test]
    fn borrowed_and_copied_reading_agree_on_any_damage(
        h in header(),
        secs in sections(),
        frac in 0.0f64..1.0,
        mask in 0u8..=255,
        cut in any::<bool>(),
        extra in any::<bool>(),
        small in any::<bool>(),
    ) {
        let mut bytes = write(&h, &secs);
        let pos = ((bytes.len() as f64) * frac) as usize;
        if cut {
            bytes.truncate(pos);
        } else if pos < bytes.len() {
            bytes[pos] ^= mask;
        }
        if extra {
            bytes.push(0);
        }
        // Small limits make the count and length checks fire too.
        let limits = if small {
            Limits { max_section_len: 100, max_sections: 3 }
        } else {
            Limits::default()
        };
        let copied = read_all(&bytes[..], &limits, None).map_err(|e| e.to_string());
        let borrowed = read_borrowed(&bytes, &limits).map_err(|e| e.to_string());
        prop_assert_eq!(&copied, &borrowed);
        let mut a = Vec::new();
        let va = verify_with(&bytes[..], &limits, None, |id, p| {
            a.push((id, p.to_vec()));
            Ok(())
        })
        .map_err(|e| e.to_string());
        let mut b = Vec::new();
        let checked = verify_slice_with(&bytes, &limits, None, Integrity::Checked, |id, p| {
            b.push((id, p.to_vec()));
            Ok(())
        });
        let vb = checked.as_ref().map_err(|e| e.to_string()).copied();
        prop_assert_eq!(va, vb);
        prop_assert_eq!(&a, &b);
        // Authenticated bytes skip only the section CRCs: the same answer,
        // unless the checked reader refused a section's CRC (then the
        // authenticated one reads on, and may pass or fail later).
        let mut c = Vec::new();
        let authed = verify_slice_with(&bytes, &limits, None, Integrity::Authenticated, |id, p| {
            c.push((id, p.to_vec()));
            Ok(())
        });
        match &checked {
            Err(CheckpointError::SectionChecksum { .. }) => {
                // Sections before the bad one came out the same.
                prop_assert!(c.len() >= b.len());
                prop_assert_eq!(&c[..b.len()], &b[..]);
            }
            _ => {
                prop_assert_eq!(
                    checked.map_err(|e| e.to_string()),
                    authed.map_err(|e| e.to_string())
                );
                prop_assert_eq!(&b, &c);
            }
        }
    }
}

/// A section CRC damaged on purpose: refused when checked, read through
/// when the bytes are authenticated by their channel, with the same
/// sections; the End's CRC-of-CRCs (over the stored CRCs) still holds.
#[test]
fn an_authenticated_reader_skips_only_the_section_crcs() {
    let sections = vec![
        (SectionId::Memory, vec![1u8; 40]),
        (SectionId::Vm, vec![2u8; 9]),
    ];
    let mut bytes = write(&Header::full(3, fp()), &sections);
    // The first section's payload changes, its stored CRC does not.
    bytes[HEADER_LEN + SECTION_HEADER_LEN + 3] ^= 0x10;
    let collect = |integrity| {
        let mut got = Vec::new();
        let r = verify_slice_with(&bytes, &Limits::default(), None, integrity, |id, p| {
            got.push((id, p.to_vec()));
            Ok(())
        });
        (r, got)
    };
    let (checked, _) = collect(Integrity::Checked);
    assert!(
        matches!(
            checked,
            Err(CheckpointError::SectionChecksum {
                id: SectionId::Memory,
                ..
            })
        ),
        "{checked:?}"
    );
    let (authed, got) = collect(Integrity::Authenticated);
    authed.unwrap();
    let mut want = sections.clone();
    want[0].1[3] ^= 0x10;
    assert_eq!(got, want);
    // Everything else is still checked: a truncated stream is refused.
    let short = &bytes[..bytes.len() - 1];
    let r = verify_slice_with(
        short,
        &Limits::default(),
        None,
        Integrity::Authenticated,
        |_, _| Ok(()),
    );
    assert!(matches!(r, Err(CheckpointError::Truncated { .. })), "{r:?}");
}

/// Writes `sections` with `write_section_with` into `sink`, the payloads
/// appended by the fill closures (with a failing fill, a dropped section
/// and a refused duplicate between them, which must leave no trace).
fn write_with<W: checkpoint::Sink>(sink: W, sections: &[(SectionId, Vec<u8>)]) -> W {
    let header = Header::full(3, fp());
    let mut w = checkpoint::CheckpointWriter::new(sink, &header).unwrap();
    let mut scratch = Vec::new();
    let mut written = Vec::new();
    for (id, p) in sections {
        let failed = w.write_section_with(SectionId::Memory, &mut scratch, |b| {
            b.extend_from_slice(b"half a payload");
            Err(CheckpointError::InvalidArgument("fill failed".into()))
        });
        assert!(matches!(failed, Err(CheckpointError::InvalidArgument(_))));
        w.write_section_with(SectionId::Memory, &mut scratch, |b| {
            b.extend_from_slice(b"not kept");
            Ok::<_, CheckpointError>(false)
        })
        .unwrap();
        if let Some(&dup) = written.iter().find(|&&d| d != SectionId::Memory) {
            let mut called = false;
            let r = w.write_section_with(dup, &mut scratch, |_| {
                called = true;
                Ok::<_, CheckpointError>(true)
            });
            assert!(matches!(r, Err(CheckpointError::DuplicateSection(_))));
            assert!(!called, "a refused section's payload was built");
        }
        w.write_section_with(*id, &mut scratch, |b| {
            b.extend_from_slice(p);
            Ok::<_, CheckpointError>(true)
        })
        .unwrap();
        written.push(*id);
    }
    w.finish().unwrap()
}

proptest! {
    /// Sections built in place (a container in memory) or in the scratch
    /// buffer (any other sink) give the same bytes as `write_section`, and
    /// failed, dropped or refused sections leave nothing behind.
    #[test]
    fn sections_built_in_place_are_the_same_bytes(secs in sections()) {
        let want = write(&Header::full(3, fp()), &secs);
        let in_place = write_with(Vec::new(), &secs);
        prop_assert_eq!(&in_place, &want);
        let sink = checkpoint::memcopy::VecSink(Vec::new());
        prop_assert_eq!(&write_with(sink, &secs).0, &want);
        let through = write_with(std::io::BufWriter::new(Vec::new()), &secs);
        prop_assert_eq!(&through.into_inner().unwrap(), &want);
        let (_, back) = read_all(&want[..], &Limits::default(), Some(&fp())).unwrap();
        prop_assert_eq!(back, secs);
    }
}

/// A section built in place past the length limit is refused and cut
/// away: the writer goes on, and the container verifies.
#[test]
fn an_oversized_section_built_in_place_is_cut_away() {
    let limits = Limits {
        max_section_len: 100,
        ..Limits::default()
    };
    let mut w =
        checkpoint::CheckpointWriter::with_limits(Vec::new(), &Header::full(3, fp()), &limits)
            .unwrap();
    let mut scratch = Vec::new();
    w.write_section(SectionId::Vcpus, b"vcpus").unwrap();
    let before = w.bytes_written();
    let r = w.write_section_with(SectionId::Memory, &mut scratch, |b| {
        b.extend_from_slice(&[1u8; 101]);
        Ok::<_, CheckpointError>(true)
    });
    assert!(matches!(
        r,
        Err(CheckpointError::SectionTooLarge { len: 101, .. })
    ));
    assert_eq!(w.bytes_written(), before);
    w.write_section_with(SectionId::Memory, &mut scratch, |b| {
        b.extend_from_slice(&[2u8; 100]);
        Ok::<_, CheckpointError>(true)
    })
    .unwrap();
    let bytes = w.finish().unwrap();
    let (_, back) = read_all(&bytes[..], &limits, Some(&fp())).unwrap();
    assert_eq!(
        back,
        vec![
            (SectionId::Vcpus, b"vcpus".to_vec()),
            (SectionId::Memory, vec![2u8; 100])
        ]
    );
}

/// A section over the count limit is refused before its payload is built,
/// in memory and through a scratch buffer alike.
#[test]
fn a_section_over_the_count_is_refused_before_it_is_built() {
    let limits = Limits {
        max_sections: 1,
        ..Limits::default()
    };
    fn second<W: checkpoint::Sink>(sink: W, limits: &Limits) {
        let header = Header::full(3, fp());
        let mut w = checkpoint::CheckpointWriter::with_limits(sink, &header, limits).unwrap();
        let mut scratch = Vec::new();
        w.write_section_with(SectionId::Memory, &mut scratch, |b| {
            b.push(1);
            Ok::<_, CheckpointError>(true)
        })
        .unwrap();
        let mut called = false;
        let r = w.write_section_with(SectionId::Memory, &mut scratch, |_| {
            called = true;
            Ok::<_, CheckpointError>(true)
        });
        assert!(matches!(
            r,
            Err(CheckpointError::TooManySections { limit: 1 })
        ));
        assert!(!called);
        assert_eq!(w.sections_written(), 1);
    }
    second(Vec::new(), &limits);
    second(std::io::BufWriter::new(Vec::new()), &limits);
}
