//! `verify` on realistic checkpoints: container plus payload checks.

mod common;

use checkpoint::pages::SECTION_TARGET_BYTES;
use checkpoint::{
    decode_records, verify, CheckpointError, CheckpointReader, CheckpointWriter, Compression,
    DirtyBitmap, Fingerprint, Header, Limits, MachineConfig, MemRegion, MemoryEncoder, SectionId,
    PAGE_SIZE,
};
use common::write;

fn config() -> MachineConfig {
    MachineConfig {
        mem_regions: vec![MemRegion {
            guest_addr: 0,
            size: 256 * PAGE_SIZE as u64,
        }],
        vcpus: 2,
        cpuid: vec![0xaa; 16],
        disks: Vec::new(),
    }
}

/// Guest memory: a mix of zero, text-like and unique pages.
fn memory() -> Vec<u8> {
    let mut m = vec![0u8; 256 * PAGE_SIZE];
    for (i, page) in m.chunks_exact_mut(PAGE_SIZE).enumerate() {
        match i % 5 {
            0 | 1 => {}
            2 => page.fill(b'a' + (i % 26) as u8),
            _ => {
                for (j, b) in page.iter_mut().enumerate() {
                    *b = (i * 31 + j * 7) as u8;
                }
            }
        }
    }
    m
}

/// Writes a full checkpoint of `mem` the way the engine will: dirty ranges
/// in bounded runs, Memory sections cut at a target size.
fn full_checkpoint(mem: &[u8], section_target: usize) -> Vec<u8> {
    let cfg = config();
    let mut w = CheckpointWriter::new(Vec::new(), &Header::full(1, cfg.fingerprint())).unwrap();
    w.write_section(SectionId::Config, &cfg.encode()).unwrap();
    w.write_section(SectionId::Vcpus, b"opaque vcpu state")
        .unwrap();

    let mut all = DirtyBitmap::new(mem.len() / PAGE_SIZE);
    all.set_range(0..mem.len() / PAGE_SIZE);
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).unwrap();
    let mut buf = Vec::new();
    for r in all.ranges_chunked(16) {
        let bytes = &mem[r.start * PAGE_SIZE..r.end * PAGE_SIZE];
        enc.encode_run((r.start * PAGE_SIZE) as u64, bytes, &mut buf)
            .unwrap();
        if buf.len() >= section_target {
            w.write_section(SectionId::Memory, &buf).unwrap();
            buf.clear();
        }
    }
    if !buf.is_empty() {
        w.write_section(SectionId::Memory, &buf).unwrap();
    }
    w.write_section(SectionId::Console, &77u64.to_le_bytes())
        .unwrap();
    w.finish().unwrap()
}

#[test]
fn full_checkpoint_verifies_and_restores_memory() {
    let mem = memory();
    let bytes = full_checkpoint(&mem, 16 * 1024);
    let fp = config().fingerprint();
    let h = verify(&bytes[..], &Limits::default(), Some(&fp)).unwrap();
    assert_eq!(h, Header::full(1, fp));

    let mut restored = vec![0xffu8; mem.len()];
    let mut memory_sections = 0;
    let mut r = CheckpointReader::new(&bytes[..], &Limits::default(), Some(&fp)).unwrap();
    while let Some((id, payload)) = r.next_section().unwrap() {
        match id {
            SectionId::Config => assert_eq!(MachineConfig::decode(&payload).unwrap(), config()),
            SectionId::Memory => {
                memory_sections += 1;
                decode_records(&payload, |gpa, b| {
                    restored[gpa as usize..gpa as usize + b.len()].copy_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            SectionId::Console => assert_eq!(payload, 77u64.to_le_bytes()),
            _ => {}
        }
    }
    assert!(memory_sections > 1, "memory should span several sections");
    assert!(restored == mem);
    // Zero pages and compression make it much smaller than guest memory.
    assert!(bytes.len() < mem.len() / 2);
    assert!(SECTION_TARGET_BYTES < Limits::default().max_section_len as usize);
}

#[test]
fn verify_refuses_a_config_that_does_not_match_the_header() {
    let mut other = config();
    other.vcpus = 4;
    let bytes = write(
        &Header::full(1, config().fingerprint()),
        &[(SectionId::Config, other.encode())],
    );
    let err = verify(&bytes[..], &Limits::default(), None).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::BadPayload {
                id: SectionId::Config,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&other.fingerprint().short()));
}

#[test]
fn verify_refuses_an_undecodable_config() {
    let bytes = write(
        &Header::full(1, config().fingerprint()),
        &[(SectionId::Config, vec![0xff; 3])],
    );
    let err = verify(&bytes[..], &Limits::default(), None).unwrap_err();
    assert!(matches!(err, CheckpointError::Decode(_)), "{err}");
}

#[test]
fn verify_refuses_bad_memory_records_behind_a_valid_crc() {
    // Raw record claiming 1 page but carrying 10 bytes.
    let mut rec = Vec::new();
    rec.extend_from_slice(&0u64.to_le_bytes());
    rec.extend_from_slice(&1u32.to_le_bytes());
    rec.push(0);
    rec.extend_from_slice(&10u32.to_le_bytes());
    rec.extend_from_slice(&[1; 10]);
    let bytes = write(
        &Header::incremental(3, 2, Fingerprint::from_bytes([1; 32])),
        &[(SectionId::Memory, rec)],
    );
    let err = verify(&bytes[..], &Limits::default(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid memory record at offset 0: Raw record has data_len 10, expected 4096"
    );
}

#[test]
fn verify_refuses_a_bad_console_offset() {
    let bytes = write(
        &Header::full(1, Fingerprint::from_bytes([1; 32])),
        &[(SectionId::Console, vec![0; 7])],
    );
    let err = verify(&bytes[..], &Limits::default(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid Console section payload: expected at least 8 bytes, got 7"
    );
}

#[test]
fn verify_refuses_a_wrong_fingerprint_and_damage() {
    let bytes = full_checkpoint(&memory(), 1 << 20);
    let other = Fingerprint::from_bytes([3; 32]);
    assert!(matches!(
        verify(&bytes[..], &Limits::default(), Some(&other)),
        Err(CheckpointError::FingerprintMismatch { .. })
    ));
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    assert!(matches!(
        verify(&damaged[..], &Limits::default(), None),
        Err(CheckpointError::SectionChecksum {
            id: SectionId::Memory,
            ..
        })
    ));
    assert!(matches!(
        verify(&bytes[..bytes.len() - 1], &Limits::default(), None),
        Err(CheckpointError::Truncated { .. })
    ));
}
