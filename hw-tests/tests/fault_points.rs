//! Crashes at exact moments (`HOTSPARE_FAULT`, `engine/src/faults.rs`)
//! rather than random ones: each named point gets a trial, with a guest
//! whose every line carries the TSC and a hash chained over all TSCs so far,
//! so output shown before its epoch committed, or a resume from the wrong
//! epoch, contradicts what was shown instead of passing as a repeat.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{GuestSpec, Proc, Rng, TempDir};

/// About 2 s unprotected; protected with 20 ms epochs, over 100 epochs.
const CMDLINE: &str = "rounds=800 pages=1024 writes=2000 tsc=1";

fn standby(key: &Path, console: &Path, fault: Option<&str>) -> (Proc, String) {
    let mut c = Command::new(common::hotspare());
    c.args(["standby", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(key))
        .arg("--console")
        .arg(console);
    if let Some(f) = fault {
        c.env("HOTSPARE_FAULT", f);
    }
    common::start_standby(c)
}

fn primary(spec: &GuestSpec, console: &Path, addr: &str, key: &Path, fault: Option<&str>) -> Proc {
    let mut c = spec.run_cmd(console);
    c.args(["--shadow", addr, "--key-file"])
        .arg(key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(key))
        .args(["--interval-ms", "20"]);
    if let Some(f) = fault {
        c.env("HOTSPARE_FAULT", f);
    }
    Proc::spawn(c)
}

/// A primary-side point: the primary crashes there, the standby takes over.
fn primary_crashes_at(point: &str) {
    if !common::kvm_available() {
        return;
    }
    let mut rng = Rng::from_env(point);
    for trial in 0..3 {
        let dir = TempDir::new("fault");
        let key = common::key_file(&dir, "key", rng.next());
        let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
        let spec = GuestSpec::new("memtest", CMDLINE);
        let fault = format!("{point}:{}", rng.range(5, 60));
        let (mut sb, addr) = standby(&key, &scon, None);
        let mut p = primary(&spec, &pcon, &addr, &key, Some(&fault));
        let st = p.wait(Duration::from_secs(60), "primary");
        let perr = p.stderr();
        assert!(
            st.code().is_none() && perr.contains(&format!("fault point {point} hit")),
            "{fault} trial {trial}: the primary did not crash at the point ({st}): the trial proves nothing\n{perr}"
        );
        let (serr, at) = common::finished_takeover(&mut sb, &fault);
        assert!(serr.contains("the arbiter granted VM"), "{serr}");
        let first = std::fs::read(&pcon).unwrap_or_default();
        let second = std::fs::read(&scon).unwrap_or_default();
        common::check_agrees(&format!("{fault} trial {trial}"), &first, at, &second);
    }
}

#[test]
fn primary_crash_mid_epoch_transfer() {
    primary_crashes_at("primary-mid-epoch");
}

#[test]
fn primary_crash_after_the_epoch_before_its_ack() {
    primary_crashes_at("primary-before-ack");
}

#[test]
fn primary_crash_after_the_ack_before_the_release() {
    primary_crashes_at("primary-before-release");
}

#[test]
fn standby_crash_after_the_ack_before_the_apply() {
    if !common::kvm_available() {
        return;
    }
    let mut rng = Rng::from_env("standby-before-apply");
    let dir = TempDir::new("fault");
    let key = common::key_file(&dir, "key", rng.next());
    let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
    let spec = GuestSpec::new("memtest", CMDLINE);
    let fault = format!("standby-before-apply:{}", rng.range(10, 60));
    let (mut sb, addr) = standby(&key, &scon, Some(&fault));
    let mut p = primary(&spec, &pcon, &addr, &key, None);
    let st = sb.wait(Duration::from_secs(60), "standby");
    assert!(
        st.code().is_none() && sb.stderr().contains("fault point standby-before-apply hit"),
        "{fault}: the standby did not crash at the point ({st})\n{}",
        sb.stderr()
    );
    // The primary had the ack, so it may have released the epoch's output;
    // it is the only copy now: the arbiter records it unprotected and the
    // guest finishes with all its output.
    let st = p.wait(Duration::from_secs(60), "primary");
    let perr = p.stderr();
    assert!(st.success(), "{perr}");
    assert!(
        perr.contains("as UNPROTECTED: held output released"),
        "{perr}"
    );
    let out = std::fs::read(&pcon).unwrap();
    assert!(
        String::from_utf8_lossy(&out)
            .trim_end()
            .ends_with("result=ok"),
        "{}",
        common::tail(&out)
    );
    assert!(std::fs::read(&scon).unwrap_or_default().is_empty());
}

/// A panic in the standby's apply path (after its ack, holding the
/// shadow) poisons the shadow. The primary is killed at that moment, the
/// most tempting one for a takeover, but the standby refuses to resume a
/// half-applied state: it says so and exits non-zero, its console empty.
#[test]
fn a_panic_while_applying_poisons_the_shadow_and_no_takeover_follows() {
    if !common::kvm_available() {
        return;
    }
    let mut rng = Rng::from_env("standby-panic");
    let dir = TempDir::new("fault-panic");
    let key = common::key_file(&dir, "key", rng.next());
    let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
    let spec = GuestSpec::new("memtest", CMDLINE);
    let fault = format!("standby-before-apply:{}:panic", rng.range(10, 60));
    let (mut sb, addr) = standby(&key, &scon, Some(&fault));
    let mut p = primary(&spec, &pcon, &addr, &key, None);
    let hit = sb.wait_line(
        "fault point standby-before-apply hit",
        Duration::from_secs(60),
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    assert!(
        hit.is_some_and(|l| l.contains("panic")),
        "{fault}: the standby did not panic at the point\n{}",
        sb.stderr()
    );
    let st = sb.wait(Duration::from_secs(30), "the poisoned standby");
    let err = sb.stderr();
    assert_eq!(st.code(), Some(1), "{fault}: {st}\n{err}");
    assert!(
        err.contains("the shadow is poisoned") && err.contains("refuses to take over"),
        "{fault}: the standby did not say why\n{err}"
    );
    assert!(!err.contains("TAKING OVER"), "{fault}:\n{err}");
    assert!(std::fs::read(&scon).unwrap_or_default().is_empty());
}

#[test]
fn store_crash_mid_write_restores_the_previous_checkpoint() {
    if !common::kvm_available() {
        return;
    }
    let mut rng = Rng::from_env("store-mid-write");
    for trial in 0..3 {
        let dir = TempDir::new("fault-store");
        let ckpt = dir.path("ckpt");
        let (seg0, seg1) = (dir.path("seg0.txt"), dir.path("seg1.txt"));
        let fault = format!("store-mid-write:{}", rng.range(3, 15));
        let spec = GuestSpec::new("memtest", CMDLINE);
        let mut c = spec.run_cmd(&seg0);
        c.arg("--checkpoint-dir")
            .arg(&ckpt)
            .args(["--checkpoint-interval-ms", "50"])
            .env("HOTSPARE_FAULT", &fault);
        let mut run = Proc::spawn(c);
        let st = run.wait(Duration::from_secs(60), "checkpointed run");
        assert!(
            st.code().is_none() && run.stderr().contains("fault point store-mid-write hit"),
            "{fault}: did not crash at the point ({st})\n{}",
            run.stderr()
        );
        let at = common::restore_to_end(&ckpt, &seg1, &fault);
        let shown = std::fs::read(&seg0).unwrap_or_default();
        let restored = std::fs::read(&seg1).unwrap_or_default();
        common::check_agrees(&format!("{fault} trial {trial}"), &shown, at, &restored);
    }
}

#[test]
fn an_unknown_fault_point_is_refused() {
    let o = Command::new(common::hotspare())
        .args(["tsc-khz"])
        .env("HOTSPARE_FAULT", "primary-nowhere")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown fault point") && err.contains("store-mid-write"),
        "{err}"
    );
}

/// A guest that ends on its own while checkpointing has its last output
/// recorded with its end before that output is shown (`store_end.rs`).
/// Killed right after the record, the run has not shown it; a restore shows
/// it and reports the guest's exit instead of running the guest again from
/// the last checkpoint (which, with a clock in the output, would print
/// something else). A run that was not killed leaves the same record.
#[test]
fn a_crash_after_the_guest_ended_shows_its_last_output_on_restore() {
    if !common::kvm_available() {
        return;
    }
    for fault in [Some("end-before-release"), None] {
        let dir = TempDir::new("fault-end");
        let ckpt = dir.path("ckpt");
        let (seg0, seg1) = (dir.path("seg0.txt"), dir.path("seg1.txt"));
        let spec = GuestSpec::new("memtest", "rounds=40 pages=1024 writes=4000 tsc=1");
        let mut c = spec.run_cmd(&seg0);
        c.arg("--checkpoint-dir")
            .arg(&ckpt)
            .args(["--checkpoint-interval-ms", "20"]);
        if let Some(f) = fault {
            c.env("HOTSPARE_FAULT", f);
        }
        let mut run = Proc::spawn(c);
        let st = run.wait(Duration::from_secs(60), "checkpointed run");
        match fault {
            Some(f) => assert!(
                st.code().is_none() && run.stderr().contains(&format!("fault point {f} hit")),
                "{f}: did not crash at the point ({st})\n{}",
                run.stderr()
            ),
            None => assert!(st.success(), "{st}\n{}", run.stderr()),
        }
        assert!(ckpt.join("ended").is_file(), "{fault:?}: no end record");
        let at = common::restore_to_end(&ckpt, &seg1, &format!("{fault:?}"));
        let shown = std::fs::read(&seg0).unwrap_or_default();
        let restored = std::fs::read(&seg1).unwrap_or_default();
        common::check_agrees(&format!("{fault:?}"), &shown, at, &restored);
        let tail = String::from_utf8_lossy(&restored);
        assert!(tail.contains("memtest done"), "{fault:?}: {tail}");
    }
}
