//! Tests of `bounds.rs`: what a standby refuses, and that it refuses it
//! before staging or creating anything of the announced size.

use super::*;
use checkpoint::fingerprint::DiskLayout;
use checkpoint::format::{CheckpointWriter, Header};

fn machine(mem_mib: u64, vcpus: u32, disks: &[u64]) -> MachineConfig {
    MachineConfig {
        mem_regions: crate::memory::layout(mem_mib * MIB),
        vcpus,
        cpuid: vec![7; 600],
        disks: disks
            .iter()
            .map(|&bytes| DiskLayout {
                bytes,
                read_only: false,
            })
            .collect(),
    }
}

fn policy(mem_mib: u64, vcpus: u32, replicas: &[u64]) -> Policy {
    Policy {
        caps: ShapeCaps::new(Some(mem_mib), Some(vcpus)).unwrap(),
        replicas: replicas
            .iter()
            .enumerate()
            .map(|(i, &bytes)| ReplicaShape {
                path: PathBuf::from(format!("/r{i}.img")),
                bytes,
            })
            .collect(),
        max_epoch: None,
    }
}

/// A full container of `m`: its Config section, then `filler` bytes in a
/// Memory section (the peek never looks at them).
fn container(m: &MachineConfig, filler: usize) -> Vec<u8> {
    let mut w = CheckpointWriter::new(Vec::new(), &Header::full(1, m.fingerprint())).unwrap();
    w.write_section(SectionId::Config, &m.encode()).unwrap();
    w.write_section(SectionId::Memory, &vec![0x5a; filler])
        .unwrap();
    w.finish().unwrap()
}

#[test]
fn more_memory_than_the_cap_is_refused_naming_the_field_the_value_and_the_cap() {
    let p = policy(64, 4, &[]);
    assert_eq!(p.check_shape(&machine(64, 1, &[])), Ok(64 * MIB));
    let e = p.check_shape(&machine(128, 1, &[])).unwrap_err();
    assert!(matches!(e, BoundsError::Memory { announced, .. } if announced == 128 * MIB));
    let s = e.to_string();
    assert!(
        s.starts_with("guest memory:")
            && s.contains("134217728 bytes (128 MiB)")
            && s.contains("67108864 bytes (64 MiB)")
            && s.contains("set by --max-mem-mib"),
        "{s}"
    );
    // The default cap is this host's RAM, and says so.
    let host = host_ram_bytes().expect("this host's RAM");
    let d = Policy {
        caps: ShapeCaps::new(None, None).unwrap(),
        ..p.clone()
    };
    assert_eq!(d.caps.mem_bytes.value, host);
    let over = machine(host / MIB + 2, 1, &[]);
    let s = d.check_shape(&over).unwrap_err().to_string();
    assert!(s.contains("this host's RAM; --max-mem-mib sets it"), "{s}");
}

#[test]
fn vcpus_disks_and_layouts_must_match_what_the_standby_was_told() {
    let p = policy(256, 2, &[8 * MIB, MIB]);
    assert_eq!(
        p.check_shape(&machine(64, 2, &[8 * MIB, MIB])),
        Ok(64 * MIB)
    );
    for n in [0, 3, u32::MAX] {
        let s = p
            .check_shape(&machine(64, n, &[8 * MIB, MIB]))
            .unwrap_err()
            .to_string();
        assert!(
            s.contains(&format!("vCPUs: the primary announces {n}")) && s.contains("--max-vcpus"),
            "{s}"
        );
    }
    // A disk larger than its replica: named, with both sizes.
    let s = p
        .check_shape(&machine(64, 1, &[16 * MIB, MIB]))
        .unwrap_err()
        .to_string();
    assert!(
        s.contains("disk 0: the primary announces 16777216 bytes but replica /r0.img has 8388608"),
        "{s}"
    );
    let s = p
        .check_shape(&machine(64, 1, &[8 * MIB]))
        .unwrap_err()
        .to_string();
    assert!(s.contains("1 disks but this standby was given 2"), "{s}");
    // A layout this engine does not build (one region across the MMIO hole).
    let mut m = machine(64, 1, &[8 * MIB, MIB]);
    m.mem_regions[0].guest_addr = 4096;
    assert!(matches!(
        p.check_shape(&m),
        Err(BoundsError::Layout { regions: 1, .. })
    ));
}

#[test]
fn memory_regions_that_overflow_are_refused_not_wrapped() {
    let p = policy(64, 1, &[]);
    let mut m = machine(64, 1, &[]);
    // Wrapped, these two would add up to 32 MiB: under the cap.
    m.mem_regions = vec![
        checkpoint::fingerprint::MemRegion {
            guest_addr: 0,
            size: u64::MAX - 16 * MIB + 1,
        },
        checkpoint::fingerprint::MemRegion {
            guest_addr: 1 << 40,
            size: 48 * MIB,
        },
    ];
    assert_eq!(p.check_shape(&m), Err(BoundsError::MemoryOverflow));
}

#[test]
fn caps_out_of_range_are_refused_naming_the_option() {
    for (mem, vcpus, option) in [
        (Some(0), None, "--max-mem-mib"),
        (Some(u64::MAX), None, "--max-mem-mib"),
        (None, Some(0), "--max-vcpus"),
        (None, Some(MAX_VCPUS + 1), "--max-vcpus"),
    ] {
        let e = ShapeCaps::new(mem, vcpus).unwrap_err();
        assert!(
            matches!(&e, BoundsError::BadOption { option: o, .. } if *o == option),
            "{e}"
        );
    }
    let c = ShapeCaps::new(Some(u64::MAX / MIB), Some(MAX_VCPUS)).unwrap();
    assert_eq!(c.mem_bytes.value, (u64::MAX / MIB) * MIB);
}

#[test]
fn before_the_vm_is_known_staging_is_bounded_by_the_caps_not_70_gib() {
    let mut p = policy(64, 1, &[8 * MIB]);
    let (limit, why) = p.staging_limit(None);
    assert_eq!(limit, 72 * MIB + 72 * MIB / 10 + HEADROOM);
    assert!(why.contains("--max-mem-mib"), "{why}");
    assert!(matches!(
        p.admit(None, 1, limit + 1),
        Err(BoundsError::Staging { seq: 1, .. })
    ));
    assert!(p.admit(None, 1, limit).is_ok());
    // Once the VM is known, its size bounds an epoch.
    let m = machine(32, 1, &[8 * MIB]);
    assert_eq!(p.staging_limit(Some(&m)).0, 40 * MIB + 4 * MIB + HEADROOM);
    // The operator's cap wins when smaller, and is named.
    p.max_epoch = Some(MIB);
    let e = p.admit(Some(&m), 9, 2 * MIB).unwrap_err().to_string();
    assert!(e.contains("set by --max-epoch-mib"), "{e}");
    // Huge caps saturate instead of wrapping to a small limit.
    p.max_epoch = None;
    p.caps.mem_bytes.value = u64::MAX;
    assert_eq!(p.staging_limit(None).0, u64::MAX);
}

#[test]
fn an_oversized_vm_is_refused_from_its_first_bytes_before_the_epoch_is_staged() {
    let p = policy(64, 1, &[]);
    let big = machine(128, 1, &[]);
    let c = container(&big, 3 << 20);
    let mut adm = p.admit(None, 1, c.len() as u64).unwrap();
    let mut staged = Vec::new();
    let mut refused = None;
    for chunk in c.chunks(1000) {
        if let Err(e) = adm.data(&mut staged, chunk) {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the oversized VM was staged whole");
    assert!(matches!(e, BoundsError::Memory { .. }), "{e}");
    // Refused with the chunk that completed the Config section.
    let config_end = HEADER_LEN + 16 + big.encode().len();
    assert!(
        staged.len() < config_end + 1000,
        "{} bytes staged",
        staged.len()
    );
    // A VM within the caps stages whole, its epoch within its own limit.
    let ok = machine(64, 1, &[]);
    let c = container(&ok, 3 << 20);
    let mut adm = p.admit(None, 1, c.len() as u64).unwrap();
    let mut staged = Vec::new();
    for chunk in c.chunks(4 << 20) {
        adm.data(&mut staged, chunk).unwrap();
    }
    assert_eq!(staged, c);
    // More than announced is refused.
    assert!(matches!(
        adm.data(&mut staged, b"x"),
        Err(BoundsError::Overflow { seq: 1, .. })
    ));
}

#[test]
fn an_epoch_too_large_for_the_vm_it_announces_is_refused_from_its_first_bytes() {
    let p = policy(1024, 1, &[]);
    let m = machine(16, 1, &[]);
    let c = container(&m, 1000);
    // It announces 16 MiB of memory but 1 GiB of container.
    let mut adm = p.admit(None, 3, 1 << 30).unwrap();
    let mut staged = Vec::new();
    let e = adm.data(&mut staged, &c).unwrap_err().to_string();
    assert!(
        e.contains("epoch 3 claims 1073741824 bytes") && e.contains("the guest's memory"),
        "{e}"
    );
}

#[test]
fn peeking_waits_for_the_config_skips_increments_and_refuses_garbage_early() {
    let m = machine(64, 1, &[]);
    let c = container(&m, 100);
    for n in [0, 10, HEADER_LEN, HEADER_LEN + 20, HEADER_LEN + 16 + 100] {
        assert_eq!(peek_config(&c[..n]), Ok(Peek::NeedMore), "{n} bytes");
    }
    assert_eq!(peek_config(&c), Ok(Peek::Config(m.clone())));
    // An incremental container announces nothing.
    let mut w =
        CheckpointWriter::new(Vec::new(), &Header::incremental(2, 1, m.fingerprint())).unwrap();
    w.write_section(SectionId::Memory, b"").unwrap();
    assert_eq!(peek_config(&w.finish().unwrap()), Ok(Peek::Nothing));
    // Garbage, a configuration of another fingerprint, and a huge Config
    // section are refused without waiting for the rest.
    assert!(matches!(
        peek_config(b"GET / HTTP/1.1\r\n"),
        Err(BoundsError::Container(_))
    ));
    let mut w = CheckpointWriter::new(
        Vec::new(),
        &Header::full(1, machine(32, 1, &[]).fingerprint()),
    )
    .unwrap();
    w.write_section(SectionId::Config, &m.encode()).unwrap();
    assert!(matches!(
        peek_config(&w.finish().unwrap()),
        Err(BoundsError::Container(_))
    ));
    let mut huge = c[..HEADER_LEN].to_vec();
    huge.extend_from_slice(&SectionId::Config.as_u32().to_le_bytes());
    huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
    huge.extend_from_slice(&[0; 4]);
    assert_eq!(
        peek_config(&huge),
        Err(BoundsError::ConfigTooLarge { len: 1 << 40 })
    );
}

#[test]
fn console_output_must_end_at_the_checkpoints_console_without_overflow() {
    assert_eq!(check_output(10, b"abc", 13), Ok(()));
    assert_eq!(
        check_output(10, b"abc", 14),
        Err(BoundsError::Console { end: 13, state: 14 })
    );
    assert!(matches!(
        check_output(u64::MAX, b"a", 0),
        Err(BoundsError::Arithmetic(_))
    ));
    assert_eq!(check_nics(1, 1), Ok(()));
    let s = check_nics(100_000, 1).unwrap_err().to_string();
    assert!(
        s.contains("100000 NICs but this standby was given 1 (--net)"),
        "{s}"
    );
}

#[test]
fn a_reservation_is_a_positive_multiple_of_2_mib_within_the_memory_cap() {
    let caps = ShapeCaps::new(Some(64), None).unwrap();
    assert_eq!(caps.reserve_bytes(64).unwrap(), 64 << 20);
    for mib in [0, 3, u64::MAX] {
        let e = caps.reserve_bytes(mib).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("--reserve-mib must be a positive multiple of 2, got {mib}")
        );
    }
    assert_eq!(
        caps.reserve_bytes(128).unwrap_err().to_string(),
        "--reserve-mib 128 is more than the largest VM this standby shadows (64 MiB: --max-mem-mib)"
    );
}

#[test]
fn a_fencing_record_with_too_many_spares_or_too_long_a_name_is_refused() {
    let name = |n: usize| "s".repeat(n);
    let ok = name(MAX_RECORD_NAME);
    assert!(check_fence_record(MAX_RECORD_SPARES, [ok.as_str(), "vm"]).is_ok());
    let e = check_fence_record(MAX_RECORD_SPARES + 1, ["a"]).unwrap_err();
    assert!(
        e.to_string().contains("names 65 spares, more than the 64"),
        "{e}"
    );
    let long = name(MAX_RECORD_NAME + 1);
    let e = check_fence_record(2, ["a", long.as_str(), "b"]).unwrap_err();
    assert!(
        e.to_string().contains("is 1025 bytes long, more than 1024"),
        "{e}"
    );
}
