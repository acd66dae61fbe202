//! SIGKILL a checkpointing `hotspare run` at random moments, restore it in a
//! new process (sometimes killing the restored process too), and require the
//! console output to continue exactly: it must equal an uninterrupted run of
//! the same deterministic guest, with at most a byte-identical repetition of
//! what was printed after the last checkpoint. The guests check their own
//! memory and print `result=ok` only if every check passed.

mod common;

use common::{kill_restore_trial, reference, GuestSpec, Rng};

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
        GuestSpec::new("memtest", "rounds=400 writes=30000 pattern=sweep"),
        4,
        20,
        1,
    );
}

#[test]
fn memtest_mixed_patterns_survive_sigkill() {
    trials(
        GuestSpec::new("memtest", "rounds=300 writes=30000 pattern=mixed"),
        4,
        15,
        1,
    );
}

#[test]
fn memtest_whole_pages_survive_sigkill() {
    trials(
        GuestSpec::new("memtest", "rounds=150 writes=30000 pattern=pages"),
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
        GuestSpec::new("memtest32", "rounds=300 writes=30000 pattern=mixed"),
        2,
        20,
        1,
    );
}
