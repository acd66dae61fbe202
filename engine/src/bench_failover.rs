//! `hotspare bench-failover`: from SIGKILL of the primary to the guest
//! running again on the standby, with no arbiter, the embedded file
//! arbiter, and a real etcd on loopback, interleaved trial by trial in one
//! run so the three see the same machine.
//!
//! The figures come from the standby's `--stats-json` (typed, not scraped
//! from its log): the wall-clock moment its vCPUs ran again, minus the
//! moment the bench sent SIGKILL, plus the standby's split into detection,
//! arbiter and activation.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::bench::pct;
use crate::demo::{guest_run, random_ms, Child, GUEST};

#[derive(clap::Args)]
pub struct BenchFailoverArgs {
    /// Trials per arbiter.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Arbiters to compare, comma-separated: none, file, etcd.
    #[arg(long, default_value = "none,file,etcd")]
    arbiters: String,
    /// Epoch interval in milliseconds.
    #[arg(long, default_value_t = 25)]
    interval_ms: u64,
    /// Output directory (bench-failover.json and .md).
    #[arg(long, default_value = "bench-failover-out")]
    out: PathBuf,
}

/// An etcd on loopback for the bench (Debian's etcd-server).
struct LocalEtcd {
    child: std::process::Child,
    client: String,
}

impl LocalEtcd {
    fn start(dir: &Path) -> anyhow::Result<LocalEtcd> {
        let port = |_: ()| -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (client, peer) = (
            format!("127.0.0.1:{}", port(())?),
            format!("http://127.0.0.1:{}", port(())?),
        );
        let data = dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log"))?)
            .spawn()
            .context("starting etcd (Debian's etcd-server; scripts/setup.sh installs it)")?;
        let mut etcd = LocalEtcd { child, client };
        let mut probe =
            crate_arbiter(&format!("etcd://{}", etcd.client)).context("the bench's etcd")?;
        let end = Instant::now() + Duration::from_secs(20);
        while probe.read("probe").is_err() {
            if Instant::now() > end || etcd.child.try_wait()?.is_some() {
                let _ = etcd.child.kill();
                bail!("etcd did not answer within 20 s (see etcd.log)");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(etcd)
    }
}

fn crate_arbiter(spec: &str) -> anyhow::Result<Box<dyn engine::replication::arbiter::Arbiter>> {
    engine::replication::arbiter::open(spec)?.context("an arbiter spec, not none")
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One failover: kill-to-running and the standby's split, in ms.
struct Trial {
    kill_to_running: f64,
    detection: f64,
    arbiter: f64,
    activation: f64,
}

fn trial(
    a: &BenchFailoverArgs,
    exe: &Path,
    guest: &Path,
    key: &Path,
    arbiter: &str,
    n: usize,
) -> anyhow::Result<Option<Trial>> {
    let tag = format!("{}-{n}", arbiter.split(':').next().unwrap_or("x"));
    let stats = a.out.join(format!("takeover-{tag}.json"));
    let _ = std::fs::remove_file(&stats);
    let mut standby = Child::spawn_with_events(
        Command::new(exe)
            .args(["standby", "--listen", "127.0.0.1:0", "--key-file"])
            .arg(key)
            .args([
                "--arbiter",
                arbiter,
                "--console",
                "/dev/null",
                "--stats-json",
            ])
            .arg(&stats),
        &stats.with_extension("events"),
    )?;
    let addr = standby.wait_listening(Duration::from_secs(10))?;
    let addr = addr.as_str();
    let mut primary = Child::spawn(
        guest_run(
            exe,
            guest,
            128,
            "rounds=2000 pages=1024 writes=2000 sleep=2",
            Path::new("/dev/null"),
        )
        .args(["--shadow", addr, "--key-file"])
        .arg(key)
        .args([
            "--arbiter",
            arbiter,
            "--vm-id",
            &format!("bench-failover-{tag}"),
        ])
        .args(["--interval-ms", &a.interval_ms.to_string()]),
    )?;
    standby.wait_in_sync(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(random_ms(200, 700)));
    if primary.child.try_wait()?.is_some() {
        return Ok(None);
    }
    let kill_at = SystemTime::now();
    primary.child.kill()?;
    let _ = primary.child.wait();
    let end = Instant::now() + Duration::from_secs(10);
    let v: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&stats) {
            if let Ok(v) = serde_json::from_str(&text) {
                break v;
            }
        }
        if Instant::now() > end || standby.child.try_wait()?.is_some() {
            bail!(
                "{tag}: no takeover figures; the standby said:\n{}",
                standby.all()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let t = &v["takeover"];
    let running = t["running_at_unix_ns"].as_u64().unwrap_or(0);
    let killed = kill_at.duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let ms = |k: &str| t[k].as_u64().unwrap_or(0) as f64 / 1e3;
    Ok(Some(Trial {
        kill_to_running: running.saturating_sub(killed) as f64 / 1e6,
        detection: ms("detection_us"),
        arbiter: ms("arbiter_us"),
        activation: ms("activation_us"),
    }))
}

pub fn bench_failover(a: BenchFailoverArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&a.out)?;
    let exe = std::env::current_exe()?;
    let guest = a.out.join("memtest.elf");
    std::fs::write(&guest, GUEST)?;
    let key = a.out.join("key");
    crate::fresh_key(&key)?;
    let _ = std::fs::remove_file(a.out.join("arbiter"));
    let names: Vec<&str> = a.arbiters.split(',').map(str::trim).collect();
    let etcd = if names.contains(&"etcd") {
        Some(LocalEtcd::start(&a.out)?)
    } else {
        None
    };
    let spec = |name: &str| -> anyhow::Result<String> {
        Ok(match name {
            "none" => "none".into(),
            "file" => crate::demo::arbiter_arg(&key),
            "etcd" => format!(
                "etcd://{}",
                etcd.as_ref().map(|e| e.client.as_str()).unwrap_or("")
            ),
            other => bail!("--arbiters: unknown arbiter {other:?} (none, file, etcd)"),
        })
    };
    let mut results: Vec<(String, Vec<Trial>)> =
        names.iter().map(|n| (n.to_string(), Vec::new())).collect();
    for n in 0..a.trials {
        for (name, trials) in results.iter_mut() {
            if let Some(t) = trial(&a, &exe, &guest, &key, &spec(name)?, n)? {
                trials.push(t);
            }
        }
        println!("trial {}/{} done", n + 1, a.trials);
    }
    // Each arbiter's figures, computed once for both the table and the JSON.
    let figures: Vec<(&String, usize, Value)> = results
        .iter()
        .map(|(name, trials)| {
            let of = |f: fn(&Trial) -> f64| trials.iter().map(f).collect::<Vec<f64>>();
            let (k, det, arb, act) = (
                of(|t| t.kill_to_running),
                of(|t| t.detection),
                of(|t| t.arbiter),
                of(|t| t.activation),
            );
            let v = json!({
                "trials": k.len(),
                "kill_to_running_ms": {"p50": pct(k.clone(), 0.5), "p99": pct(k.clone(), 0.99), "max": pct(k, 1.0)},
                "detection_ms_p50": pct(det, 0.5),
                "arbiter_ms": {"p50": pct(arb.clone(), 0.5), "p99": pct(arb, 0.99)},
                "activation_ms_p50": pct(act, 0.5),
            });
            (name, trials.len(), v)
        })
        .collect();
    let g = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
    let base = figures
        .iter()
        .find(|f| f.0 == "none")
        .map(|f| g(&f.2, "/kill_to_running_ms/p50"));
    let mut json = serde_json::Map::new();
    let mut md = String::from(
        "| arbiter | trials | kill to running p50 / p99 / max (ms) | vs none (p50) | detection p50 | arbiter p50 / p99 | activation p50 |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (name, n, mut v) in figures {
        let ratio = base.map(|b| g(&v, "/kill_to_running_ms/p50") / b.max(1e-9));
        v["ratio_p50_vs_none"] = json!(ratio);
        md += &format!(
            "| {name} | {n} | {:.1} / {:.1} / {:.1} | {} | {:.1} ms | {:.2} / {:.2} ms | {:.2} ms |\n",
            g(&v, "/kill_to_running_ms/p50"),
            g(&v, "/kill_to_running_ms/p99"),
            g(&v, "/kill_to_running_ms/max"),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            g(&v, "/detection_ms_p50"),
            g(&v, "/arbiter_ms/p50"),
            g(&v, "/arbiter_ms/p99"),
            g(&v, "/activation_ms_p50"),
        );
        json.insert(name.clone(), v);
    }
    std::fs::write(
        a.out.join("bench-failover.json"),
        serde_json::to_vec_pretty(&Value::Object(json))?,
    )?;
    std::fs::write(a.out.join("bench-failover.md"), &md)?;
    println!("{md}");
    Ok(0)
}
