//! Seed inputs for every target: small, valid encodings of real structures,
//! written to `corpus/<target>/` by `examples/seeds.rs`. libFuzzer mutates
//! from these, so each target starts past its decoder's first checks.

use std::io;
use std::path::Path;

use checkpoint::delta::DeltaCache;
use checkpoint::devices as section;
use checkpoint::fingerprint::{DiskLayout, MachineConfig, MemRegion};
use checkpoint::format::{CheckpointWriter, Header, SectionId};
use checkpoint::kvm_state::{VcpuState, VmState};
use checkpoint::{disk, Compression, MemoryEncoder, PAGE_SIZE};
use engine::devices::manager::MMIO_BASE;
use engine::devices::DeviceRecord;
use engine::replication::arbiter::{self, Record};
use engine::replication::wire::{
    self, Ack, EpochBegin, EpochEnd, EpochReport, FenceInfo, Heartbeat, Nack, NetOutput,
};
use engine::snapshot::{self, EpochState};

use crate::devices::{with_env, Env};

/// One seed input.
pub struct Seed {
    /// The fuzz target it is for.
    pub target: &'static str,
    /// Its file name in the target's corpus.
    pub name: &'static str,
    /// The input, control byte included.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &'static str, ctl: u8, body: &[u8]) -> Seed {
    let mut bytes = vec![ctl];
    bytes.extend_from_slice(body);
    Seed {
        target,
        name,
        bytes,
    }
}

/// A vCPU in long mode at some instruction, with a few MSRs and CPUID leaves.
pub fn vcpu(id: u32) -> VcpuState {
    let mut s = VcpuState {
        id,
        cpuid: vec![Default::default(); 2],
        regs: Default::default(),
        sregs: Default::default(),
        xsave: vec![0; 1024],
        xcrs: Default::default(),
        msrs: vec![
            (0xc000_0080, 0x500),
            (0x10, 123_456_789),
            (0x1b, 0xfee0_0900),
        ],
        lapic: Default::default(),
        events: Default::default(),
        debugregs: Default::default(),
        mp_state: Default::default(),
    };
    s.cpuid[0].function = 0;
    s.cpuid[0].eax = 0xd;
    s.cpuid[1].function = 1;
    s.cpuid[1].ecx = 0x8020_0000;
    s.regs.rip = 0x10_0000;
    s.regs.rsp = 0x8000;
    s.regs.rflags = 2;
    s.sregs.cr0 = 0x8000_0011;
    s.sregs.cr4 = 0x20;
    s.sregs.efer = 0x500;
    s.xsave[6] = 0x1f80; // MXCSR
    s.xcrs.nr_xcrs = 1;
    s.xcrs.xcrs[0].value = 7;
    s.lapic.regs[0x20] = 1;
    s
}

/// The in-kernel irqchips, PIT and clock.
pub fn vm() -> VmState {
    let mut s = VmState {
        irqchips: vec![Default::default(); 3],
        pit: Default::default(),
        clock: Default::default(),
    };
    for (i, c) in s.irqchips.iter_mut().enumerate() {
        c.chip_id = i as u32;
    }
    s.pit.channels[0].count = 0x1_0000;
    s.clock.clock = 1_000_000_000;
    s
}

/// 2 MiB of memory, one vCPU, a 1 MiB disk.
pub fn machine() -> MachineConfig {
    MachineConfig {
        mem_regions: vec![MemRegion {
            guest_addr: 0,
            size: 2 << 20,
        }],
        vcpus: 1,
        cpuid: [0u32, 0, 0, 0xd, 0, 0, 0, 1, 0, 0, 0, 0, 0x8020_0000, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect(),
        disks: vec![DiskLayout {
            bytes: 1 << 20,
            read_only: false,
        }],
    }
}

/// A page whose bytes depend on `tag` (compressible).
fn page(tag: u8) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|i| if i % 64 < 8 { tag } else { (i / 64) as u8 })
        .collect()
}

/// Drives the devices as a driver would (COM1 registers, virtio feature
/// negotiation and queue setup), so their records are not all zeros.
fn drive(env: &Env) {
    let m = &env.manager;
    m.pio_write(0x3f8 + 3, &[0x80], 1); // LCR: DLAB
    m.pio_write(0x3f8, &[0x0c], 1); // divisor low
    m.pio_write(0x3f8 + 3, &[0x03], 1); // 8N1
    m.pio_write(0x3f8 + 1, &[0x01], 1); // IER
    m.pio_write(0x3f8 + 7, &[0x5a], 1); // scratch
    let w = |dev: u64, off: u64, v: u32| {
        m.mmio_write(MMIO_BASE + dev * 0x1000 + off, &v.to_le_bytes());
    };
    for (dev, queues, low_features) in [(0, 1, 0), (1, 3, 1 << 5)] {
        w(dev, 0x70, 3); // Status: ACKNOWLEDGE | DRIVER
        w(dev, 0x24, 0); // DriverFeaturesSel
        w(dev, 0x20, low_features);
        w(dev, 0x24, 1);
        w(dev, 0x20, 1); // VIRTIO_F_VERSION_1
        w(dev, 0x70, 0xb); // | FEATURES_OK
        for q in 0..queues {
            let base = 0x1_0000 + u64::from(q) * 0x1_0000 + dev * 0x4_0000;
            w(dev, 0x30, q); // QueueSel
            w(dev, 0x38, 16); // QueueNum
            w(dev, 0x80, base as u32); // QueueDesc
            w(dev, 0x90, (base + 0x1000) as u32); // QueueDriver
            w(dev, 0xa0, (base + 0x2000) as u32); // QueueDevice
            w(dev, 0x44, 1); // QueueReady
        }
        w(dev, 0x70, 0xf); // | DRIVER_OK
    }
}

fn changed_records() -> Vec<DeviceRecord> {
    with_env(|env| {
        drive(env);
        let records = env.manager.save();
        env.manager
            .restore(&env.baseline)
            .expect("the baseline restores");
        records
    })
}

/// Page records of every encoding, with the control byte that fits them.
fn page_payloads() -> Vec<(&'static str, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let run = |ctl: u8, f: &dyn Fn(&mut MemoryEncoder, &mut Vec<u8>)| {
        let c = if ctl & 1 != 0 {
            Compression::Zstd { level: 1 }
        } else {
            Compression::None
        };
        let mut enc = MemoryEncoder::new(c).expect("encoder");
        enc.set_batching(ctl & 2 != 0);
        if ctl & 4 != 0 {
            enc.set_delta_cache(Some(DeltaCache::new(64)));
        }
        let mut p = Vec::new();
        f(&mut enc, &mut p);
        enc.flush(&mut p).expect("flush");
        p
    };
    let mut two = page(1);
    two.extend(page(2));
    let raw = run(0, &|e, p| {
        e.encode_zero_run(0, 3, p).unwrap();
        e.encode_run(0x5000, &two, p).unwrap();
    });
    out.push(("raw-zero", 0, raw));
    let zstd = run(1, &|e, p| {
        e.encode_run(0x1000, &two, p).unwrap();
        e.encode_zero_run(0x10_0000, 16, p).unwrap();
    });
    out.push(("zstd", 1, zstd));
    out.push((
        "batch",
        2,
        run(2, &|e, p| {
            e.encode_run(0x3000, &page(3), p).unwrap();
            e.encode_run(0x9000, &page(4), p).unwrap();
        }),
    ));
    out.push((
        "batch-zstd",
        3,
        run(3, &|e, p| {
            e.encode_run(0x3000, &page(3), p).unwrap();
            e.encode_run(0x9000, &page(4), p).unwrap();
            e.encode_run(0x20_0000 - 0x1000, &page(5), p).unwrap();
        }),
    ));
    // XOR deltas: the second version of each page, against the first.
    for (name, ctl) in [("xor-zstd", 5u8), ("xor-runs", 7u8)] {
        let deltas = run(ctl, &|e, p| {
            e.encode_run(0x2000, &two, p).unwrap();
            e.flush(p).unwrap();
            p.clear();
            let mut next = two.clone();
            next[9] ^= 0x40;
            next[PAGE_SIZE + 100] ^= 1;
            e.encode_run(0x2000, &next, p).unwrap();
        });
        out.push((name, ctl, deltas));
    }
    // Many scattered pages with the same words changed: their XorRuns
    // entries compress (XorRunsZstd).
    let runs_zstd = run(7, &|e, p| {
        for i in 0..16u64 {
            e.encode_run(0x4000 + i * 0x2000, &page(6), p).unwrap();
        }
        e.flush(p).unwrap();
        p.clear();
        let mut next = page(6);
        next[16] ^= 0x11;
        next[2000] ^= 0x22;
        for i in 0..16u64 {
            e.encode_run(0x4000 + i * 0x2000, &next, p).unwrap();
        }
    });
    assert_eq!(runs_zstd[12], checkpoint::Encoding::XorRunsZstd as u8);
    out.push(("xor-runs-zstd", 7, runs_zstd));
    out
}

/// A checkpoint of a whole epoch: the state sections, memory, a disk.
fn epoch(records: &[DeviceRecord], memory: &[Vec<u8>], incremental: bool) -> Vec<u8> {
    let m = machine();
    let h = if incremental {
        Header::incremental(8, 7, m.fingerprint())
    } else {
        Header::full(7, m.fingerprint())
    };
    let mut w = CheckpointWriter::new(Vec::new(), &h).expect("writer");
    let state = EpochState {
        vcpus: vec![vcpu(0)],
        vm: vm(),
        devices: records.to_vec(),
        console_pos: 12,
        output: b"hello\n".to_vec(),
    };
    snapshot::write_state(&mut w, &m, &state).expect("state sections");
    for p in memory {
        w.write_section(SectionId::Memory, p).expect("memory");
    }
    let mut d = disk::header(0).to_vec();
    let mut enc = MemoryEncoder::new(Compression::Zstd { level: 1 }).expect("encoder");
    enc.encode_run(0x4000, &page(9), &mut d)
        .expect("disk block");
    enc.encode_zero_run(0x8000, 2, &mut d).expect("disk hole");
    w.write_section(SectionId::Disk, &d).expect("disk");
    w.finish().expect("finish")
}

/// Every seed.
pub fn all() -> Vec<Seed> {
    let mut s = Vec::new();
    let records = changed_records();
    let baseline = with_env(|env| env.baseline.clone());
    let pages = page_payloads();

    // checkpoint_container: control byte 7 recomputes every checksum (a
    // no-op on these valid containers, and kept by mutations).
    let t = "checkpoint_container";
    let memory: Vec<Vec<u8>> = pages.iter().take(2).map(|p| p.2.clone()).collect();
    s.push(seed(t, "full", 7, &epoch(&records, &memory, false)));
    let deltas: Vec<Vec<u8>> = pages.iter().skip(4).map(|p| p.2.clone()).collect();
    s.push(seed(
        t,
        "incremental-deltas",
        7,
        &epoch(&records, &deltas, true),
    ));
    let mut w = CheckpointWriter::new(Vec::new(), &Header::full(3, machine().fingerprint()))
        .expect("writer");
    w.write_section(SectionId::Memory, &pages[3].2)
        .expect("memory");
    s.push(seed(t, "precopy", 7, &w.finish().expect("finish")));

    let t = "page_records";
    for (name, ctl, p) in &pages {
        s.push(seed(t, name, *ctl, p));
    }

    let t = "state_codec";
    s.push(seed(t, "vcpus", 0, &snapshot::encode_vcpus(&[vcpu(0)])));
    s.push(seed(t, "vm", 1, &snapshot::encode_vm(&vm())));
    s.push(seed(t, "config", 2, &machine().encode()));
    let mut console = 12u64.to_le_bytes().to_vec();
    console.extend_from_slice(b"hello\n");
    s.push(seed(t, "console", 3, &console));

    let t = "device_records";
    s.push(seed(
        t,
        "section",
        0,
        &section::encode(&records).expect("records"),
    ));
    s.push(seed(
        t,
        "section-baseline",
        0,
        &section::encode(&baseline).expect("records"),
    ));
    let names = ["serial", "debug-exit", "i8042", "virtio-blk", "virtio-net"];
    assert_eq!(records.len(), names.len(), "one seed name per device");
    for (i, (r, name)) in records.iter().zip(names).enumerate() {
        s.push(seed(t, name, i as u8 + 1, &r.data));
    }

    let t = "replication_messages";
    let begin = EpochBegin {
        seq: 9,
        len: 123_456,
        precopy: false,
    };
    s.push(seed(t, "epoch-begin", 0, &wire::encode(&begin)));
    let end = EpochEnd {
        seq: 9,
        output_start: 6,
        output: b"hello\n".to_vec(),
        released: 6,
        net: vec![NetOutput {
            start: 4,
            frames: vec![vec![0; 12 + 60], vec![1; 12 + 42]],
        }],
        net_released: vec![4],
        figures: EpochReport {
            full: false,
            pause_us: 900,
            pages: 12,
            raw_bytes: 12 * 4096,
            last_ack_us: 300,
        },
        memory_hash: Some([0xab; 32]),
        fence: Some(FenceInfo {
            vm: "vm1".into(),
            arbiter: "file:/run/arbiter".into(),
            sync: 3,
            spare: "10.0.0.2:7000".into(),
            async_spare: false,
            peers: vec!["10.0.0.2:7000".into()],
            async_peers: vec!["10.1.0.2:7000".into()],
        }),
    };
    s.push(seed(t, "epoch-end", 1, &wire::encode(&end)));
    s.push(seed(t, "ack", 2, &wire::encode(&Ack { seq: 9 })));
    let nack = Nack {
        seq: 9,
        reason: "memory check failed".into(),
        superseded_by: Some(4),
    };
    s.push(seed(t, "nack", 3, &wire::encode(&nack)));
    s.push(seed(
        t,
        "heartbeat",
        4,
        &wire::encode(&Heartbeat { protected: true }),
    ));
    let rec = Record {
        term: 4,
        primary: "10.0.0.1:7000".into(),
        spares: vec!["10.0.0.2:7000".into()],
        async_spares: vec![],
        protected: true,
        sync: 3,
        stopped: false,
    };
    s.push(seed(t, "arbiter-record", 5, &arbiter::encode(&rec)));

    // handshake: selector, flags, chunk, then the script's fields.
    let t = "handshake";
    let mut valid_i = vec![0x03, 7];
    valid_i.extend_from_slice(&5u64.to_le_bytes());
    s.push(seed(t, "initiator-valid", 1, &valid_i));
    let mut bad_confirm = vec![0x0b, 64];
    bad_confirm.extend_from_slice(&5u64.to_le_bytes());
    bad_confirm.extend_from_slice(&[3, 0, 0x10]);
    s.push(seed(t, "initiator-bad-confirm", 1, &bad_confirm));
    let mut valid_r = vec![0x01, 5, 1];
    valid_r.extend_from_slice(&3u64.to_le_bytes());
    s.push(seed(t, "responder-valid", 2, &valid_r));
    let mut refuse = vec![0x08, 1];
    refuse.extend_from_slice(b"\x02\x0b\x00\x01\x00wrong key");
    s.push(seed(t, "responder-refuses", 2, &refuse));
    let mut raw = vec![0, 3];
    raw.extend_from_slice(b"HSN1\x04\x00\x00\x00\x01\x00\x00\x00\x01\x58\x00");
    raw.extend_from_slice(&[0x11; 88]);
    s.push(seed(t, "raw-preamble-and-message", 0, &raw));

    // frame_reader: mode, chunk u16, then frames or pieces.
    let t = "frame_reader";
    let mut rt = vec![0x00, 0x10];
    // Kind, term, length class (0: near 65,503, 1: near 131,022, else
    // small) and offset or length, fill byte.
    for (kind, class, offset) in [(1u8, 0u8, 128u8), (2, 1, 129), (0, 0, 127)] {
        rt.push(kind);
        rt.extend_from_slice(&7u64.to_le_bytes());
        rt.push(class);
        rt.push(offset);
        rt.push(0x5a);
    }
    rt.extend_from_slice(&[3, 9, 0, 0, 0, 0, 0, 0, 0, 2, 0x90, 0x01, 0xa5]);
    s.push(seed(t, "round-trip", 3, &rt));
    let mut pieces = vec![0x00, 0x02];
    pieces.extend_from_slice(&u32::MAX.to_le_bytes());
    pieces.push(8); // limit 16 MiB
                    // A first record: Ack, term 2, a 5-byte payload.
    pieces.push(1);
    pieces.extend_from_slice(&5u16.to_le_bytes());
    pieces.push(3);
    pieces.extend_from_slice(&2u64.to_le_bytes());
    pieces.extend_from_slice(&5u32.to_le_bytes());
    pieces.extend_from_slice(b"hello");
    // Its replay, then raw garbage.
    pieces.push(2);
    pieces.extend_from_slice(&4u16.to_le_bytes());
    pieces.extend_from_slice(b"abcd");
    pieces.push(4);
    pieces.extend_from_slice(&2u16.to_le_bytes());
    pieces.extend_from_slice(&[0xff, 0xff]);
    s.push(seed(t, "pieces", 0, &pieces));
    s
}

/// Writes every seed to `dir/<target>/<name>`; returns how many.
pub fn write_all(dir: &Path) -> io::Result<usize> {
    let seeds = all();
    for s in &seeds {
        let d = dir.join(s.target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(s.name), &s.bytes)?;
    }
    Ok(seeds.len())
}
