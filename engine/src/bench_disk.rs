//! `hotspare bench-disk`: guest disk throughput unprotected vs protected
//! (`--disk-ack memory` and `durable`) in the same run, with the disk bytes
//! per epoch and the pause phases (the device quiesce included) from the
//! primary's `--stats-json`.
//!
//! The workload is the bundled `diskcheck` guest: each op reads a random
//! 4 KiB block, checks it, and writes its next version (two requests), with
//! a FLUSH every `--flush` ops (default none). Figures are medians over `--reps`; wall times cover
//! the whole run (VM creation, and when protected the initial sync).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::bench::{median, pct};
use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::demo::{guest_run, spawn_standby};

#[derive(clap::Args)]
pub struct BenchDiskArgs {
    /// Guest ops (one 4 KiB read and one 4 KiB write each).
    #[arg(long, default_value_t = 20000)]
    ops: u64,
    /// Disk blocks (4 KiB) the guest works on.
    #[arg(long, default_value_t = 1024)]
    blocks: u64,
    /// Epoch interval in milliseconds.
    #[arg(long, default_value_t = 25)]
    interval_ms: u64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// The guest sends FLUSH every this many ops (0: never; a host fsync
    /// then varies with the host's storage, not with replication).
    #[arg(long, default_value_t = 0)]
    flush: u64,
    /// Output directory (bench-disk.json, bench-disk.md).
    #[arg(long, default_value = "bench-disk-out")]
    out: PathBuf,
}

fn image(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(bytes))
        .with_context(|| format!("creating {}", path.display()))
}

/// One run: wall seconds, and the primary's stats JSON when protected.
fn one(
    a: &BenchDiskArgs,
    exe: &Path,
    guest: &Path,
    work: &Path,
    ack: Option<&str>,
) -> anyhow::Result<(f64, Option<Value>)> {
    let bytes = (a.blocks * 4096).max(1 << 20);
    let (disk, replica) = (work.join("disk.img"), work.join("replica.img"));
    image(&disk, bytes)?;
    let cmdline = format!(
        "blocks={} ops={} every={} flush={}",
        a.blocks,
        a.ops,
        a.ops.max(1),
        a.flush
    );
    let console = work.join("console.txt");
    let mut cmd = guest_run(exe, guest, 64, &cmdline, &console);
    cmd.arg("--disk").arg(&disk);
    let mut standby = None;
    let stats = work.join("stats.json");
    if let Some(ack) = ack {
        image(&replica, bytes)?;
        let key = work.join("key");
        crate::fresh_key(&key)?;
        let (s, addr) = spawn_standby(
            exe,
            &key,
            Path::new("/dev/null"),
            &[
                "--disk-ack".as_ref(),
                ack.as_ref(),
                "--disk".as_ref(),
                replica.as_os_str(),
            ],
        )?;
        cmd.arg("--shadow")
            .arg(addr)
            .arg("--key-file")
            .arg(&key)
            .arg("--arbiter")
            .arg(crate::demo::arbiter_arg(&key))
            .arg("--vm-id")
            .arg(format!("bench-disk-{ack}"))
            .arg("--interval-ms")
            .arg(a.interval_ms.to_string())
            .arg("--stats-json")
            .arg(&stats);
        standby = Some(s);
    }
    let t = Instant::now();
    let st = cmd.stdin(Stdio::null()).stderr(Stdio::null()).status()?;
    let wall = t.elapsed().as_secs_f64();
    let out = std::fs::read_to_string(&console).unwrap_or_default();
    if !st.success() || !out.contains("result=ok") {
        bail!("the disk guest failed ({st}):\n{out}");
    }
    drop(standby);
    let json = match ack {
        Some(_) => Some(serde_json::from_str(&std::fs::read_to_string(&stats)?)?),
        None => None,
    };
    Ok((wall, json))
}

/// Per-epoch figures of a protected run (incremental epochs only).
fn epochs(v: &Value) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut blocks, mut pause, mut quiesce, mut wire) = (vec![], vec![], vec![], vec![]);
    for e in v["epochs"].as_array().into_iter().flatten() {
        if e["full"].as_bool() == Some(true) {
            continue;
        }
        let f = |k: &str| e[k].as_f64().unwrap_or(0.0);
        blocks.push(f("disk_blocks"));
        pause.push(f("pause_us") / 1e3);
        quiesce.push(f("quiesce_us") / 1e3);
        wire.push(f("wire_bytes"));
    }
    (blocks, pause, quiesce, wire)
}

pub fn bench_disk(a: BenchDiskArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&a.out)?;
    let work = a.out.join("work");
    std::fs::create_dir_all(&work)?;
    let exe = std::env::current_exe()?;
    let guest = work.join("diskcheck.elf");
    std::fs::write(&guest, crate::demo_disk::GUEST)?;
    let modes: [(&str, Option<&str>); 3] = [
        ("unprotected", None),
        ("protected, --disk-ack memory", Some("memory")),
        ("protected, --disk-ack durable", Some("durable")),
    ];
    let mut rows = Vec::new();
    let mut base_wall = 0.0;
    for (name, ack) in modes {
        let mut walls = Vec::new();
        let (mut blocks, mut pause, mut quiesce, mut wire) = (vec![], vec![], vec![], vec![]);
        for _ in 0..a.reps {
            let (wall, stats) = one(&a, &exe, &guest, &work, ack)?;
            walls.push(wall);
            if let Some(s) = stats {
                let (b, p, q, w) = epochs(&s);
                blocks.extend(b);
                pause.extend(p);
                quiesce.extend(q);
                wire.extend(w);
            }
        }
        let wall = median(walls);
        if ack.is_none() {
            base_wall = wall;
        }
        let ops = a.ops as f64;
        let row = json!({
            "mode": name,
            "wall_s": wall,
            "iops": (2.0 * ops + a.blocks as f64) / wall,
            "write_mib_s": ops * 4096.0 / wall / (1 << 20) as f64,
            "throughput_vs_unprotected": if wall > 0.0 { base_wall / wall } else { 0.0 },
            "disk_kib_per_epoch_p50": median(blocks.clone()) * 4.0,
            "disk_kib_per_epoch_p99": pct(blocks, 0.99) * 4.0,
            "wire_kib_per_epoch_p50": median(wire) / 1024.0,
            "pause_ms_p50": median(pause.clone()),
            "pause_ms_p99": pct(pause, 0.99),
            "quiesce_ms_p50": median(quiesce.clone()),
            "quiesce_ms_p99": pct(quiesce, 0.99),
        });
        eprintln!("bench-disk: {name}: {row}");
        rows.push(row);
    }
    let report = json!({
        "config": {"ops": a.ops, "blocks": a.blocks, "flush": a.flush, "interval_ms": a.interval_ms, "reps": a.reps},
        "runs": rows,
    });
    std::fs::write(
        a.out.join("bench-disk.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = format!(
        "# Disk bench: {} ops (4 KiB read + write each, FLUSH every {} ops) on {} blocks, epochs every {} ms, median of {}\n\n\
         | mode | wall s | IOPS | write MiB/s | vs unprotected | disk KiB/epoch p50 (p99) | wire KiB/epoch p50 | pause ms p50 (p99) | quiesce ms p50 (p99) |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        a.ops, a.flush, a.blocks, a.interval_ms, a.reps
    );
    for r in &report["runs"].as_array().cloned().unwrap_or_default() {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.2}x | {:.0} ({:.0}) | {:.0} | {:.2} ({:.2}) | {:.3} ({:.3}) |\n",
            r["mode"].as_str().unwrap_or(""),
            f("wall_s"),
            f("iops"),
            f("write_mib_s"),
            f("throughput_vs_unprotected"),
            f("disk_kib_per_epoch_p50"),
            f("disk_kib_per_epoch_p99"),
            f("wire_kib_per_epoch_p50"),
            f("pause_ms_p50"),
            f("pause_ms_p99"),
            f("quiesce_ms_p50"),
            f("quiesce_ms_p99"),
        ));
    }
    std::fs::write(a.out.join("bench-disk.md"), &md)?;
    print!("{md}");
    Ok(0)
}
