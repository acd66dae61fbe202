//! Shared harness of the KVM tests: locating the `hotspare` binary, running
//! guests as separate processes, SIGKILLing them at random moments, restoring
//! them, and checking that the console output is exactly continuous.
#![allow(dead_code)]

pub mod lab;
mod proc;

pub use proc::Proc;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// True if KVM tests can run. Without /dev/kvm this panics with a clear
/// message, unless HOTSPARE_SKIP_KVM_TESTS=1, which skips loudly.
pub fn kvm_available() -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    if std::env::var("HOTSPARE_SKIP_KVM_TESTS").as_deref() == Ok("1") {
        skipped("/dev/kvm is missing and HOTSPARE_SKIP_KVM_TESTS=1: this KVM test did NOT run");
        return false;
    }
    panic!(
        "/dev/kvm is missing: the hw-tests run real guests on KVM. Run them on a KVM-capable Linux host \
         (root or the kvm group), or set HOTSPARE_SKIP_KVM_TESTS=1 to skip them (loudly)."
    );
}

/// Reports that the calling test did not (fully) run: loudly on stderr,
/// and as a line in `$HOTSPARE_SKIP_LOG` (set by `scripts/test.sh`, which
/// prints how many tests skipped, so a skip never passes for an ok).
pub fn skipped(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("!!!!!!!! SKIPPED: {test}: {why} !!!!!!!!");
    if let Ok(path) = std::env::var("HOTSPARE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// The `hotspare` binary of this workspace (built on demand).
pub fn hotspare() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test> -> target/<profile>/hotspare
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let bin = profile_dir.join("hotspare");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("Cargo.toml");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        // Always (re)build: cheap when up to date, and never tests a stale binary.
        let mut c = Command::new(env!("CARGO"));
        c.args([
            "build",
            "-q",
            "-p",
            "engine",
            "--bin",
            "hotspare",
            "--manifest-path",
        ])
        .arg(&manifest);
        if release {
            c.arg("--release");
        }
        let st = c
            .status()
            .expect("running cargo build for the hotspare binary");
        assert!(st.success(), "building the hotspare binary failed");
        assert!(
            bin.is_file(),
            "hotspare binary not found at {}",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A tiny deterministic PRNG (xorshift64*), seeded from HOTSPARE_TEST_SEED or the clock.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("HOTSPARE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: random seed {seed} (set HOTSPARE_TEST_SEED={seed} to replay)");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A guest to run: image and VM options.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub name: &'static str,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    /// Extra arguments for protected primaries only.
    pub primary_extra: Vec<&'static str>,
    /// Extra arguments for every run (e.g. `--disk PATH`).
    pub run_extra: Vec<String>,
}

impl GuestSpec {
    pub fn new(name: &'static str, cmdline: &str) -> GuestSpec {
        GuestSpec {
            name,
            cmdline: cmdline.to_string(),
            mem_mib: 128,
            vcpus: 1,
            primary_extra: Vec::new(),
            run_extra: Vec::new(),
        }
    }

    pub fn primary_args(mut self, args: &[&'static str]) -> Self {
        self.primary_extra.extend_from_slice(args);
        self
    }

    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }

    pub fn run_cmd(&self, console: &Path) -> Command {
        let mut c = Command::new(hotspare());
        c.arg("run")
            .arg("--kernel")
            .arg(hw_tests::guest_path(self.name))
            .arg("--mem-mib")
            .arg(self.mem_mib.to_string())
            .arg("--vcpus")
            .arg(self.vcpus.to_string())
            .arg("--cmdline")
            .arg(&self.cmdline)
            .arg("--console")
            .arg(console)
            .args(&self.run_extra)
            .stdin(Stdio::null());
        c
    }
}

/// QEMU's microvm running the bundled guest `guest` with `cmdline`, its
/// devices on virtio-mmio version 2 (`force-legacy=false`), ACPI off (so
/// they are announced on the command line, as hotspare does) and the
/// debug-exit port; the caller adds its devices and the serial. `None`,
/// said loudly, when QEMU is not installed.
pub fn qemu_microvm(guest: &str, cmdline: &str) -> Option<Command> {
    let q = "qemu-system-x86_64";
    if Command::new(q).arg("--version").output().is_err() {
        skipped(&format!(
            "{q} is not installed (scripts/setup.sh installs it): the QEMU cross-check did NOT run"
        ));
        return None;
    }
    let accel = if Path::new("/dev/kvm").exists() {
        "kvm"
    } else {
        "tcg"
    };
    let mut c = Command::new(q);
    c.args([
        "-M",
        "microvm,acpi=off,rtc=off",
        "-accel",
        accel,
        "-m",
        "64M",
        "-smp",
        "1",
    ])
    .args(["-nodefaults", "-no-user-config", "-display", "none"])
    .args(["-global", "virtio-mmio.force-legacy=false"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
    .arg("-kernel")
    .arg(hw_tests::guest_path(guest))
    .args(["-append", cmdline])
    .stdin(Stdio::null());
    Some(c)
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("hotspare-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("keeping {} for inspection", self.0.display());
        }
    }
}

/// Runs the guest uninterrupted; returns its console output and run time.
pub fn reference(spec: &GuestSpec) -> (Vec<u8>, Duration) {
    let dir = TempDir::new("ref");
    let console = dir.path("console.txt");
    let t = Instant::now();
    let out = spec.run_cmd(&console).output().expect("spawn hotspare run");
    let took = t.elapsed();
    let text = std::fs::read(&console).unwrap_or_default();
    assert!(
        out.status.success(),
        "reference run of {} failed: {}\nstderr: {}\nconsole tail: {}",
        spec.name,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&text)
    );
    (text, took)
}

pub fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Waits for a child up to `t`; returns true if it exited.
pub(crate) fn wait_for(child: &mut Child, t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.try_wait().expect("try_wait").is_some()
}

/// Parses "console resumes at byte N" from a restore's or a standby's stderr.
fn resume_position(stderr: &str) -> Option<u64> {
    field(stderr, "console resumes at byte ").map(|v| v as u64)
}

/// The console byte a standby resumed at, from its "TAKING OVER" line.
pub fn takeover_resume(err: &str, what: &str) -> usize {
    let line = err
        .lines()
        .find(|l| l.contains("TAKING OVER"))
        .unwrap_or_else(|| panic!("{what}: no takeover reported:\n{err}"));
    resume_position(line).unwrap_or_else(|| panic!("{what}: no resume position in: {line}"))
        as usize
}

/// Waits for a standby that took over to finish the guest; returns its
/// stderr and the console byte it resumed at.
pub fn finished_takeover(standby: &mut Proc, what: &str) -> (String, usize) {
    let st = standby.wait(Duration::from_secs(120), what);
    let err = standby.stderr();
    assert!(
        st.success(),
        "{what}: standby failed after takeover: {st}\n{err}"
    );
    let at = match standby.events {
        // The typed event, and the text for people must agree.
        Some(_) => {
            let at = standby
                .events()
                .iter()
                .find_map(|e| match e {
                    engine::events::Event::TookOver { console_at, .. } => Some(*console_at),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{what}: no took_over event:\n{err}"))
                as usize;
            assert_eq!(at, takeover_resume(&err, what), "{what}: event vs text");
            at
        }
        None => takeover_resume(&err, what),
    };
    (err, at)
}

/// What one kill/restore trial did.
#[derive(Debug, Default)]
pub struct Trial {
    pub kills: usize,
    pub restores: usize,
    pub repeated_bytes: u64,
}

/// Runs the guest with checkpoints, SIGKILLs it (and then up to `extra_kills`
/// restored processes) at random moments, restores until the guest finishes,
/// and checks the concatenated console output against `reference`.
pub fn kill_restore_trial(
    spec: &GuestSpec,
    reference: &[u8],
    ref_time: Duration,
    interval_ms: u64,
    extra_kills: usize,
    rng: &mut Rng,
) -> Trial {
    let dir = TempDir::new(spec.name);
    let ckpt = dir.path("ckpt");
    let mut trial = Trial::default();
    let span = (ref_time.as_millis() as u64).max(20);
    // Kill after the first checkpoint could exist, before the guest would finish.
    let kill_at = |rng: &mut Rng| Duration::from_millis(rng.range(0, span * 9 / 10));

    let seg0 = dir.path("seg0.txt");
    let mut child = spec
        .run_cmd(&seg0)
        .arg("--checkpoint-dir")
        .arg(&ckpt)
        .arg("--checkpoint-interval-ms")
        .arg(interval_ms.to_string())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn protected run");
    // Random moments after the first checkpoint is published (a kill before
    // it leaves nothing to restore, which cli_errors covers).
    let started = Instant::now();
    let published = started + Duration::from_secs(30);
    let has_full = |d: &Path| {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".full.ckpt"))
            })
            .unwrap_or(false)
    };
    while !has_full(&ckpt)
        && Instant::now() < published
        && child.try_wait().expect("try_wait").is_none()
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The guest started when the process did: draw from its remaining run time.
    let remaining = ref_time.saturating_sub(started.elapsed()).as_millis() as u64;
    let when = Duration::from_millis(rng.range(0, (remaining * 9 / 10).max(1)));
    if wait_for(&mut child, when) {
        let st = child.wait().expect("wait");
        let out = std::fs::read(&seg0).unwrap_or_default();
        assert!(st.success(), "protected run failed on its own: {st}");
        assert_eq!(
            out, reference,
            "{}: unkilled protected run differs from the reference",
            spec.name
        );
        return trial;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    trial.kills += 1;
    let mut printed = std::fs::read(&seg0).unwrap_or_default();
    assert!(
        reference.starts_with(&printed),
        "{}: output before the kill is not a prefix of the reference\n{}",
        spec.name,
        tail(&printed)
    );
    let mut pos = printed.len() as u64;
    let mut kills_left = extra_kills;
    loop {
        let seg = dir.path(&format!("seg{}.txt", trial.restores + 1));
        let mut child = Command::new(hotspare())
            .arg("restore")
            .arg("--checkpoint-dir")
            .arg(&ckpt)
            .arg("--checkpoint-interval-ms")
            .arg(interval_ms.to_string())
            .arg("--console")
            .arg(&seg)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn restore");
        trial.restores += 1;
        let killed = kills_left > 0 && !wait_for(&mut child, kill_at(rng));
        if killed {
            child.kill().expect("SIGKILL");
            kills_left -= 1;
            trial.kills += 1;
        }
        let st = child.wait().expect("wait");
        let mut err = String::new();
        child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        printed = std::fs::read(&seg).unwrap_or_default();
        if !killed {
            assert!(
                st.success(),
                "{}: restored run failed: {st}\nstderr: {err}\nconsole: {}",
                spec.name,
                tail(&printed)
            );
        }
        let Some(at) = resume_position(&err) else {
            // Killed before it said where it resumed: it must not have printed anything.
            assert!(
                killed && printed.is_empty(),
                "{}: restore did not report its console position: {err}",
                spec.name
            );
            continue;
        };
        assert!(
            at <= pos,
            "{}: output lost: {} bytes had been printed but the restore resumed at byte {at}",
            spec.name,
            pos
        );
        let at = at as usize;
        let end = at + printed.len();
        assert!(
            end <= reference.len(),
            "{}: restored run printed past the end of the reference",
            spec.name
        );
        assert!(
            reference[at..end] == printed[..],
            "{}: restored output differs from the reference at byte {at}\nrestored:\n{}\nexpected:\n{}",
            spec.name,
            tail(&printed),
            tail(&reference[at..end])
        );
        trial.repeated_bytes += pos - at as u64;
        pos = end as u64;
        if !killed {
            break;
        }
    }
    assert_eq!(
        pos as usize,
        reference.len(),
        "{}: the guest did not finish its output after the restore",
        spec.name
    );
    trial
}

/// Sends signal `sig` (`-STOP`, `-CONT`, ...) to process `pid`.
pub fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

/// Writes a fresh 32-byte key.
pub fn key_file(dir: &TempDir, name: &str, seed: u64) -> PathBuf {
    let mut r = Rng(seed | 1);
    let key: Vec<u8> = (0..32).map(|_| r.next() as u8).collect();
    let p = dir.path(name);
    // Private, as hotspare requires of a key file.
    std::fs::write(&p, key).expect("write key");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod key");
    p
}

/// Runs `trial` (given its number, from 1) up to `tries` times, until one
/// returns a non-zero count, and fails naming `what` if none did. For a
/// case that the scheduling of a loaded host may skip in one run but that
/// every run must handle correctly (each trial asserts that itself).
pub fn until_nonzero(tries: u32, what: &str, mut trial: impl FnMut(u32) -> u64) {
    let mut counts = Vec::new();
    for n in 1..=tries {
        let c = trial(n);
        counts.push(c);
        if c > 0 {
            return;
        }
    }
    panic!("{what}: zero in all {tries} trials ({counts:?})");
}

/// Checks a live copy's catch-up round (`catchup.rs`) against the copy:
/// it reads again part of what the copy read, never all of it. Says so
/// when join `attempt`'s round was empty (no epoch fell inside the copy),
/// which [`until_nonzero`] then repeats. `primary_err` is shown on failure.
pub fn check_catch_up(attempt: u32, units: u64, catch_up: u64, primary_err: &str) {
    assert!(
        catch_up < units,
        "{catch_up} of {units} units in the catch-up round:\n{primary_err}"
    );
    if catch_up == 0 {
        eprintln!("join {attempt}: no epoch fell inside the copy; its catch-up round was empty");
    }
}

/// A loopback address with a port free now, for a spare that a primary
/// dials from its start and that starts listening only later.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// The embedded arbiter shared by the processes of one test: a file beside
/// the key (both live in the test's own directory).
pub fn arbiter_arg(key: &Path) -> String {
    format!("file:{}", key.with_file_name("arbiter").display())
}

/// Starts a standby on an ephemeral loopback port; returns it and its address.
pub fn spawn_standby(key: &Path, console: &Path, listen: &str) -> (Proc, String) {
    spawn_standby_with(key, console, listen, &[])
}

/// Starts a standby with extra arguments.
pub fn spawn_standby_with(
    key: &Path,
    console: &Path,
    listen: &str,
    extra: &[&str],
) -> (Proc, String) {
    let mut c = Command::new(hotspare());
    c.args(["standby", "--listen", listen, "--key-file"])
        .arg(key)
        .arg("--arbiter")
        .arg(arbiter_arg(key))
        .arg("--console")
        .arg(console)
        .args(extra);
    start_standby(c)
}

/// Spawns a standby command and waits until it listens; returns it and
/// its address.
pub fn start_standby(mut c: Command) -> (Proc, String) {
    c.stdin(Stdio::null());
    let mut p = Proc::spawn_with_events(c);
    let addr = p
        .wait_event(Duration::from_secs(10), |e| match e {
            engine::events::Event::Listening { addr } => Some(addr.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("standby did not start:\n{}", p.stderr()));
    (p, addr)
}

/// Restores the newest checkpoint in `ckpt` in a new process that runs the
/// guest to its end with its console in `console`; returns the console
/// position it resumed at.
pub fn restore_to_end(ckpt: &Path, console: &Path, what: &str) -> usize {
    let out = Command::new(hotspare())
        .args(["restore", "--checkpoint-dir"])
        .arg(ckpt)
        .arg("--console")
        .arg(console)
        .output()
        .expect("spawn hotspare restore");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: restore failed: {err}");
    field(&err, "console resumes at byte ")
        .unwrap_or_else(|| panic!("{what}: no resume position:\n{err}")) as usize
}

/// For guests whose output is not a function of their inputs (memtest
/// `tsc=1`): the survivor's output `second`, which starts at console byte
/// `at`, must agree with everything `first` showed where they overlap,
/// lose nothing (`at` within what was shown), and finish the guest.
pub fn check_agrees(what: &str, first: &[u8], at: usize, second: &[u8]) {
    assert!(
        at <= first.len(),
        "{what}: output lost: {} bytes were shown, the survivor resumed at {at}",
        first.len()
    );
    let overlap = first.len() - at;
    assert!(
        second.len() >= overlap && first[at..] == second[..overlap],
        "{what}: the survivor contradicts what was shown from byte {at}:\nshown:\n{}\nsurvivor:\n{}",
        tail(&first[at..]),
        tail(&second[..overlap.min(second.len())])
    );
    assert!(
        String::from_utf8_lossy(second)
            .trim_end()
            .ends_with("result=ok"),
        "{what}: the guest did not finish: {}",
        tail(second)
    );
}

/// Starts a protected primary.
pub fn spawn_primary(
    spec: &GuestSpec,
    console: &Path,
    shadow: &str,
    key: &Path,
    interval_ms: u64,
) -> Proc {
    let mut c = spec.run_cmd(console);
    c.arg("--shadow")
        .arg(shadow)
        .arg("--key-file")
        .arg(key)
        .arg("--arbiter")
        .arg(arbiter_arg(key))
        .arg("--interval-ms")
        .arg(interval_ms.to_string())
        .args(&spec.primary_extra);
    Proc::spawn(c)
}

/// Checks `first` (the primary's released output) then `second` (the
/// shadow's, starting at console position `at`) re-create `reference`.
pub fn check_failover_output(
    name: &str,
    reference: &[u8],
    first: &[u8],
    at: usize,
    second: &[u8],
) -> u64 {
    assert!(
        reference.starts_with(first),
        "{name}: the primary's output is not a prefix of the reference\n{}",
        tail(first)
    );
    assert!(
        at <= first.len(),
        "{name}: output lost: the primary released {} bytes but the shadow resumed at byte {at}",
        first.len()
    );
    assert!(
        reference.len() == at + second.len() && reference[at..] == second[..],
        "{name}: the shadow's output from byte {at} is not the rest of the reference\nshadow:\n{}\nexpected:\n{}",
        tail(second),
        tail(&reference[at.min(reference.len())..])
    );
    (first.len() - at) as u64
}

/// Parses "... key X ..." numbers from a line.
pub fn field(line: &str, key: &str) -> Option<f64> {
    let i = line.find(key)? + key.len();
    line[i..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// One failover trial: primary + standby, SIGKILL the primary at a random
/// moment after the shadow is in sync, the standby takes over and finishes.
/// Returns (killed, repeated bytes, detection ms, activation ms).
pub fn failover_trial(
    spec: &GuestSpec,
    reference: &[u8],
    ref_time: Duration,
    interval_ms: u64,
    rng: &mut Rng,
) -> (bool, u64, f64, f64) {
    let dir = TempDir::new("failover");
    let key = key_file(&dir, "key", rng.next());
    let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
    let (mut standby, addr) = spawn_standby(&key, &scon, "127.0.0.1:0");
    let mut primary = spawn_primary(spec, &pcon, &addr, &key, interval_ms);
    let started = Instant::now();
    standby
        .wait_event(Duration::from_secs(30), |e| {
            matches!(e, engine::events::Event::InSync { .. }).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: the standby never synced\nprimary:\n{}\nstandby:\n{}",
                spec.name,
                primary.stderr(),
                standby.stderr()
            )
        });
    let remaining = ref_time.saturating_sub(started.elapsed()).as_millis() as u64;
    let when = Duration::from_millis(rng.range(0, (remaining * 9 / 10).max(1)));
    if wait_for(&mut primary.child, when) {
        let st = primary.wait(Duration::from_secs(5), "primary");
        assert!(
            st.success(),
            "{}: primary failed: {st}\n{}",
            spec.name,
            primary.stderr()
        );
        assert_eq!(
            std::fs::read(&pcon).unwrap(),
            reference,
            "{}: unkilled primary output differs",
            spec.name
        );
        let st = standby.wait(
            Duration::from_secs(10),
            "standby after the primary's guest ended",
        );
        assert!(
            st.success(),
            "{}: standby failed after goodbye: {}",
            spec.name,
            standby.stderr()
        );
        assert!(
            std::fs::read(&scon).unwrap_or_default().is_empty(),
            "{}: the standby printed output although the primary finished",
            spec.name
        );
        return (false, 0, 0.0, 0.0);
    }
    primary.child.kill().expect("SIGKILL primary");
    primary.child.wait().expect("wait");
    let (err, at) = finished_takeover(&mut standby, spec.name);
    if spec.primary_extra.contains(&"--verify-memory") {
        let v = err
            .lines()
            .find(|l| l.contains("shadow memory matched"))
            .unwrap_or_else(|| panic!("{}: no memory verification reported:\n{err}", spec.name));
        assert!(!v.contains("DIVERGED"), "{}: {v}", spec.name);
        assert!(
            field(v, "primary's at ").unwrap_or(0.0) >= 1.0,
            "{}: no epoch verified: {v}",
            spec.name
        );
    }
    let first = std::fs::read(&pcon).unwrap_or_default();
    let second = std::fs::read(&scon).unwrap_or_default();
    let repeated = check_failover_output(spec.name, reference, &first, at, &second);
    (
        true,
        repeated,
        field(&err, "detection ").unwrap_or(0.0),
        field(&err, "activation ").unwrap_or(0.0),
    )
}

/// A TCP proxy on loopback that delays every chunk in both directions by
/// `delay` plus random stalls of up to `stall` (what a lossy link looks like
/// to TCP: retransmissions show up as stalls). Stands in for `tc netem`,
/// which this kernel lacks.
pub struct DelayProxy {
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    pub fn start(target: &str, delay: Duration, stall: Duration, seed: u64) -> DelayProxy {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    n += 1;
                    let mut rng = Rng(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                    pump(from, to, delay, stall, rng.next());
                }
            }
        });
        DelayProxy { addr, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    delay: Duration,
    stall: Duration,
    seed: u64,
) {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        let mut rng = Rng(seed | 1);
        for (due, bytes) in rx {
            let mut due = due;
            // About one chunk in 20 is "lost" and arrives after a stall.
            if !stall.is_zero() && rng.next().is_multiple_of(20) {
                due += Duration::from_micros(rng.range(0, stall.as_micros() as u64));
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// Two network namespaces joined by a veth pair: the primary's host and the
/// standby's host. `None` where the machine does not allow it (not root, no
/// `ip`): the caller falls back to loopback and says so.
pub struct NetnsPair {
    pub primary_ns: String,
    pub standby_ns: String,
    pub standby_ip: String,
}

impl NetnsPair {
    pub fn create(tag: &str) -> Option<NetnsPair> {
        let id = format!("{}{}", std::process::id() % 100_000, tag);
        let (a, b) = (format!("hsp{id}"), format!("hss{id}"));
        let (va, vb) = (format!("hva{id}"), format!("hvb{id}"));
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let subnet = 10 + (std::process::id() % 200);
        let (ipa, ipb) = (format!("10.213.{subnet}.1"), format!("10.213.{subnet}.2"));
        let ok = ip(&["netns", "add", &a])
            && ip(&["netns", "add", &b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &a])
            && ip(&["link", "set", &vb, "netns", &b])
            && ip(&["-n", &a, "addr", "add", &format!("{ipa}/24"), "dev", &va])
            && ip(&["-n", &b, "addr", "add", &format!("{ipb}/24"), "dev", &vb])
            && ip(&["-n", &a, "link", "set", &va, "up"])
            && ip(&["-n", &b, "link", "set", &vb, "up"])
            && ip(&["-n", &a, "link", "set", "lo", "up"])
            && ip(&["-n", &b, "link", "set", "lo", "up"]);
        let pair = NetnsPair {
            primary_ns: a,
            standby_ns: b,
            standby_ip: ipb,
        };
        if ok {
            Some(pair)
        } else {
            drop(pair);
            None
        }
    }

    /// Wraps a command to run inside namespace `ns`.
    pub fn wrap(ns: &str, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.primary_ns, &self.standby_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
