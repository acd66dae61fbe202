//! `hotspare bench-net`: what network output commit costs a client, in
//! one run: ping RTT and UDP request/response latency and rate to the
//! bundled `netcheck` guest, unprotected, protected with epochs on the
//! interval only (`--min-interval-ms 0`), and protected with
//! output-triggered epochs (the default). The lab is `netlab`'s: network
//! namespaces for a client and two hosts on a switch (root needed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use netlab::{quantile, NetLab, ReplyLog};
use serde_json::{json, Value};

use crate::demo_net::{drive, start};

#[derive(clap::Args)]
pub struct BenchNetArgs {
    /// Epoch interval in milliseconds.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Pings per mode (at 10 ms intervals).
    #[arg(long, default_value_t = 300)]
    pings: u32,
    /// Seconds of back-to-back requests per mode.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Output directory (bench-net.json, bench-net.md).
    #[arg(long, default_value = "bench-net-out")]
    out: PathBuf,
}

fn measure(
    a: &BenchNetArgs,
    lab: &NetLab,
    name: &str,
    protect: Option<&[&str]>,
) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let work = a.out.join("work");
    std::fs::create_dir_all(&work)?;
    let vm = start(&exe, lab, &work, a.interval_ms, protect)?;
    let (answered, dups, mut rtts) = lab.ping_rtts(a.pings, 0.01).map_err(anyhow::Error::msg)?;
    let sock = lab.client_socket()?;
    let mut log = ReplyLog::default();
    let mut id = 0;
    let t = Instant::now();
    let until = t + Duration::from_secs_f64(a.seconds);
    if let Err(e) = drive(lab, &sock, &mut log, &mut id, until) {
        anyhow::bail!(
            "{name}: {e}\nprimary:\n{}\nstandby:\n{}",
            vm.primary.all(),
            vm.standby.as_ref().map(|s| s.all()).unwrap_or_default()
        );
    }
    let secs = t.elapsed().as_secs_f64();
    drop(vm);
    let mut lat: Vec<f64> = log
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let row = json!({
        "mode": name,
        "pings": a.pings,
        "ping_answered": answered,
        "ping_duplicates": dups,
        "ping_rtt_ms_p50": quantile(&mut rtts, 0.5),
        "ping_rtt_ms_p99": quantile(&mut rtts, 0.99),
        "requests": log.replies.len(),
        "requests_per_s": log.replies.len() as f64 / secs,
        "request_ms_p50": quantile(&mut lat, 0.5),
        "request_ms_p99": quantile(&mut lat, 0.99),
    });
    eprintln!("bench-net: {name}: {row}");
    Ok(row)
}

pub fn bench_net(a: BenchNetArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&a.out)?;
    let lab = NetLab::create()
        .map_err(anyhow::Error::msg)
        .context("bench-net builds a lab of network namespaces")?;
    let modes: [(&str, Option<&[&str]>); 3] = [
        ("unprotected", None),
        (
            "protected, interval only (--min-interval-ms 0)",
            Some(&["--min-interval-ms", "0"]),
        ),
        ("protected, output-triggered epochs (default)", Some(&[])),
    ];
    let mut rows = Vec::new();
    for (name, protect) in modes {
        rows.push(measure(&a, &lab, name, protect)?);
    }
    let base = |k: &str| rows[0][k].as_f64().unwrap_or(0.0);
    let (base_rtt, base_rate) = (base("ping_rtt_ms_p50"), base("requests_per_s"));
    for r in &mut rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let (rtt, rate) = (f("ping_rtt_ms_p50"), f("requests_per_s"));
        r["rtt_p50_vs_unprotected"] = json!(if base_rtt > 0.0 { rtt / base_rtt } else { 0.0 });
        r["rate_vs_unprotected"] = json!(if base_rate > 0.0 {
            rate / base_rate
        } else {
            0.0
        });
        r["rtt_p50_vs_interval"] = json!(rtt / a.interval_ms as f64);
    }
    let report = json!({
        "config": {"interval_ms": a.interval_ms, "pings": a.pings, "seconds": a.seconds},
        "runs": rows,
    });
    std::fs::write(
        a.out.join("bench-net.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = format!(
        "# Network bench: netcheck guest, epochs every {} ms; {} pings at 10 ms, {} s of back-to-back UDP requests per mode\n\n\
         | mode | ping RTT ms p50 (p99) | vs unprotected | p50 / interval | requests/s | vs unprotected | request ms p50 (p99) |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        a.interval_ms, a.pings, a.seconds
    );
    for r in &report["runs"].as_array().cloned().unwrap_or_default() {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {} | {:.3} ({:.3}) | {:.1}x | {:.3} | {:.0} | {:.3}x | {:.3} ({:.3}) |\n",
            r["mode"].as_str().unwrap_or(""),
            f("ping_rtt_ms_p50"),
            f("ping_rtt_ms_p99"),
            f("rtt_p50_vs_unprotected"),
            f("rtt_p50_vs_interval"),
            f("requests_per_s"),
            f("rate_vs_unprotected"),
            f("request_ms_p50"),
            f("request_ms_p99"),
        ));
    }
    md.push_str(
        "\nThe target of issue #10: protected ping RTT p50 at most a quarter of the interval (p50 / interval <= 0.25).\n",
    );
    std::fs::write(a.out.join("bench-net.md"), &md)?;
    print!("{md}");
    Ok(0)
}
