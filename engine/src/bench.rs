//! `hotspare bench`: the measurement harness.
//!
//! One command runs the bundled guest with a chosen workload three ways, in
//! the same run so that ratios are meaningful on a noisy machine:
//! 1. unprotected (the baseline for the guest's own progress rate);
//! 2. replicated to a standby on loopback, to completion (per-epoch figures
//!    from the primary's `--stats-json`, the shadow's CPU time);
//! 3. replicated again, SIGKILLing the primary midway (detection and
//!    activation at takeover), unless `--no-takeover`.
//!
//! Repeats `--reps` times and reports medians, as JSON (`bench.json`) and a
//! Markdown table (`bench.md`, also printed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::demo::GUEST;
use engine::events::Event;

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Output directory (bench.json, bench.md, raw per-run JSON).
    #[arg(long, default_value = "bench-out")]
    pub(crate) out: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub(crate) mem_mib: u64,
    /// Guest sizes in MiB to sweep (e.g. `256,1024,4096,8192`): the whole
    /// bench runs once per size into `OUT/<size>mib/`, then `sizes.md`,
    /// `sizes.json` and `sizes.svg` compare them. Replaces --mem-mib.
    #[arg(long, value_delimiter = ',')]
    pub(crate) sizes: Vec<u64>,
    /// Workload pattern of the memory tester: sparse, pages, text, hot,
    /// sweep, mixed.
    #[arg(long, default_value = "mixed")]
    profile: String,
    /// Initial page contents: random or text.
    #[arg(long, default_value = "random")]
    fill: String,
    /// Page writes per second, paced by the TSC (0: unpaced; --spin then
    /// sets the rate).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Working set in 4 KiB pages.
    #[arg(long, default_value_t = 4096)]
    pages: u64,
    /// Page writes per round.
    #[arg(long, default_value_t = 30000)]
    writes: u64,
    /// Busy-loop iterations after each write (lowers the dirty rate).
    #[arg(long, default_value_t = 0)]
    spin: u64,
    /// Rounds of the workload (sets the run length).
    #[arg(long, default_value_t = 300)]
    rounds: u64,
    /// Epoch interval in milliseconds.
    #[arg(long, default_value_t = 25)]
    interval_ms: u64,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Leave out of the per-epoch figures (pause, pages, bytes) the epochs
    /// of the first N ms after the first one: the guest's start-up writes
    /// its whole working set once, which no steady-state profile is about.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Skip the takeover measurement.
    #[arg(long)]
    no_takeover: bool,
    /// Pass --pin to the primary (engine and vCPU threads on different CPUs).
    #[arg(long)]
    pin: bool,
    /// Page compression for the stream: zstd or none.
    #[arg(long, default_value = "zstd")]
    compress: String,
    /// Passed to `hotspare run`: above --interval-ms it turns the
    /// epoch-length policy on (default there: off).
    #[arg(long)]
    max_interval_ms: Option<u64>,
    /// Synchronous spares per replicated run. A list (e.g. `1,2,3`) runs
    /// every count in each rep; the table then adds, per count, the
    /// primary's engine CPU per dirty page as a ratio to the first count's.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    spares: Vec<usize>,
}

/// The middle value (0 for none); the benches' one median.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` quantile, nearest rank (0 for none); the benches' one percentile.
pub(crate) fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Run {
    stats: Value,
    wall: f64,
    shadow_cpu: f64,
    /// The standby's CPU time by thread name, s.
    shadow_threads: BTreeMap<String, f64>,
    /// Each standby's CPU marks.
    shadow_marks: Vec<Vec<engine::cpu::CpuMark>>,
}

fn child(cmd: &mut Command) -> anyhow::Result<std::process::Child> {
    cmd.stdin(Stdio::null())
        .spawn()
        .context("spawning hotspare")
}

fn read_to(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The whole-line events in a process's `--events` file so far (a line
/// that is not an event is skipped: a newer writer's kind).
fn read_events(path: &Path) -> Vec<Event> {
    engine::events::read_file(path)
        .into_iter()
        .filter_map(|l| l.ok())
        .map(|l| l.event)
        .collect()
}

struct Setup {
    exe: PathBuf,
    guest: PathBuf,
    key: PathBuf,
    dir: PathBuf,
    cmdline: String,
}

/// Every primary of a bench run gets its own VM id in the arbiter.
static VM_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Setup {
    fn run_cmd(&self, a: &BenchArgs, console: &Path) -> Command {
        crate::demo::guest_run(&self.exe, &self.guest, a.mem_mib, &self.cmdline, console)
    }

    /// A standby: (process, address, its events file).
    fn standby(&self, tag: &str) -> anyhow::Result<(std::process::Child, String, PathBuf)> {
        let log = self.dir.join(format!("standby-{tag}.log"));
        let events = self.dir.join(format!("standby-{tag}.events"));
        let _ = std::fs::remove_file(&events);
        let mut s = child(
            Command::new(&self.exe)
                .args(["standby", "--listen", "127.0.0.1:0", "--key-file"])
                .arg(&self.key)
                .arg("--arbiter")
                .arg(crate::demo::arbiter_arg(&self.key))
                .arg("--console")
                .arg(self.dir.join(format!("shadow-{tag}.txt")))
                .arg("--events")
                .arg(&events)
                .stderr(std::fs::File::create(&log)?),
        )?;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let addr = read_events(&events).into_iter().find_map(|e| match e {
                Event::Listening { addr } => Some(addr),
                _ => None,
            });
            if let Some(addr) = addr {
                return Ok((s, addr, events));
            }
            if Instant::now() > end || s.try_wait()?.is_some() {
                let _ = s.kill();
                bail!("the standby did not start: {}", read_to(&log));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn primary(&self, a: &BenchArgs, tag: &str, addrs: &[String]) -> Command {
        let mut c = self.run_cmd(a, &self.dir.join(format!("primary-{tag}.txt")));
        for addr in addrs {
            c.arg("--shadow").arg(addr);
        }
        c.arg("--key-file")
            .arg(&self.key)
            .arg("--arbiter")
            .arg(crate::demo::arbiter_arg(&self.key))
            .arg("--vm-id")
            .arg(format!(
                "bench-{tag}-{}",
                VM_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
            .arg("--interval-ms")
            .arg(a.interval_ms.to_string())
            .arg("--compress")
            .arg(&a.compress)
            .args(
                a.max_interval_ms
                    .map(|m| vec!["--max-interval-ms".to_string(), m.to_string()])
                    .unwrap_or_default(),
            )
            .arg("--stats-json")
            .arg(self.dir.join(format!("stats-{tag}.json")))
            .stderr(
                std::fs::File::create(self.dir.join(format!("primary-{tag}.log")))
                    .expect("log file"),
            );
        if a.pin {
            c.arg("--pin");
        }
        c
    }
}

fn replicated(s: &Setup, a: &BenchArgs, tag: &str, spares: usize) -> anyhow::Result<Run> {
    let mut standbys = Vec::new();
    for i in 0..spares {
        standbys.push(s.standby(&format!("{tag}-{i}"))?);
    }
    let addrs: Vec<String> = standbys.iter().map(|s| s.1.clone()).collect();
    let t = Instant::now();
    let st = s
        .primary(a, tag, &addrs)
        .status()
        .context("running the primary")?;
    let wall = t.elapsed().as_secs_f64();
    if !st.success() {
        for (mut sb, _, _) in standbys {
            let _ = sb.kill();
        }
        bail!(
            "the protected run failed: {st}; see {}",
            s.dir.join(format!("primary-{tag}.log")).display()
        );
    }
    let mut shadow_cpu = 0.0;
    let mut shadow_threads = BTreeMap::new();
    let mut shadow_marks = Vec::new();
    for (mut sb, _, events) in standbys {
        let _ = sb.wait();
        let evs = read_events(&events);
        shadow_marks.push(
            evs.iter()
                .filter_map(|e| match e {
                    Event::CpuMark(m) => Some(m.clone()),
                    _ => None,
                })
                .collect(),
        );
        if let Some((cpu_s, threads)) = evs.into_iter().find_map(|e| match e {
            Event::StandbyEnded {
                cpu_s,
                threads_cpu_s,
                ..
            } => Some((cpu_s, threads_cpu_s)),
            _ => None,
        }) {
            shadow_cpu += cpu_s;
            for (n, t) in threads {
                *shadow_threads.entry(n).or_insert(0.0) += t;
            }
        }
    }
    let stats: Value = serde_json::from_str(&read_to(&s.dir.join(format!("stats-{tag}.json"))))
        .context("reading the primary's stats")?;
    Ok(Run {
        stats,
        wall,
        shadow_cpu,
        shadow_threads,
        shadow_marks,
    })
}

fn takeover(
    s: &Setup,
    a: &BenchArgs,
    tag: &str,
    after: Duration,
) -> anyhow::Result<Option<(f64, f64)>> {
    let (mut standby, addr, events) = s.standby(tag)?;
    let mut p = child(&mut s.primary(a, tag, &[addr]))?;
    let end = Instant::now() + Duration::from_secs(30);
    while !read_events(&events)
        .iter()
        .any(|e| matches!(e, Event::InSync { .. }))
    {
        if Instant::now() > end {
            let _ = p.kill();
            let _ = standby.kill();
            bail!("the standby never synced");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(after);
    p.kill().context("SIGKILL of the primary")?;
    let _ = p.wait();
    let _ = standby.wait();
    let evs = read_events(&events);
    if evs.iter().any(|e| matches!(e, Event::StandbyEnded { .. })) {
        println!("  (the guest finished before the kill: no takeover measured this rep)");
        return Ok(None);
    }
    match evs.iter().find_map(|e| match e {
        Event::TookOver {
            detection_ms,
            activation_ms,
            ..
        } => Some((*detection_ms, *activation_ms)),
        _ => None,
    }) {
        Some(x) => Ok(Some(x)),
        None => bail!("no takeover event from the standby: {evs:?}"),
    }
}

/// Runs the benchmark.
pub fn bench(a: BenchArgs) -> anyhow::Result<i32> {
    if !a.sizes.is_empty() {
        return crate::bench_sizes::sweep(a);
    }
    if a.spares.is_empty() || a.spares.iter().any(|&n| n == 0 || n > 8) {
        bail!("--spares: give 1 to 8 spares per run (e.g. 1,2,3)");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let dir = a.out.join("runs");
    std::fs::create_dir_all(&dir)?;
    let guest = dir.join("memtest.elf");
    std::fs::write(&guest, GUEST)?;
    let key = dir.join("key");
    crate::fresh_key(&key)?;
    let s = Setup {
        exe: std::env::current_exe()?,
        guest,
        key,
        dir: dir.clone(),
        cmdline: format!(
            "rounds={} pages={} writes={} spin={} pattern={} fill={}{}",
            a.rounds,
            a.pages,
            a.writes,
            a.spin,
            a.profile,
            a.fill,
            if a.rate > 0 {
                format!(" rate={} tsc_khz={}", a.rate, engine::cpu::tsc_khz())
            } else {
                String::new()
            }
        ),
    };
    println!(
        "hotspare bench: {} MiB guest, workload '{}', epoch {} ms, {} reps",
        a.mem_mib, s.cmdline, a.interval_ms, a.reps
    );
    let mut base_walls = Vec::new();
    let mut runs = Vec::new();
    // Runs with the later --spares counts, per count.
    let mut more: Vec<Vec<Run>> = a.spares[1..].iter().map(|_| Vec::new()).collect();
    let mut takeovers = Vec::new();
    for rep in 0..a.reps {
        let t = Instant::now();
        let st = s
            .run_cmd(&a, &dir.join("baseline.txt"))
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("the baseline run failed: {st}");
        }
        let base = t.elapsed().as_secs_f64();
        base_walls.push(base);
        let r = replicated(&s, &a, &format!("r{rep}"), a.spares[0])?;
        println!(
            "  rep {rep}: baseline {base:.2} s, replicated ({} spares) {:.2} s",
            a.spares[0], r.wall
        );
        for (i, &n) in a.spares[1..].iter().enumerate() {
            let r = replicated(&s, &a, &format!("r{rep}-s{n}"), n)?;
            println!("  rep {rep}: replicated ({n} spares) {:.2} s", r.wall);
            more[i].push(r);
        }
        if !a.no_takeover {
            let after = Duration::from_secs_f64(base / 2.0);
            takeovers.extend(takeover(&s, &a, &format!("t{rep}"), after)?);
        }
        runs.push(r);
    }
    let mut summary = summarize(&a, &base_walls, &runs, &takeovers);
    summary["machine"] = crate::bench_limits::machine_limits();
    summary["encryption"] = encryption_cost(&summary);
    if !more.is_empty() {
        let per_page = |v: &Value| {
            (
                f(&v["engine_cpu_us_per_dirty_page"], "primary"),
                f(&v["engine_cpu_steady_us_per_dirty_page"], "primary"),
            )
        };
        let first = per_page(&summary);
        let mut counts = vec![spares_row(a.spares[0], &summary, first)];
        for (n, group) in a.spares[1..].iter().zip(&more) {
            let v = summarize(&a, &base_walls, group, &[]);
            counts.push(spares_row(*n, &v, first));
        }
        summary["spares"] = json!(counts);
    }
    std::fs::write(
        a.out.join("bench.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    let mut md = markdown(&summary);
    let plots = write_plots(&a, &runs)?;
    md.push_str("\nPlots: ");
    md.push_str(&plots.join(", "));
    md.push('\n');
    std::fs::write(a.out.join("bench.md"), &md)?;
    println!("\n{md}");
    println!(
        "written: {}/bench.json, {}/bench.md and the plots",
        a.out.display(),
        a.out.display()
    );
    Ok(0)
}

/// Writes the SVG plots of the replicated runs' incremental epochs (pause
/// over time, pause histogram, bytes per epoch) and returns their names.
fn write_plots(a: &BenchArgs, runs: &[Run]) -> std::io::Result<Vec<String>> {
    use crate::plot::{chart, histogram, Series, Style};
    const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let incremental = |r: &Run| -> Vec<Value> {
        r.stats["epochs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["full"] == json!(false))
            .cloned()
            .collect()
    };
    let per_rep = |field: &str, scale: f64| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| Series {
                name: ["rep 1", "rep 2", "rep 3", "rep 4+"][i.min(3)],
                color: COLORS[i % COLORS.len()],
                points: incremental(r)
                    .iter()
                    .map(|e| (f(e, "t_ms") / 1e3, f(e, field) * scale))
                    .collect(),
            })
            .collect()
    };
    let what = format!(
        "{} MiB, {}, {} ms epochs",
        a.mem_mib, a.profile, a.interval_ms
    );
    let pauses: Vec<f64> = runs
        .iter()
        .flat_map(|r| incremental(r).into_iter().map(|e| f(&e, "pause_us") / 1e3))
        .collect();
    let (hist, width) = histogram(&pauses, 40);
    // Bytes per epoch after the warm-up: the start-up epochs (the guest
    // writing its working set once) are 10-100x larger and would flatten
    // the steady state into the axis.
    let first = runs.first().map(incremental).unwrap_or_default();
    let t0 = first.first().map(|e| f(e, "t_ms")).unwrap_or(0.0);
    let bytes = |field: &str, name: &'static str, color: &'static str| Series {
        name,
        color,
        points: first
            .iter()
            .filter(|e| f(e, "t_ms") >= t0 + a.warmup_ms as f64)
            .map(|e| (f(e, "t_ms") / 1e3, f(e, field) / 1024.0))
            .collect(),
    };
    let plots = [
        (
            "pause_over_time.svg",
            chart(
                &format!("Checkpoint pause over time ({what})"),
                "time since start (s)",
                "pause (ms)",
                &per_rep("pause_us", 1e-3),
                Style::Dots,
            ),
        ),
        (
            "pause_histogram.svg",
            chart(
                &format!("Pause histogram, all reps ({what})"),
                "pause (ms)",
                "epochs",
                &[Series {
                    name: "epochs",
                    color: COLORS[0],
                    points: hist,
                }],
                Style::Bars {
                    width_milli: (width * 1000.0).round().max(1.0) as u64,
                },
            ),
        ),
        (
            "bytes_per_epoch.svg",
            chart(
                &format!("Bytes per epoch after the warm-up, rep 1 ({what})"),
                "time since start (s)",
                "KiB per epoch",
                &[
                    bytes("raw_bytes", "raw page bytes", COLORS[1]),
                    bytes("wire_bytes", "on the wire", COLORS[0]),
                ],
                Style::Dots,
            ),
        ),
    ];
    let mut names = Vec::new();
    for (name, svg) in plots {
        std::fs::write(a.out.join(name), svg)?;
        names.push(name.to_string());
    }
    Ok(names)
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn summarize(a: &BenchArgs, base: &[f64], runs: &[Run], takeovers: &[(f64, f64)]) -> Value {
    // Per-epoch figures of incremental epochs over all reps.
    let mut pause = Vec::new();
    let (mut guest_pause, mut guest_minus_pause) = (Vec::new(), Vec::new());
    let mut phase: [Vec<f64>; 5] = Default::default();
    let (mut pages, mut raw, mut wire, mut epochs) = (0.0, 0.0, 0.0, 0.0);
    let mut pages_per_epoch = Vec::new();
    let (mut delta_pages, mut warmup_epochs) = (0.0, 0.0);
    let mut intervals = Vec::new();
    let mut acks = Vec::new();
    let mut rates = Vec::new();
    let mut engine_cpu_per_page = Vec::new();
    let mut shadow_cpu_per_page = Vec::new();
    let mut by_thread: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    let (mut steady_cpu, mut steady_by_thread, mut steady_epochs) = (
        [Vec::new(), Vec::new()],
        <[BTreeMap<String, Vec<f64>>; 2]>::default(),
        0u64,
    );
    let mut sync_tp = Vec::new();
    let mut protect_ms = Vec::new();
    for r in runs {
        let eps = r.stats["epochs"].as_array().cloned().unwrap_or_default();
        let t0 = eps.first().map(|e| f(e, "t_ms")).unwrap_or(0.0);
        let inc_all: Vec<&Value> = eps.iter().filter(|e| e["full"] == json!(false)).collect();
        let inc: Vec<&Value> = inc_all
            .iter()
            .copied()
            .filter(|e| f(e, "t_ms") >= t0 + a.warmup_ms as f64)
            .collect();
        warmup_epochs += (inc_all.len() - inc.len()) as f64;
        let (mut rp, mut rr, mut rw) = (0.0, 0.0, 0.0);
        for e in &inc {
            pause.push(f(e, "pause_us") / 1e3);
            // The guest's own pause (to its vCPU threads' return), where
            // known: an epoch followed by another pause before the next has
            // none.
            if let Some(g) = e["guest_pause_us"].as_f64() {
                guest_pause.push(g / 1e3);
                guest_minus_pause.push((g - f(e, "pause_us")) / 1e3);
            }
            for (i, k) in ["stop_us", "state_us", "harvest_us", "copy_us", "resume_us"]
                .iter()
                .enumerate()
            {
                phase[i].push(f(e, k) / 1e3);
            }
            pages_per_epoch.push(f(e, "pages"));
            intervals.push(f(e, "interval_ms"));
            rp += f(e, "pages");
            delta_pages += f(e, "delta_pages");
            rr += f(e, "raw_bytes");
            rw += f(e, "wire_bytes");
        }
        pages += rp;
        raw += rr;
        wire += rw;
        epochs += inc.len() as f64;
        acks.extend(
            r.stats["ack_latency_us"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .map(|u| u / 1e3),
        );
        let protected_s = f(&r.stats, "wall_s")
            - r.stats["syncs"]
                .as_array()
                .and_then(|s| s.first())
                .map(|s| f(s, "seconds"))
                .unwrap_or(0.0);
        // Achieved rate: epochs per second between the first and the last
        // incremental epoch after the warm-up (the run's start-up, when the
        // guest writes its whole working set once, and its shutdown are
        // left out like every per-epoch figure); the whole protected time
        // is the fallback.
        let span_s = match (inc.first(), inc.last()) {
            (Some(a), Some(b)) if inc.len() > 1 => (f(b, "t_ms") - f(a, "t_ms")) / 1e3,
            _ => 0.0,
        };
        if span_s > 0.0 {
            rates.push((inc.len() - 1) as f64 / span_s);
        } else if protected_s > 0.0 {
            rates.push(inc_all.len() as f64 / protected_s);
        }
        let all_pages: f64 = eps.iter().map(|e| f(e, "pages")).sum::<f64>()
            + r.stats["syncs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| f(s, "bytes") / 4096.0)
                .sum::<f64>();
        // The steady state: between CPU marks after the warm-up.
        let primary_marks: Vec<engine::cpu::CpuMark> =
            serde_json::from_value(r.stats["cpu_marks"].clone()).unwrap_or_default();
        let seq_pages: Vec<(u64, f64)> = inc_all
            .iter()
            .map(|e| (e["seq"].as_u64().unwrap_or(0), f(e, "pages")))
            .collect();
        let measured = (inc.first(), inc.last());
        if let (Some(a), Some(b)) = measured {
            let span = (
                a["seq"].as_u64().unwrap_or(0),
                b["seq"].as_u64().unwrap_or(0),
            );
            if let Some(st) =
                crate::bench_cpu::steady(&primary_marks, &r.shadow_marks, &seq_pages, span)
            {
                steady_cpu[0].push(st.primary_total());
                steady_cpu[1].push(st.shadow_total());
                steady_epochs += st.to - st.from;
                for (side, m) in steady_by_thread.iter_mut().zip([&st.primary, &st.shadow]) {
                    for (n, v) in m {
                        side.entry(n.clone()).or_default().push(*v);
                    }
                }
            }
        }
        if all_pages > 0.0 {
            engine_cpu_per_page.push(f(&r.stats, "engine_cpu_s") * 1e6 / all_pages);
            shadow_cpu_per_page.push(r.shadow_cpu * 1e6 / all_pages);
            let primary: BTreeMap<String, f64> =
                serde_json::from_value(r.stats["threads_cpu_s"].clone()).unwrap_or_default();
            let sides = [
                (primary, f(&r.stats, "engine_cpu_s")),
                (r.shadow_threads.clone(), r.shadow_cpu),
            ];
            for (side, (threads, total)) in by_thread.iter_mut().zip(sides) {
                // What no accounted thread ran: short-lived helpers, and
                // threads that ended before they were accounted.
                let other = total - threads.values().sum::<f64>();
                for (n, t) in threads.into_iter().chain([("other".to_owned(), other)]) {
                    side.entry(n).or_default().push(t * 1e6 / all_pages);
                }
            }
        }
        if let Some(p) = r
            .stats
            .get("protected_before_start")
            .filter(|p| !p.is_null())
        {
            protect_ms.push(f(p, "ms"));
        }
        if let Some(sy) = r.stats["syncs"].as_array().and_then(|s| s.first()) {
            if f(sy, "seconds") > 0.0 {
                sync_tp.push(f(sy, "bytes") / f(sy, "seconds") / (1 << 20) as f64);
            }
        }
    }
    let walls: Vec<f64> = runs.iter().map(|r| r.wall).collect();
    let slowdown = median(walls.clone()) / median(base.to_vec()).max(1e-9);
    json!({
        "config": {
            "mem_mib": a.mem_mib, "profile": a.profile, "pages": a.pages, "writes": a.writes,
            "spin": a.spin, "rounds": a.rounds, "interval_ms": a.interval_ms, "reps": a.reps,
            "rate": a.rate, "fill": a.fill, "warmup_ms": a.warmup_ms,
            "pinned": a.pin, "compress": a.compress,
        },
        "pause_ms": { "p50": pct(pause.clone(), 0.5), "p99": pct(pause.clone(), 0.99), "max": pct(pause, 1.0) },
        "guest_pause_ms": {
            "epochs": guest_pause.len(),
            "p50": pct(guest_pause.clone(), 0.5), "p99": pct(guest_pause, 0.99),
            "minus_pause_p50": pct(guest_minus_pause.clone(), 0.5),
            "minus_pause_p99": pct(guest_minus_pause, 0.99),
        },
        "pause_phase_p50_ms": {
            "stop": pct(phase[0].clone(), 0.5), "state": pct(phase[1].clone(), 0.5),
            "harvest": pct(phase[2].clone(), 0.5), "copy": pct(phase[3].clone(), 0.5),
            "resume": pct(phase[4].clone(), 0.5),
        },
        "epoch_rate_hz": { "configured": 1000.0 / a.interval_ms as f64, "achieved": median(rates) },
        "epoch_interval_ms": { "p50": pct(intervals.clone(), 0.5), "max": pct(intervals, 1.0) },
        "dirty_pages_per_epoch_p50": pct(pages_per_epoch, 0.5),
        "bytes_per_dirty_page": { "raw": if pages > 0.0 { raw / pages } else { 0.0 }, "wire": if pages > 0.0 { wire / pages } else { 0.0 } },
        "wire_over_raw": if raw > 0.0 { wire / raw } else { 0.0 },
        "delta_page_share": if pages > 0.0 { delta_pages / pages } else { 0.0 },
        "engine_cpu_steady_us_per_dirty_page": {
            "primary": median(steady_cpu[0].clone()), "shadow": median(steady_cpu[1].clone()),
            "epochs": steady_epochs,
        },
        "engine_cpu_steady_by_thread_us_per_dirty_page": {
            "primary": medians(&steady_by_thread[0]),
            "shadow": medians(&steady_by_thread[1]),
        },
        "engine_cpu_us_per_dirty_page": { "primary": median(engine_cpu_per_page), "shadow": median(shadow_cpu_per_page) },
        "engine_cpu_by_thread_us_per_dirty_page": {
            "primary": medians(&by_thread[0]),
            "shadow": medians(&by_thread[1]),
        },
        "ack_latency_ms": { "p50": pct(acks.clone(), 0.5), "p99": pct(acks, 0.99) },
        "full_sync_mib_s": median(sync_tp),
        "protect_before_start_ms": median(protect_ms),
        "takeover_ms": {
            "detection_p50": median(takeovers.iter().map(|t| t.0).collect()),
            "activation_p50": median(takeovers.iter().map(|t| t.1).collect()),
        },
        "guest": { "baseline_s": median(base.to_vec()), "replicated_s": median(walls), "slowdown": slowdown },
        "epochs_measured": epochs,
        "warmup_epochs_left_out": warmup_epochs,
    })
}

/// One row of the several-spares comparison; `first` is the first count's
/// primary CPU per dirty page, (whole run, steady state).
fn spares_row(n: usize, v: &Value, first: (f64, f64)) -> Value {
    let cpu = f(&v["engine_cpu_us_per_dirty_page"], "primary");
    let steady = f(&v["engine_cpu_steady_us_per_dirty_page"], "primary");
    let ratio = |x: f64, base: f64| if base > 0.0 { x / base } else { 0.0 };
    json!({
        "spares": n,
        "engine_cpu_us_per_dirty_page": cpu,
        "ratio_to_first": ratio(cpu, first.0),
        "engine_cpu_steady_us_per_dirty_page": steady,
        "steady_ratio_to_first": ratio(steady, first.1),
        "pause_p50_ms": f(&v["pause_ms"], "p50"),
        "pause_p99_ms": f(&v["pause_ms"], "p99"),
        "ack_latency_p50_ms": f(&v["ack_latency_ms"], "p50"),
        "replicated_s": f(&v["guest"], "replicated_s"),
    })
}

/// What encryption costs per dirty page: the wire bytes of a page through
/// seal and open at the measured cipher rate, and its share of the
/// engine's CPU per page (primary plus shadow) in the same run.
fn encryption_cost(v: &Value) -> Value {
    let rate = f(&v["machine"], "seal_open_mib_s") * (1 << 20) as f64;
    let wire = f(&v["bytes_per_dirty_page"], "wire");
    let cpu = f(&v["engine_cpu_us_per_dirty_page"], "primary")
        + f(&v["engine_cpu_us_per_dirty_page"], "shadow");
    let us = if rate > 0.0 { wire / rate * 1e6 } else { 0.0 };
    json!({
        "us_per_dirty_page": us,
        "share_of_engine_cpu": if cpu > 0.0 { us / cpu } else { 0.0 },
    })
}

fn markdown(v: &Value) -> String {
    let g = |path: &[&str]| {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64().unwrap_or(0.0)
    };
    let c = &v["config"];
    format!(
        "| figure | value |\n| --- | --- |\n\
         | workload | {} MiB guest, pattern {}, fill {}, {} pages x {} writes/round, rate {} writes/s (0: unpaced), epoch {} ms, pinned {}, warm-up left out {} ms ({} epochs) |\n\
         | pause p50 / p99 / max | {:.3} / {:.3} / {:.3} ms |\n\
         | the guest's own pause (to its vCPU threads' return) p50 / p99; its excess over the pause p50 / p99 ({:.0} epochs) | {:.3} / {:.3} ms; {:.3} / {:.3} ms |\n\
         | pause phases p50 (stop, state, harvest, copy, resume) | {:.3}, {:.3}, {:.3}, {:.3}, {:.3} ms |\n\
         | epoch rate configured / achieved | {:.1} / {:.1} Hz (policy interval p50 {:.0} ms, max {:.0} ms) |\n\
         | dirty pages per epoch (p50) | {:.0} |\n\
         | bytes per dirty page raw / on the wire | {:.0} / {:.0} ({:.3}x; {:.0}% of pages as XOR deltas) |\n\
         | engine CPU per dirty page in the steady state (between CPU marks after the warm-up, {:.0} epochs), primary / shadow | {:.2} / {:.2} µs |\n\
         | the same by thread, primary | {} |\n\
         | the same by thread, shadow | {} |\n\
         | engine CPU per dirty page over the whole run (start-up and initial sync included, over their pages too), primary / shadow | {:.2} / {:.2} µs |\n\
         | the same by thread, primary | {} |\n\
         | the same by thread, shadow | {} |\n\
         | ack latency p50 / p99 | {:.2} / {:.2} ms |\n\
         | protection before the guest starts (full state to the ack) | {:.1} ms |\n\
         | full sync (live pre-copy; only on re-protection) | {:.0} MiB/s |\n\
         | takeover: detection / activation (p50) | {:.1} / {:.2} ms |\n\
         | guest run time unprotected / replicated (slowdown) | {:.2} / {:.2} s ({:.2}x) |\n\
         | encryption (AES-GCM seal + open of a page's wire bytes) | {:.2} µs per dirty page, {:.1}% of the engine CPU above |\n\
         | machine: memcpy / page encoder (zstd-1, mixed) / loopback TCP / seal + open | {:.0} / {:.0} / {:.0} / {:.0} MiB/s |\n\
         | machine: CPU per wake-up after a 1 ms sleep / per thread hand-off; a 4 KiB copy from cold memory | {:.1} / {:.1} / {:.2} µs |\n\
         | machine: a 4 KiB copy from cold memory to 16 bytes past a page boundary, libc memcpy / memcopy | {:.2} / {:.2} µs |\n",
        c["mem_mib"], c["profile"].as_str().unwrap_or(""), c["fill"].as_str().unwrap_or(""), c["pages"], c["writes"],
        c["rate"], c["interval_ms"], c["pinned"], c["warmup_ms"], v["warmup_epochs_left_out"],
        g(&["pause_ms", "p50"]), g(&["pause_ms", "p99"]), g(&["pause_ms", "max"]),
        g(&["guest_pause_ms", "epochs"]), g(&["guest_pause_ms", "p50"]), g(&["guest_pause_ms", "p99"]),
        g(&["guest_pause_ms", "minus_pause_p50"]), g(&["guest_pause_ms", "minus_pause_p99"]),
        g(&["pause_phase_p50_ms", "stop"]), g(&["pause_phase_p50_ms", "state"]), g(&["pause_phase_p50_ms", "harvest"]),
        g(&["pause_phase_p50_ms", "copy"]), g(&["pause_phase_p50_ms", "resume"]),
        g(&["epoch_rate_hz", "configured"]), g(&["epoch_rate_hz", "achieved"]),
        g(&["epoch_interval_ms", "p50"]), g(&["epoch_interval_ms", "max"]),
        g(&["dirty_pages_per_epoch_p50"]),
        g(&["bytes_per_dirty_page", "raw"]), g(&["bytes_per_dirty_page", "wire"]), g(&["wire_over_raw"]),
        g(&["delta_page_share"]) * 100.0,
        g(&["engine_cpu_steady_us_per_dirty_page", "epochs"]),
        g(&["engine_cpu_steady_us_per_dirty_page", "primary"]), g(&["engine_cpu_steady_us_per_dirty_page", "shadow"]),
        threads_row(&v["engine_cpu_steady_by_thread_us_per_dirty_page"]["primary"]),
        threads_row(&v["engine_cpu_steady_by_thread_us_per_dirty_page"]["shadow"]),
        g(&["engine_cpu_us_per_dirty_page", "primary"]), g(&["engine_cpu_us_per_dirty_page", "shadow"]),
        threads_row(&v["engine_cpu_by_thread_us_per_dirty_page"]["primary"]),
        threads_row(&v["engine_cpu_by_thread_us_per_dirty_page"]["shadow"]),
        g(&["ack_latency_ms", "p50"]), g(&["ack_latency_ms", "p99"]),
        g(&["protect_before_start_ms"]),
        g(&["full_sync_mib_s"]),
        g(&["takeover_ms", "detection_p50"]), g(&["takeover_ms", "activation_p50"]),
        g(&["guest", "baseline_s"]), g(&["guest", "replicated_s"]), g(&["guest", "slowdown"]),
        g(&["encryption", "us_per_dirty_page"]), g(&["encryption", "share_of_engine_cpu"]) * 100.0,
        g(&["machine", "memcpy_mib_s"]), g(&["machine", "encode_zstd1_mixed_mib_s"]), g(&["machine", "loopback_tcp_mib_s"]),
        g(&["machine", "seal_open_mib_s"]),
        g(&["machine", "timed_wake_cpu_us"]), g(&["machine", "handoff_cpu_us"]), g(&["machine", "cold_page_copy_us"]),
        g(&["machine", "offset_page_copy_us", "libc"]), g(&["machine", "offset_page_copy_us", "memcopy"]),
    ) + &spares_table(v)
}

/// The median of each name's values.
fn medians(by_name: &BTreeMap<String, Vec<f64>>) -> BTreeMap<&str, f64> {
    by_name
        .iter()
        .map(|(n, v)| (n.as_str(), median(v.clone())))
        .collect()
}

/// `name x.xx, ...` µs per dirty page by thread, largest first.
fn threads_row(v: &Value) -> String {
    let mut t: Vec<(&String, f64)> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(n, x)| Some((n, x.as_f64()?)))
        .collect();
    t.sort_by(|a, b| b.1.total_cmp(&a.1));
    t.iter()
        .map(|(n, x)| format!("{n} {x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The several-spares table (when `--spares` named more than one count).
fn spares_table(v: &Value) -> String {
    let Some(rows) = v["spares"].as_array() else {
        return String::new();
    };
    let mut t = String::from(
        "\n| synchronous spares | primary engine CPU per dirty page, steady state (whole run) | ratio to the first, steady state (whole run) | pause p50 (p99) | ack latency p50 | guest run time |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} | {:.2} ({:.2}) µs | {:.2}x ({:.2}x) | {:.3} ({:.3}) ms | {:.2} ms | {:.2} s |\n",
            r["spares"],
            f(r, "engine_cpu_steady_us_per_dirty_page"),
            f(r, "engine_cpu_us_per_dirty_page"),
            f(r, "steady_ratio_to_first"),
            f(r, "ratio_to_first"),
            f(r, "pause_p50_ms"),
            f(r, "pause_p99_ms"),
            f(r, "ack_latency_p50_ms"),
            f(r, "replicated_s"),
        ));
    }
    t
}
