//! Shared harness of the KVM tests: locating the `hotspare` binary, running
//! guests as separate processes, SIGKILLing them at random moments, restoring
//! them, and checking that the console output is exactly continuous.
#![allow(dead_code)]

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
        eprintln!("!!!!!!!! SKIPPED: /dev/kvm is missing and HOTSPARE_SKIP_KVM_TESTS=1: this KVM test did NOT run !!!!!!!!");
        return false;
    }
    panic!(
        "/dev/kvm is missing: the hw-tests run real guests on KVM. Run them on a KVM-capable Linux host \
         (root or the kvm group), or set HOTSPARE_SKIP_KVM_TESTS=1 to skip them (loudly)."
    );
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
}

impl GuestSpec {
    pub fn new(name: &'static str, cmdline: &str) -> GuestSpec {
        GuestSpec {
            name,
            cmdline: cmdline.to_string(),
            mem_mib: 128,
            vcpus: 1,
        }
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
            .stdin(Stdio::null());
        c
    }
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
fn wait_for(child: &mut Child, t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.try_wait().expect("try_wait").is_some()
}

/// Parses "console resumes at byte N" from a restore's stderr.
fn resume_position(stderr: &str) -> Option<u64> {
    let i = stderr.find("console resumes at byte ")?;
    stderr[i + 24..].split_whitespace().next()?.parse().ok()
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
