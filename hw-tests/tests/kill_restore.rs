//! SIGKILL a checkpointing `hotspare run` at random moments, restore it in a
//! new process (sometimes killing the restored process too), and require the
//! console output to continue exactly: it must equal an uninterrupted run of
//! the same deterministic guest, with at most a byte-identical repetition of
//! what was printed after the last checkpoint. The guests check their own
//! memory and print `result=ok` only if every check passed.

mod common;

use common::{kill_restore_trial, reference, GuestSpec, Rng};
use std::time::Duration;

fn trials(spec: GuestSpec, n: usize, interval_ms: u64, extra_kills: usize) {
    if !common::kvm_available() {
        return;
    }
    let (r, took) = reference(&spec);
    let text = String::from_utf8_lossy(&r);
    assert!(
        text.contains("result=ok"),
        "{}: reference run did not pass its own check:\n{}",
        spec.name,
        common::tail(&r)
    );
    let (r2, _) = reference(&spec);
    assert_eq!(
        r, r2,
        "{}: the guest is not deterministic; its output cannot be compared",
        spec.name
    );
    let mut rng = Rng::from_env(spec.name);
    let mut kills = 0;
    let mut repeated = 0;
    for i in 0..n {
        let t = kill_restore_trial(
            &spec,
            &r,
            took,
            interval_ms,
            extra_kills.min(i % 2),
            &mut rng,
        );
        kills += t.kills;
        repeated += t.repeated_bytes;
    }
    eprintln!(
        "{} ({}): {n} trials, {kills} SIGKILLs, output continuous, {repeated} bytes repeated byte-identically in total",
        spec.name, spec.cmdline
    );
    assert!(
        kills > 0,
        "{}: no trial managed to kill the guest mid-run (reference run took {took:?})",
        spec.name
    );
}

#[test]
fn memtest_sweep_survives_sigkill() {
    trials(
        GuestSpec::new("memtest", "rounds=120 writes=30000 pattern=sweep"),
        4,
        20,
        1,
    );
}

#[test]
fn memtest_mixed_patterns_survive_sigkill() {
    trials(
        GuestSpec::new("memtest", "rounds=100 writes=30000 pattern=mixed"),
        4,
        15,
        1,
    );
}

#[test]
fn memtest_whole_pages_survive_sigkill() {
    trials(
        GuestSpec::new("memtest", "rounds=50 writes=30000 pattern=pages"),
        3,
        10,
        1,
    );
}

#[test]
fn timer_guest_survives_sigkill() {
    trials(GuestSpec::new("timer", "ticks=2500 every=50"), 4, 20, 1);
}

#[test]
fn sse_guest_survives_sigkill() {
    trials(GuestSpec::new("sse", "rounds=50"), 4, 10, 1);
}

#[test]
fn smp_guest_survives_sigkill() {
    trials(GuestSpec::new("smp", "rounds=1000").vcpus(2), 4, 15, 1);
}

#[test]
fn elf32_pvh_guest_survives_sigkill() {
    trials(
        GuestSpec::new("memtest32", "rounds=100 writes=30000 pattern=mixed"),
        2,
        20,
        1,
    );
}

/// Output that is not a function of the guest's inputs (each round line
/// carries the TSC) must never be contradicted by a restore: a local
/// checkpoint holds output until the checkpoint that produced it is
/// durable, and the restore shows the last epoch's output again from where
/// it starts, so what the killed run showed and what the restored run
/// shows agree byte for byte where they overlap, and nothing is missing.
#[test]
fn clock_dependent_output_is_never_contradicted_by_a_restore() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=80 pages=1024 writes=4000 tsc=1");
    let mut rng = common::Rng::from_env("tsc-restore");
    let mut kills = 0;
    for trial in 0..6 {
        let dir = common::TempDir::new("tsc");
        let ckpt = dir.path("ckpt");
        let (seg0, seg1) = (dir.path("seg0.txt"), dir.path("seg1.txt"));
        let mut child = spec
            .run_cmd(&seg0)
            .arg("--checkpoint-dir")
            .arg(&ckpt)
            .args(["--checkpoint-interval-ms", "20"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill once some output has been shown (so a checkpoint exists).
        let target = rng.range(100, 3000);
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none()
            && std::fs::metadata(&seg0).map_or(0, |m| m.len()) < target
            && std::time::Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_some() {
            continue;
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let shown = std::fs::read(&seg0).unwrap();
        let at = common::restore_to_end(&ckpt, &seg1, &format!("trial {trial}"));
        let restored = std::fs::read(&seg1).unwrap();
        common::check_agrees(&format!("trial {trial}"), &shown, at, &restored);
    }
    assert!(
        kills >= 3,
        "only {kills} of 6 trials killed the run mid-way"
    );
}
