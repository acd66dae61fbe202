//! The checkpoint container: writing a checkpoint (a Config section and
//! Memory sections holding 16 MiB of `Profile::Mixed` guest pages) into a
//! `Vec`, and `verify`ing it (header, section CRCs, End section, Config
//! fingerprint, every page record incl. zstd decompression).
//!
//! `encode+write` allocates its buffers afresh each time, as the engine's
//! store does; `encode+write_reused` keeps them from one iteration to the
//! next, to show what faulting in fresh memory costs.
//!
//! Throughput is in guest bytes (16 MiB per iteration) for every case, so
//! the figures read as GiB of guest memory per second; the container sizes
//! are printed at start-up.

use std::hint::black_box;
use std::time::Duration;

use benches::{Profile, PAGE_SIZE};
use checkpoint::pages::RECOMMENDED_RUN_PAGES;
use checkpoint::{
    verify, CheckpointWriter, Compression, Fingerprint, Header, Limits, MachineConfig, MemRegion,
    MemoryEncoder, SectionId,
};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

/// Guest bytes per checkpoint.
const GUEST_BYTES: usize = 16 << 20;
/// Raw guest bytes per Memory section, as the engine's store cuts them.
const SECTION_RAW_BYTES: usize = 8 << 20;

fn machine() -> MachineConfig {
    MachineConfig {
        mem_regions: vec![MemRegion {
            guest_addr: 0,
            size: 1 << 30,
        }],
        vcpus: 2,
        // Stand-in for a CPUID table of ~80 entries.
        cpuid: (0..80 * 40).map(|i| (i * 7) as u8).collect(),
        disks: Vec::new(),
    }
}

/// Encodes `guest` into Memory section payloads the way the engine's store
/// does: runs of at most 2048 pages, a section per 8 MiB of guest memory.
/// Fresh buffers every time, as the store allocates them today.
fn encode_sections(enc: &mut MemoryEncoder, guest: &[u8]) -> Vec<Vec<u8>> {
    let mut sections = Vec::new();
    encode_sections_into(enc, guest, &mut sections);
    sections
}

/// Like [`encode_sections`], reusing the buffers in `sections` (extended
/// as needed, each cleared first).
fn encode_sections_into(enc: &mut MemoryEncoder, guest: &[u8], sections: &mut Vec<Vec<u8>>) {
    for (s, section) in guest.chunks(SECTION_RAW_BYTES).enumerate() {
        if sections.len() <= s {
            sections.push(Vec::new());
        }
        let payload = &mut sections[s];
        payload.clear();
        for (i, run) in section
            .chunks(RECOMMENDED_RUN_PAGES * PAGE_SIZE)
            .enumerate()
        {
            let gpa = (s * SECTION_RAW_BYTES + i * RECOMMENDED_RUN_PAGES * PAGE_SIZE) as u64;
            enc.encode_run(gpa, run, payload).expect("encode");
        }
    }
}

fn write_container(fp: Fingerprint, config: &[u8], sections: &[Vec<u8>], cap: usize) -> Vec<u8> {
    let mut w =
        CheckpointWriter::new(Vec::with_capacity(cap), &Header::full(1, fp)).expect("header");
    w.write_section(SectionId::Config, config).expect("config");
    for s in sections {
        w.write_section(SectionId::Memory, s).expect("memory");
    }
    w.finish().expect("finish")
}

fn container(c: &mut Criterion) {
    let cfg = machine();
    let fp = cfg.fingerprint();
    let config = cfg.encode();
    let guest = Profile::Mixed.run(GUEST_BYTES / PAGE_SIZE, 21);

    let mut g = c.benchmark_group("container_16MiB");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .throughput(Throughput::Bytes(GUEST_BYTES as u64));

    for (cname, comp) in [
        ("none", Compression::None),
        ("zstd1", Compression::Zstd { level: 1 }),
    ] {
        let mut enc = MemoryEncoder::new(comp).expect("encoder");
        let sections = encode_sections(&mut enc, &guest);
        let bytes = write_container(fp, &config, &sections, GUEST_BYTES + (1 << 20));
        eprintln!(
            "container {cname}: {} bytes for {GUEST_BYTES} guest bytes ({:.3}), {} Memory sections",
            bytes.len(),
            bytes.len() as f64 / GUEST_BYTES as f64,
            sections.len()
        );
        verify(&bytes[..], &Limits::default(), Some(&fp)).expect("valid checkpoint");
        let cap = bytes.len();

        g.bench_function(BenchmarkId::new("write", cname), |b| {
            b.iter(|| write_container(fp, &config, black_box(&sections), cap).len())
        });
        g.bench_function(BenchmarkId::new("encode+write", cname), |b| {
            b.iter(|| {
                let sections = encode_sections(&mut enc, black_box(&guest));
                write_container(fp, &config, &sections, cap).len()
            })
        });
        // The same work with the section and container buffers kept from
        // one iteration to the next: no fresh memory to fault in.
        let mut kept_sections = Vec::new();
        let mut kept_out = Vec::with_capacity(cap);
        g.bench_function(BenchmarkId::new("encode+write_reused", cname), |b| {
            b.iter(|| {
                encode_sections_into(&mut enc, black_box(&guest), &mut kept_sections);
                kept_out.clear();
                let mut w =
                    CheckpointWriter::new(&mut kept_out, &Header::full(1, fp)).expect("header");
                w.write_section(SectionId::Config, &config).expect("config");
                for s in &kept_sections {
                    w.write_section(SectionId::Memory, s).expect("memory");
                }
                w.finish().expect("finish").len()
            })
        });
        g.bench_function(BenchmarkId::new("verify", cname), |b| {
            b.iter(|| verify(black_box(&bytes[..]), &Limits::default(), Some(&fp)).expect("valid"))
        });
    }
    g.finish();
}

criterion_group!(benches, container);
criterion_main!(benches);
