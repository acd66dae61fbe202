//! `hotspare demo`: replication and failover end to end with the bundled guest.
//!
//! Default (replicated): runs the guest uninterrupted for the reference
//! output, then starts a standby and a protected primary as separate
//! processes on loopback, SIGKILLs the primary at a random moment once the
//! standby is in sync, lets the standby take over and finish the guest, and
//! checks that the primary's console followed by the shadow's equals the
//! reference (at most a byte-identical repetition at the boundary).
//!
//! Then the same with a disk (`demo_disk.rs`): a disk-checking guest on a
//! replicated virtio-blk disk fails over, and the replica is booted and
//! every block verified.
//!
//! `--local`: the same with local checkpoints and `hotspare restore`:
//! 1. Runs the guest uninterrupted to get the reference console output.
//! 2. Runs it again with checkpoints every `--interval-ms`, and SIGKILLs that
//!    process at a random moment.
//! 3. Restores the newest checkpoint in a new process and lets it finish.
//! 4. Checks that the killed run's output followed by the restored run's
//!    output is the reference, with at most a byte-identical repetition of
//!    what was printed after the last checkpoint, and that the guest's own
//!    memory check passed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The bundled guest (built from hw-tests/guests by build.rs).
pub const GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/memtest.elf"));

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Working directory (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Checkpoint interval in milliseconds.
    #[arg(long, default_value_t = 25)]
    interval_ms: u64,
    /// Kill the first run after this many milliseconds (default: random).
    #[arg(long)]
    kill_after_ms: Option<u64>,
    /// Guest command line.
    #[arg(
        long,
        default_value = "rounds=300 pages=4096 writes=30000 pattern=mixed"
    )]
    cmdline: String,
    /// Demonstrate local checkpoints and restore instead of replication.
    #[arg(long)]
    local: bool,
}

pub(crate) fn random_ms(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    lo + (nanos ^ (std::process::id() as u64 * 0x9e37_79b9)) % (hi - lo)
}

fn hotspare() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the hotspare binary")
}

/// Checks that `first` then `second` re-create `reference`, allowing only a
/// byte-identical overlap. Returns the overlap length.
pub fn check_continuity(reference: &[u8], first: &[u8], second: &[u8]) -> anyhow::Result<usize> {
    if !reference.starts_with(first) {
        bail!("the killed run's output is not a prefix of the reference output");
    }
    if !reference.ends_with(second) {
        bail!("the restored run's output is not the rest of the reference output");
    }
    let resume_at = reference.len() - second.len();
    if resume_at > first.len() {
        bail!(
            "output lost: the killed run printed {} bytes, the restored run resumed at byte {}",
            first.len(),
            resume_at
        );
    }
    Ok(first.len() - resume_at)
}

fn has_full_checkpoint(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".full.ckpt"))
        })
        .unwrap_or(false)
}

/// `hotspare run` of `guest` with `mem_mib` of memory and the console in a file.
pub(crate) fn guest_run(
    exe: &Path,
    guest: &Path,
    mem_mib: u64,
    cmdline: &str,
    console: &Path,
) -> Command {
    let mut c = Command::new(exe);
    c.arg("run")
        .arg("--kernel")
        .arg(guest)
        .arg("--mem-mib")
        .arg(mem_mib.to_string())
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--console")
        .arg(console);
    c
}

/// Runs the unprotected reference (`cmd` writes its console to `console`)
/// and returns its output and run time, printing both.
fn reference_run(mut cmd: Command, console: &Path) -> anyhow::Result<(Vec<u8>, Duration)> {
    let t = Instant::now();
    run_to_end(&mut cmd, "the reference run")?;
    let took = t.elapsed();
    let reference = std::fs::read(console)?;
    println!(
        "      {} bytes of console output in {:.2?}",
        reference.len(),
        took
    );
    Ok((reference, took))
}

fn run_to_end(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed: {st}");
    }
    Ok(())
}

fn show_tail(label: &str, bytes: &[u8], lines: usize) {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    println!(
        "--- {label} (last {} of {} lines)",
        lines.min(all.len()),
        all.len()
    );
    for l in &all[all.len().saturating_sub(lines)..] {
        println!("    {l}");
    }
}

/// A child whose stderr lines are collected in the background (for
/// people), and whose typed events (`--events`) the demo and benches read
/// their figures from.
pub(crate) struct Child {
    pub(crate) child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    events: Option<std::path::PathBuf>,
}

impl Child {
    /// Spawns `cmd` (a `hotspare run` or `standby`) writing its events to
    /// `events`.
    pub(crate) fn spawn_with_events(cmd: &mut Command, events: &Path) -> anyhow::Result<Child> {
        let _ = std::fs::remove_file(events);
        let mut c = Child::spawn(cmd.arg("--events").arg(events))?;
        c.events = Some(events.to_path_buf());
        Ok(c)
    }

    /// Its events so far (whole lines).
    pub(crate) fn events(&self) -> anyhow::Result<Vec<engine::events::Event>> {
        let path = self.events.as_ref().context("spawned without --events")?;
        engine::events::read_file(path)
            .into_iter()
            .map(|l| {
                l.map(|l| l.event)
                    .map_err(|e| anyhow::anyhow!("not an event: {e}"))
            })
            .collect()
    }

    /// Waits up to `t` for an event `pick` accepts.
    pub(crate) fn wait_event<T>(
        &mut self,
        t: Duration,
        what: &str,
        pick: impl Fn(&engine::events::Event) -> Option<T>,
    ) -> anyhow::Result<T> {
        let end = Instant::now() + t;
        loop {
            if let Some(x) = self.events()?.iter().find_map(&pick) {
                return Ok(x);
            }
            if Instant::now() > end || self.child.try_wait()?.is_some() {
                std::thread::sleep(Duration::from_millis(20));
                return self.events()?.iter().find_map(&pick).with_context(|| {
                    format!("waiting for {what}; the process said:\n{}", self.all())
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until a standby listens; its address.
    pub(crate) fn wait_listening(&mut self, t: Duration) -> anyhow::Result<String> {
        self.wait_event(t, "the standby's address", |e| match e {
            engine::events::Event::Listening { addr } => Some(addr.clone()),
            _ => None,
        })
    }

    /// Waits until a standby committed its first epoch.
    pub(crate) fn wait_in_sync(&mut self, t: Duration) -> anyhow::Result<()> {
        self.wait_event(t, "the standby's first commit", |e| {
            matches!(e, engine::events::Event::InSync { .. }).then_some(())
        })
    }

    /// The console byte a standby that took over resumed at.
    pub(crate) fn took_over_at(&self) -> anyhow::Result<Option<u64>> {
        Ok(self.events()?.iter().find_map(|e| match e {
            engine::events::Event::TookOver { console_at, .. } => Some(*console_at),
            _ => None,
        }))
    }

    pub(crate) fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
        let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().context("stderr")?;
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Ok(Child {
            child,
            lines,
            events: None,
        })
    }

    /// Everything it said on stderr.
    pub(crate) fn all(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    pub(crate) fn line(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded arbiter of the demo's processes: a file beside the key
/// (every process runs on this host, the one case a file arbiter is valid for).
pub(crate) fn arbiter_arg(key: &Path) -> String {
    format!("file:{}", key.with_file_name("arbiter").display())
}

/// Starts `hotspare standby` on an ephemeral loopback port with its console
/// in `console` and `extra` arguments; returns it and its address.
pub(crate) fn spawn_standby(
    exe: &Path,
    key: &Path,
    console: &Path,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<(Child, String)> {
    let mut standby = Child::spawn_with_events(
        Command::new(exe)
            .args(["standby", "--listen", "127.0.0.1:0", "--key-file"])
            .arg(key)
            .arg("--arbiter")
            .arg(arbiter_arg(key))
            .arg("--console")
            .arg(console)
            .args(extra),
        &console.with_extension("events"),
    )?;
    let addr = standby.wait_listening(Duration::from_secs(10))?;
    Ok((standby, addr))
}

fn failover_demo(a: DemoArgs, dir: PathBuf) -> anyhow::Result<i32> {
    let guest = dir.join("memtest.elf");
    std::fs::write(&guest, GUEST).context("writing the demo guest")?;
    let key = dir.join("key");
    crate::fresh_key(&key).context("writing the demo key")?;
    let files = |n: &str| dir.join(n);
    for f in ["reference.txt", "primary.txt", "shadow.txt"] {
        let _ = std::fs::remove_file(files(f));
    }
    let exe = hotspare()?;
    let run = |console: &Path| guest_run(&exe, &guest, 128, &a.cmdline, console);
    println!("hotspare demo: working in {}", dir.display());
    println!("[1/7] reference run of the bundled guest (unprotected, uninterrupted)...");
    let (reference, ref_time) =
        reference_run(run(&files("reference.txt")), &files("reference.txt"))?;

    println!(
        "[2/7] standby and protected primary (separate processes, loopback, epoch every {} ms)...",
        a.interval_ms
    );
    let (mut standby, addr) = spawn_standby(&exe, &key, &files("shadow.txt"), &[])?;
    let t0 = Instant::now();
    let mut primary = Child::spawn(
        run(&files("primary.txt"))
            .arg("--shadow")
            .arg(&addr)
            .arg("--key-file")
            .arg(&key)
            .arg("--arbiter")
            .arg(arbiter_arg(&key))
            .arg("--vm-id")
            .arg("demo-memtest")
            .arg("--interval-ms")
            .arg(a.interval_ms.to_string()),
    )?;
    standby.wait_in_sync(Duration::from_secs(30))?;
    println!(
        "      standby {addr} in sync after {:.2?} (initial full sync)",
        t0.elapsed()
    );

    let remaining = ref_time.saturating_sub(t0.elapsed()).as_millis() as u64;
    let kill_after = a.kill_after_ms.unwrap_or_else(|| {
        random_ms(
            remaining / 5 + 1,
            (remaining * 4 / 5).max(remaining / 5 + 2),
        )
    });
    println!("[3/7] SIGKILL of the primary after {kill_after} ms...");
    std::thread::sleep(Duration::from_millis(kill_after));
    if primary.child.try_wait()?.is_some() {
        bail!("the primary finished before the kill; use a longer --cmdline workload or a smaller --kill-after-ms");
    }
    primary.child.kill().context("SIGKILL of the primary")?;
    let _ = primary.child.wait();
    let first = std::fs::read(files("primary.txt")).unwrap_or_default();
    println!(
        "      primary killed with {} bytes of output released",
        first.len()
    );

    println!("[4/7] the standby takes over and finishes the guest...");
    let end = Instant::now() + Duration::from_secs(120);
    while standby.child.try_wait()?.is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = standby.child.wait()?;
    let take = standby.line("TAKING OVER");
    let summary = standby.line("replication summary");
    let resumed = standby.took_over_at()?;
    if !status.success() || take.is_none() || resumed.is_none() {
        bail!(
            "the standby did not take over cleanly ({status}):\n{}",
            standby
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .join("\n")
        );
    }
    let take = take.unwrap_or_default();
    println!("      {}", take.trim_start_matches("hotspare: "));
    let second = std::fs::read(files("shadow.txt"))?;
    show_tail("primary's console", &first, 2);
    show_tail("shadow's console", &second, 2);
    let at = resumed.context("resume position")? as usize;
    if !reference.starts_with(&first) {
        bail!("the primary's output is not a prefix of the reference");
    }
    if at > first.len() {
        bail!(
            "output lost: the primary released {} bytes, the shadow resumed at byte {at}",
            first.len()
        );
    }
    if reference.len() != at + second.len() || reference[at..] != second[..] {
        bail!("the shadow's output does not continue the reference exactly");
    }
    if !String::from_utf8_lossy(&second).contains("result=ok") {
        bail!("the guest's own memory check did not pass after the takeover");
    }
    println!();
    if let Some(s) = summary {
        println!("{}", s.trim_start_matches("hotspare: "));
    }
    let repeated = first.len() - at;
    println!();
    crate::demo_disk::disk_demo(&exe, &dir, &key, a.interval_ms)?;
    println!();
    let net = crate::demo_net::net_demo(&exe, &dir, a.interval_ms)?;
    println!();
    println!(
        "OK: console output continuous across the failover ({repeated} bytes repeated byte-identically at the boundary); \
         guest memory self-check passed on the shadow; the disk guest failed over with its disk in step with its \
         memory, and its replica booted with every block verified{}",
        if net {
            "; the network guest answered ping and requests across the failover with no reply contradicted"
        } else {
            " (the network part was SKIPPED: see above)"
        }
    );
    Ok(0)
}

pub fn demo(a: DemoArgs) -> anyhow::Result<i32> {
    let dir = match a.dir.clone() {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("hotspare-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !a.local {
        return failover_demo(a, dir);
    }
    let guest = dir.join("memtest.elf");
    std::fs::write(&guest, GUEST).context("writing the demo guest")?;
    let ckpt = dir.join("checkpoints");
    let _ = std::fs::remove_dir_all(&ckpt);
    let files = |n: &str| dir.join(n);
    for f in ["reference.txt", "primary.txt", "restored.txt"] {
        let _ = std::fs::remove_file(files(f));
    }
    let exe = hotspare()?;
    let base = |console: &Path| guest_run(&exe, &guest, 128, &a.cmdline, console);

    println!("hotspare demo: working in {}", dir.display());
    println!("[1/3] reference run (no checkpoints)...");
    let (reference, ref_time) =
        reference_run(base(&files("reference.txt")), &files("reference.txt"))?;

    let kill_after = a.kill_after_ms.unwrap_or_else(|| {
        random_ms(
            ref_time.as_millis() as u64 / 5 + 1,
            (ref_time.as_millis() as u64 * 3 / 4).max(10),
        )
    });
    println!(
        "[2/3] protected run, checkpoint every {} ms into {}, SIGKILL after {} ms...",
        a.interval_ms,
        ckpt.display(),
        kill_after
    );
    let mut child = base(&files("primary.txt"))
        .arg("--checkpoint-dir")
        .arg(&ckpt)
        .arg("--checkpoint-interval-ms")
        .arg(a.interval_ms.to_string())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the protected run")?;
    // Start the kill clock once the first checkpoint is published: a kill
    // before it leaves nothing to restore.
    let t0 = Instant::now();
    while !has_full_checkpoint(&ckpt)
        && child.try_wait()?.is_none()
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "      first (full) checkpoint published after {:.2?}",
        t0.elapsed()
    );
    let deadline = Instant::now() + Duration::from_millis(kill_after);
    let mut finished_early = false;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            finished_early = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if finished_early {
        println!("      the guest finished before the kill; nothing to restore");
    } else {
        child.kill().context("SIGKILL of the protected run")?;
        let _ = child.wait();
    }
    let primary = std::fs::read(files("primary.txt")).unwrap_or_default();
    println!("      killed with {} bytes printed", primary.len());

    println!("[3/3] restore in a new process...");
    let t = Instant::now();
    run_to_end(
        Command::new(&exe)
            .arg("restore")
            .arg("--checkpoint-dir")
            .arg(&ckpt)
            .arg("--console")
            .arg(files("restored.txt")),
        "the restored run",
    )?;
    let restored = std::fs::read(files("restored.txt"))?;
    println!("      restored run finished in {:.2?}", t.elapsed());
    show_tail("killed run", &primary, 3);
    show_tail("restored run", &restored, 3);
    let overlap = check_continuity(&reference, &primary, &restored)?;
    let text = String::from_utf8_lossy(&restored);
    if !text.contains("result=ok") {
        bail!("the guest's own memory check did not report result=ok after the restore");
    }
    println!(
        "OK: output continuous across the kill ({} bytes repeated byte-identically after the last checkpoint); guest memory self-check passed",
        overlap
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::check_continuity;

    #[test]
    fn continuity_accepts_identical_overlap_only() {
        let r = b"line1\nline2\nline3\n";
        assert_eq!(
            check_continuity(r, b"line1\nli", b"line2\nline3\n").unwrap(),
            2
        );
        assert_eq!(
            check_continuity(r, b"line1\n", b"line2\nline3\n").unwrap(),
            0
        );
        assert!(
            check_continuity(r, b"line1\n", b"line3\n").is_err(),
            "a gap must be refused"
        );
        assert!(check_continuity(r, b"lineX\n", b"line2\nline3\n").is_err());
        assert!(check_continuity(r, b"line1\n", b"line2\nline4\n").is_err());
    }
}
