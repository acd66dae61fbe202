//! Disk replication with failover: the `diskcheck` guest (which checks every
//! block it reads against the version its memory recorded) runs protected
//! with a virtio-blk disk; the primary is SIGKILLed at random moments; the
//! standby takes over on its replica. The console must stay byte-exact, no
//! block may fall out of step with memory (the guest would print FAIL), and
//! the replica must then boot with every block at the version the guest's
//! memory ended with.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TempDir};

const CMDLINE: &str = "blocks=256 ops=12000 every=250";
/// Shorter: with --verify-memory every epoch hashes memory and disk while paused.
const VERIFY_CMDLINE: &str = "blocks=256 ops=2000 every=50";
const DISK_BYTES: u64 = 8 << 20;

fn image(dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.path(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    p
}

fn run_cmd(disk: &Path, console: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(common::hotspare());
    c.args(["run", "--kernel"])
        .arg(hw_tests::guest_path("diskcheck"))
        .args(["--mem-mib", "64", "--disk"])
        .arg(disk)
        .args(["--cmdline", cmdline, "--console"])
        .arg(console)
        .stdin(Stdio::null());
    c
}

/// The final digest line of a diskcheck output.
fn done_digest(out: &str) -> &str {
    let line = out
        .lines()
        .find(|l| l.starts_with("diskcheck done"))
        .unwrap_or_else(|| panic!("no done line in:\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("digest="))
        .expect("digest")
}

/// Boots the replica and returns its scan digest (every block verified).
fn scan_digest(disk: &Path, dir: &TempDir, blocks: u64) -> String {
    let con = dir.path("verify.txt");
    let st = run_cmd(disk, &con, &format!("blocks={blocks} ops=0"))
        .status()
        .unwrap();
    let out = String::from_utf8_lossy(&std::fs::read(&con).unwrap()).into_owned();
    assert!(st.success(), "the replica does not boot cleanly:\n{out}");
    out.lines()
        .find(|l| l.starts_with("diskcheck scan"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("digest=")))
        .unwrap_or_else(|| panic!("no scan line:\n{out}"))
        .to_string()
}

struct Trial {
    killed: bool,
    repeated: u64,
}

fn trial(reference: &[u8], ack: &str, rng: &mut common::Rng) -> Trial {
    let dir = TempDir::new("disk-failover");
    let key = common::key_file(&dir, "key", rng.next());
    let (pdisk, rdisk) = (image(&dir, "primary.img"), image(&dir, "replica.img"));
    let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
    let (mut standby, addr) = common::spawn_standby_with(
        &key,
        &scon,
        "127.0.0.1:0",
        &["--disk", rdisk.to_str().unwrap(), "--disk-ack", ack],
    );
    let cmdline = if ack == "durable" {
        VERIFY_CMDLINE
    } else {
        CMDLINE
    };
    let mut c = run_cmd(&pdisk, &pcon, cmdline);
    c.arg("--shadow").arg(&addr).arg("--key-file").arg(&key);
    c.arg("--arbiter").arg(common::arbiter_arg(&key));
    c.args(["--interval-ms", "20"]);
    if ack == "durable" {
        // Test mode: memory and disk hashed at every epoch on both sides.
        c.arg("--verify-memory");
    }
    let mut primary = Proc::spawn(c);
    standby
        .wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "never synced\nprimary:\n{}\nstandby:\n{}",
                primary.stderr(),
                standby.stderr()
            )
        });
    // Kill when the released output reaches a random point of the run, so
    // kills land mid-run whatever the machine's speed.
    let target = rng.range(0, reference.len() as u64 * 9 / 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    while primary.child.try_wait().unwrap().is_none()
        && std::fs::metadata(&pcon).map_or(0, |m| m.len()) < target
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    if primary.child.try_wait().unwrap().is_some() {
        // It finished first: its output and disk are the reference's.
        let st = primary.wait(Duration::from_secs(5), "primary");
        assert!(st.success(), "primary failed:\n{}", primary.stderr());
        assert_eq!(std::fs::read(&pcon).unwrap(), reference);
        standby.wait(Duration::from_secs(10), "standby");
        return Trial {
            killed: false,
            repeated: 0,
        };
    }
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (err, at) = common::finished_takeover(&mut standby, "diskcheck");
    if ack == "durable" {
        let v = err
            .lines()
            .find(|l| l.contains("shadow memory matched"))
            .unwrap_or_else(|| panic!("no verification reported:\n{err}"));
        assert!(!v.contains("DIVERGED"), "{v}");
    }
    let first = std::fs::read(&pcon).unwrap_or_default();
    let second = std::fs::read(&scon).unwrap_or_default();
    let repeated = common::check_failover_output("diskcheck", reference, &first, at, &second);
    // The replica is the VM's disk now: it boots, every block verified, at
    // exactly the versions the guest's memory ended with.
    let want = done_digest(std::str::from_utf8(reference).unwrap());
    assert_eq!(
        scan_digest(&rdisk, &dir, 256),
        want,
        "the replica is out of step"
    );
    Trial {
        killed: true,
        repeated,
    }
}

fn reference(cmdline: &str) -> Vec<u8> {
    let dir = TempDir::new("disk-ref");
    let disk = image(&dir, "ref.img");
    let con = dir.path("ref.txt");
    let st = run_cmd(&disk, &con, cmdline).status().unwrap();
    let out = std::fs::read(&con).unwrap();
    assert!(
        st.success(),
        "reference run failed:\n{}",
        String::from_utf8_lossy(&out)
    );
    out
}

fn trials(n: usize, ack: &str) {
    if !common::kvm_available() {
        return;
    }
    let mut rng = common::Rng::from_env(&format!("disk-failover-{ack}"));
    let reference = reference(if ack == "durable" {
        VERIFY_CMDLINE
    } else {
        CMDLINE
    });
    let mut killed = 0;
    for i in 0..n {
        let t = trial(&reference, ack, &mut rng);
        killed += usize::from(t.killed);
        eprintln!("trial {i}: killed={} repeated={}", t.killed, t.repeated);
    }
    assert!(
        killed * 2 >= n,
        "only {killed} of {n} trials killed the primary mid-run"
    );
}

#[test]
fn diskcheck_failover_20_random_kills() {
    trials(20, "memory");
}

/// `--disk-ack durable`, with `--verify-memory`: at every commit the
/// shadow's memory and replica hash to what the primary's did.
#[test]
fn diskcheck_failover_durable_acks() {
    trials(3, "durable");
}

#[test]
fn a_replica_of_the_wrong_size_is_refused_clearly() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-wrong");
    let key = common::key_file(&dir, "key", 7);
    let small = dir.path("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(DISK_BYTES / 2)
        .unwrap();
    let (mut standby, addr) = common::spawn_standby_with(
        &key,
        &dir.path("s.txt"),
        "127.0.0.1:0",
        &["--disk", small.to_str().unwrap()],
    );
    let pdisk = image(&dir, "p.img");
    let mut c = run_cmd(&pdisk, &dir.path("p.txt"), "blocks=16 ops=10");
    c.arg("--shadow").arg(&addr).arg("--key-file").arg(&key);
    c.arg("--arbiter").arg(common::arbiter_arg(&key));
    c.args(["--wait-shadow-ms", "3000"]);
    let mut primary = Proc::spawn(c);
    let st = primary.wait(Duration::from_secs(30), "primary");
    let err = primary.stderr();
    // The guest still runs (unprotected), and the primary says why.
    assert!(st.success(), "{err}");
    assert!(
        err.contains("disk 0: the primary announces 8388608 bytes but replica")
            && err.contains("small.img has 4194304"),
        "{err}\nstandby:\n{}",
        standby.stderr()
    );
    let _ = standby.child.kill();
    // A missing replica is refused when the standby starts.
    let o = Command::new(common::hotspare())
        .args(["standby", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key))
        .arg("--disk")
        .arg(dir.path("missing.img"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("missing.img") && err.contains("cannot open"),
        "{err}"
    );
}

/// A tmpfs of `mib` MiB mounted at `dir`/`name` (root only), unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &TempDir, name: &str, mib: u64) -> Option<SmallFs> {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        if std::fs::metadata("/proc/self").map_or(1, |m| m.uid()) != 0 {
            common::skipped(
                "mounting a tmpfs to fill needs root: the disk-failure test did NOT run",
            );
            return None;
        }
        let p = dir.path(name);
        std::fs::create_dir_all(&p).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a {mib} MiB tmpfs at {} failed",
            p.display()
        );
        Some(SmallFs(p))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const FILL_CMDLINE: &str = "blocks=4096 ops=6000 every=250";

#[test]
fn a_full_primary_disk_hands_over_to_the_shadow() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("disk-full");
    let Some(fs) = SmallFs::mount(&dir, "small", 6) else {
        return;
    };
    // The reference, on an ordinary image.
    let rdisk = dir.path("ref.img");
    std::fs::File::create(&rdisk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let con = dir.path("ref.txt");
    assert!(run_cmd(&rdisk, &con, FILL_CMDLINE)
        .status()
        .unwrap()
        .success());
    let reference = std::fs::read(&con).unwrap();

    // The primary's 32 MiB image lives on a 6 MiB tmpfs: it fills mid-run.
    let pdisk = fs.0.join("primary.img");
    std::fs::File::create(&pdisk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let replica = dir.path("replica.img");
    std::fs::File::create(&replica)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let key = common::key_file(&dir, "key", 11);
    let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
    let (mut standby, addr) = common::spawn_standby_with(
        &key,
        &scon,
        "127.0.0.1:0",
        &["--disk", replica.to_str().unwrap()],
    );
    let mut c = run_cmd(&pdisk, &pcon, FILL_CMDLINE);
    c.arg("--shadow").arg(&addr).arg("--key-file").arg(&key);
    c.arg("--arbiter").arg(common::arbiter_arg(&key));
    let mut primary = Proc::spawn(c);
    let st = primary.wait(Duration::from_secs(60), "primary");
    let perr = primary.stderr();
    assert_eq!(
        st.code(),
        Some(75),
        "the primary did not hand over:\n{perr}"
    );
    assert!(
        perr.contains("No space left on device") && perr.contains("handing the VM over"),
        "{perr}"
    );
    let (_err, at) = common::finished_takeover(&mut standby, "diskcheck");
    let first = std::fs::read(&pcon).unwrap_or_default();
    let second = std::fs::read(&scon).unwrap_or_default();
    // The guest never saw the error: its output is the reference's.
    common::check_failover_output("diskcheck", &reference, &first, at, &second);
    let want = done_digest(std::str::from_utf8(&reference).unwrap());
    assert_eq!(scan_digest(&replica, &dir, 4096), want);

    // Unprotected, the same failure reaches the guest as IOERR, and the log
    // names the image and the errno.
    let pdisk2 = fs.0.join("unprotected.img");
    std::fs::remove_file(&pdisk).unwrap();
    std::fs::File::create(&pdisk2)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let con2 = dir.path("u.txt");
    let o = run_cmd(&pdisk2, &con2, FILL_CMDLINE).output().unwrap();
    let out = String::from_utf8_lossy(&std::fs::read(&con2).unwrap()).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.contains("what=status") && out.contains("got=0000000000000001"),
        "{out}"
    );
    assert!(
        err.contains("unprotected.img")
            && err.contains("No space left on device")
            && err.contains("IOERR"),
        "{err}"
    );
}

/// A spare joins a VM whose guest writes its disk all the while: the live
/// copy reads memory and disk from the running guest, the catch-up round
/// reads again what the guest wrote meanwhile (`catchup.rs`), memory and
/// disk alike. After a kill the spare takes over: the guest goes on
/// checking every block it reads against the versions its memory holds,
/// the console stays byte-exact, and the replica boots at exactly the
/// versions the guest's memory ended with. (No `--verify-memory` here: its
/// hashing makes each pause tens of milliseconds, and the copy would then
/// span too few epochs to need a catch-up.) As in `spares.rs`, the join
/// is repeated, up to three times, until a round carried units: on a
/// loaded host every epoch may be captured or encoded after the copy was
/// read, which leaves the round empty and the spare just as exact.
#[test]
fn a_spare_joining_a_writing_disk_catches_up_exactly() {
    if !common::kvm_available() {
        return;
    }
    let reference = reference(CMDLINE);
    common::until_nonzero(3, "a catch-up round carrying units", |attempt| {
        disk_join(attempt, &reference)
    });
}

/// One join of [`a_spare_joining_a_writing_disk_catches_up_exactly`], to
/// a takeover; returns the units of its catch-up round.
fn disk_join(attempt: u32, reference: &[u8]) -> u64 {
    let dir = TempDir::new(&format!("disk-join-{attempt}"));
    let key = common::key_file(&dir, "key", 0x10_1a);
    let (pdisk, rdisk) = (image(&dir, "primary.img"), image(&dir, "replica.img"));
    let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
    // 32 MiB of random pages from 8 MiB on (clear of the guest's image and
    // its device area at 48 MiB): a copy that spans several 10 ms epochs.
    let fill = dir.path("fill.ram");
    let mut r = common::Rng::from_env("a_spare_joining_a_writing_disk");
    let mut data = vec![0u8; 8 << 20];
    data.extend((0..(32 << 20) / 8).flat_map(|_| r.next().to_le_bytes()));
    std::fs::write(&fill, &data).unwrap();
    // The primary dials the spare from its start, and gets an answer only
    // once the guest runs.
    let addr = common::free_loopback_addr();
    let mut c = run_cmd(&pdisk, &pcon, CMDLINE);
    c.arg("--shadow").arg(&addr).arg("--key-file").arg(&key);
    c.arg("--arbiter").arg(common::arbiter_arg(&key));
    c.args(["--interval-ms", "10", "--wait-shadow-ms", "0"]);
    c.arg("--prefill").arg(&fill);
    let mut primary = Proc::spawn_with_events(c);
    // The guest runs unprotected and writes its disk before the spare is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&pcon).map_or(0, |m| m.len()) < 200 {
        assert!(
            Instant::now() < deadline && primary.child.try_wait().unwrap().is_none(),
            "the guest did not start:\n{}",
            primary.stderr()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut standby, _) = common::spawn_standby_with(
        &key,
        &scon,
        &addr,
        &["--disk", rdisk.to_str().unwrap(), "--disk-ack", "durable"],
    );
    let (units, catch_up) = primary
        .wait_event(Duration::from_secs(30), |e| match e {
            engine::events::Event::LiveCopied {
                units,
                catch_up_units,
                ..
            } => Some((*units, *catch_up_units)),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "no live copy:\n{}\nspare:\n{}",
                primary.stderr(),
                standby.stderr()
            )
        });
    common::check_catch_up(attempt, units, catch_up, &primary.stderr());
    standby
        .wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("never in sync:\n{}", standby.stderr()));
    // The kill comes at once: the spare takes over from its first commits,
    // where it holds most blocks as the catch-up round read them (those not
    // written again since), and the guest reads them on.
    assert!(
        primary.child.try_wait().unwrap().is_none(),
        "the guest ended before the kill:\n{}",
        primary.stderr()
    );
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (_, at) = common::finished_takeover(&mut standby, "diskcheck");
    let first = std::fs::read(&pcon).unwrap_or_default();
    let second = std::fs::read(&scon).unwrap_or_default();
    common::check_failover_output("diskcheck", reference, &first, at, &second);
    let want = done_digest(std::str::from_utf8(reference).unwrap());
    assert_eq!(
        scan_digest(&rdisk, &dir, 256),
        want,
        "the replica is out of step"
    );
    catch_up
}
