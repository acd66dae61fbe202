//! Fencing with a real etcd: faults between a primary and a standby on two
//! hosts (network namespaces) while both processes stay alive. In every
//! case exactly one copy ends up owning the VM, the other never shows
//! output that contradicts it, and the winner's output is continuous.
//!
//! The guest prints, on every line, the TSC and a hash chained over every
//! TSC printed so far: a re-executed stretch that became visible prints
//! other values, and so does every line after it, so output released
//! before its epoch committed, or a takeover from a stale epoch, shows up
//! as a contradiction, not as an allowed repeat.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{Etcd, Lab};
use common::{GuestSpec, Proc, TempDir};

/// About ten seconds of guest on this machine, a line every few ms.
const CMDLINE: &str = "rounds=1600 pages=1024 writes=2000 tsc=1 sleep=4";
const PORT: u16 = 7400;
/// Output held this long without the arbiter before the guest pauses.
const HOLD_MS: &str = "1000";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Primary and standby cannot reach each other for `ms`; each reaches
    /// the arbiter or not.
    Partition {
        primary_reaches_arbiter: bool,
        standby_reaches_arbiter: bool,
        ms: u64,
    },
    /// SIGSTOP of the primary for `ms`, then SIGCONT.
    Freeze { ms: u64 },
    /// Every segment between them answered with a TCP reset for `ms`.
    Reset { ms: u64 },
    /// The etcd member both sides name first dies; then the primary is
    /// SIGKILLed.
    MemberDiesThenPrimary,
}

#[derive(Debug, PartialEq)]
enum Winner {
    Primary,
    Standby,
}

struct Outcome {
    winner: Winner,
    primary_err: String,
    standby_err: String,
}

/// Runs the protected guest across the lab, injects `fault` once the
/// standby is in sync and the guest is mid-run, heals it, and checks that
/// one copy owns the VM with consistent output.
fn trial(fault: Fault, etcd_members: usize, tag: &str) -> Outcome {
    let lab = Lab::create(tag);
    let mut etcd = Etcd::start(&lab.hub_ip, etcd_members);
    let dir = TempDir::new("fencing");
    let key = common::key_file(&dir, "key", 0xfe4ce ^ tag.len() as u64);
    let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
    let vm = format!("fence-{tag}");
    let mut sc = Command::new(common::hotspare());
    sc.args(["standby", "--listen", &format!("{}:{PORT}", lab.standby_ip)])
        .arg("--key-file")
        .arg(&key)
        .args(["--arbiter", &etcd.spec()])
        .arg("--console")
        .arg(&scon);
    let mut standby = Proc::spawn(Lab::wrap(&lab.standby_ns, &sc));
    standby
        .wait_line("standby listening on", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{tag}: standby did not start:\n{}", standby.stderr()));
    let spec = GuestSpec::new("memtest", CMDLINE);
    let mut pc = spec.run_cmd(&pcon);
    pc.args(["--shadow", &format!("{}:{PORT}", lab.standby_ip)])
        .arg("--key-file")
        .arg(&key)
        .args(["--arbiter", &etcd.spec(), "--vm-id", &vm])
        .args(["--arbiter-hold-ms", HOLD_MS, "--interval-ms", "20"]);
    let mut primary = Proc::spawn(Lab::wrap(&lab.primary_ns, &pc));
    standby
        .wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "{tag}: never synced\nprimary:\n{}\nstandby:\n{}",
                primary.stderr(),
                standby.stderr()
            )
        });
    std::thread::sleep(Duration::from_millis(800));
    // Every trial faults mid-run: a guest that finished first fails it.
    let shown = std::fs::read(&pcon).unwrap_or_default();
    assert!(
        primary.child.try_wait().unwrap().is_none()
            && !String::from_utf8_lossy(&shown).contains("memtest done"),
        "{tag}: the guest finished before the fault; the trial proves nothing\n{}",
        primary.stderr()
    );
    let pid = primary.child.id();
    match fault {
        Fault::Partition {
            primary_reaches_arbiter,
            standby_reaches_arbiter,
            ms,
        } => {
            lab.cut(&lab.primary_ns, &lab.standby_ip);
            lab.cut(&lab.standby_ns, &lab.primary_ip);
            if !primary_reaches_arbiter {
                lab.cut(&lab.primary_ns, &lab.hub_ip);
            }
            if !standby_reaches_arbiter {
                lab.cut(&lab.standby_ns, &lab.hub_ip);
            }
            std::thread::sleep(Duration::from_millis(ms));
            lab.heal();
        }
        Fault::Freeze { ms } => {
            common::signal("-STOP", pid);
            std::thread::sleep(Duration::from_millis(ms));
            common::signal("-CONT", pid);
        }
        Fault::Reset { ms } => {
            lab.reset(&lab.primary_ns, PORT);
            lab.reset(&lab.standby_ns, PORT);
            std::thread::sleep(Duration::from_millis(ms));
            lab.heal();
        }
        Fault::MemberDiesThenPrimary => {
            etcd.kill(0);
            std::thread::sleep(Duration::from_millis(300));
            common::signal("-KILL", pid);
        }
    }
    let st = primary.wait(Duration::from_secs(120), "primary after the fault");
    let perr = primary.stderr();
    // Read once the fault has played out (after the primary ended);
    // each branch reads it again once the standby is done too.
    let record = etcd.record(&vm);
    let first = std::fs::read(&pcon).unwrap_or_default();
    let winner = match st.code() {
        Some(76) => Winner::Standby,
        None if fault == Fault::MemberDiesThenPrimary => Winner::Standby,
        Some(0) => Winner::Primary,
        other => panic!(
            "{tag}: the primary ended with {other:?}\nprimary:\n{perr}\nstandby:\n{}\nrecord: {record}",
            standby.stderr()
        ),
    };
    match winner {
        Winner::Standby => {
            assert!(
                fault == Fault::MemberDiesThenPrimary || perr.contains("SUPERSEDED"),
                "{tag}: exit 76 without saying why:\n{perr}"
            );
            let sst = standby.wait(Duration::from_secs(120), "standby after its takeover");
            let serr = standby.stderr();
            assert!(sst.success(), "{tag}: the new primary failed:\n{serr}");
            let at = common::takeover_resume(&serr, tag);
            let second = std::fs::read(&scon).unwrap_or_default();
            // Everything the old primary ever showed is what the winner's
            // history holds at those positions: nothing it released
            // contradicts the copy that owns the VM now.
            common::check_agrees(tag, &first, at, &second);
            let record = etcd.record(&vm);
            assert!(record.contains("\"term\":2"), "{tag}: record {record}");
            Outcome {
                winner,
                primary_err: perr,
                standby_err: serr,
            }
        }
        Winner::Primary => {
            assert!(
                String::from_utf8_lossy(&first)
                    .trim_end()
                    .ends_with("result=ok"),
                "{tag}: the primary did not finish the guest:\n{}",
                common::tail(&first)
            );
            // The standby gets a goodbye if the primary re-protected
            // itself after the fault; otherwise it waits for a primary.
            let end = Instant::now() + Duration::from_secs(10);
            while standby.child.try_wait().unwrap().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = standby.child.kill();
            let serr = standby.stderr();
            assert!(
                !serr.contains("TAKING OVER"),
                "{tag}: both copies own the VM:\nprimary:\n{perr}\nstandby:\n{serr}"
            );
            assert!(
                std::fs::read(&scon).unwrap_or_default().is_empty(),
                "{tag}: the standby showed output although it never took over"
            );
            let record = etcd.record(&vm);
            assert!(record.contains("\"term\":1"), "{tag}: record {record}");
            Outcome {
                winner,
                primary_err: perr,
                standby_err: serr,
            }
        }
    }
}

/// A 3 s partition between the hosts, the arbiter reachable from the
/// primary and the standby as given (`None` without KVM: skipped).
fn partition(primary_reaches: bool, standby_reaches: bool, tag: &str) -> Option<Outcome> {
    if !common::kvm_available() {
        return None;
    }
    Some(trial(
        Fault::Partition {
            primary_reaches_arbiter: primary_reaches,
            standby_reaches_arbiter: standby_reaches,
            ms: 3000,
        },
        1,
        tag,
    ))
}

#[test]
fn partition_with_the_arbiter_reachable_from_both_leaves_one_owner() {
    let Some(o) = partition(true, true, "both") else {
        return;
    };
    eprintln!("partition, arbiter reachable from both: {:?} won", o.winner);
}

#[test]
fn partition_with_the_arbiter_reachable_only_from_the_primary_keeps_the_primary() {
    let Some(o) = partition(true, false, "ponly") else {
        return;
    };
    assert_eq!(
        o.winner,
        Winner::Primary,
        "primary:\n{}\nstandby:\n{}",
        o.primary_err,
        o.standby_err
    );
    assert!(
        o.primary_err
            .contains("recorded this primary (term 1) as UNPROTECTED"),
        "{}",
        o.primary_err
    );
}

#[test]
fn partition_with_the_arbiter_reachable_only_from_the_standby_moves_the_vm() {
    let Some(o) = partition(false, true, "sonly") else {
        return;
    };
    assert_eq!(o.winner, Winner::Standby, "{}", o.primary_err);
    // Cut off from the arbiter past the hold bound, the primary paused its
    // guest (its output held) instead of running on.
    assert!(o.primary_err.contains("guest PAUSED"), "{}", o.primary_err);
}

#[test]
fn partition_with_the_arbiter_reachable_from_neither_holds_then_one_owner() {
    let Some(o) = partition(false, false, "neither") else {
        return;
    };
    assert!(o.primary_err.contains("guest PAUSED"), "{}", o.primary_err);
    assert!(
        o.standby_err.contains("staying a shadow"),
        "{}",
        o.standby_err
    );
}

#[test]
fn a_primary_frozen_past_the_timeout_is_superseded_and_stops() {
    if !common::kvm_available() {
        return;
    }
    let o = trial(Fault::Freeze { ms: 1000 }, 1, "freeze");
    assert_eq!(o.winner, Winner::Standby, "{}", o.primary_err);
}

#[test]
fn tcp_resets_between_the_hosts_leave_one_owner() {
    if !common::kvm_available() {
        return;
    }
    let o = trial(Fault::Reset { ms: 500 }, 1, "reset");
    eprintln!("TCP resets: {:?} won", o.winner);
}

#[test]
fn a_dead_etcd_member_does_not_stop_a_failover() {
    if !common::kvm_available() {
        return;
    }
    let o = trial(Fault::MemberDiesThenPrimary, 3, "member");
    assert!(
        o.standby_err.contains("the arbiter granted VM"),
        "{}",
        o.standby_err
    );
}

fn hotspare_output(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::hotspare())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn hotspare");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn replication_without_an_arbiter_or_with_a_bad_one_is_a_clear_error() {
    let dir = TempDir::new("arbiter-cli");
    let key = common::key_file(&dir, "key", 5);
    let key = key.to_str().unwrap();
    // The check comes before the VM is built: no guest or KVM needed.
    let standby = |arbiter: &[&str]| {
        hotspare_output(
            &[
                &["standby", "--listen", "127.0.0.1:0", "--key-file", key],
                arbiter,
            ]
            .concat(),
        )
    };
    let (code, err) = standby(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--arbiter is required") && err.contains("etcd://") && err.contains("none"),
        "{err}"
    );
    for (spec, want) in [
        ("zookeeper://h:1", "expected etcd://"),
        ("etcd://hostonly", "is not HOST:PORT"),
        ("file:", "needs a path"),
    ] {
        let (code, err) = standby(&["--arbiter", spec]);
        assert_eq!(code, Some(1), "{spec}: {err}");
        assert!(err.contains(want) && err.contains(spec), "{spec}: {err}");
    }
    // An etcd nobody answers at: the standby cannot check who it follows.
    let (code, err) = standby(&["--arbiter", "etcd://127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach its arbiter"), "{err}");
    let (code, err) = hotspare_output(&[
        "run",
        "--kernel",
        "/nonexistent.elf",
        "--shadow",
        "127.0.0.1:9",
        "--key-file",
        key,
        "--arbiter",
        "file:/tmp/x",
        "--vm-id",
        "../etc",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--vm-id \"../etc\""), "{err}");
}

#[test]
fn a_pair_fenced_by_different_arbiters_refuses_to_replicate() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("arbiter-mismatch");
    let key = common::key_file(&dir, "key", 6);
    let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
    let mut sc = Command::new(common::hotspare());
    sc.args(["standby", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key)
        .arg("--console")
        .arg(&scon)
        .arg("--arbiter")
        .arg(format!("file:{}", dir.path("other").display()));
    let (mut standby, addr) = common::start_standby(sc);
    let spec = GuestSpec::new("memtest", "rounds=60 pages=256 writes=1000 tsc=1");
    let mut c = spec.run_cmd(&pcon);
    c.args(["--shadow", &addr, "--key-file"])
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key))
        .args(["--wait-shadow-ms", "3000"]);
    let mut primary = Proc::spawn(c);
    let st = primary.wait(Duration::from_secs(60), "primary");
    let err = primary.stderr();
    // The guest runs on, unprotected, and the primary says why.
    assert!(st.success(), "{err}");
    assert!(
        err.contains("the primary is fenced by") && err.contains("give both the same --arbiter"),
        "{err}\nstandby:\n{}",
        standby.stderr()
    );
    assert!(String::from_utf8_lossy(&std::fs::read(&pcon).unwrap())
        .trim_end()
        .ends_with("result=ok"));
    let _ = standby.child.kill();
    assert!(std::fs::read(&scon).unwrap_or_default().is_empty());
}

#[test]
fn a_vm_id_with_a_running_primary_cannot_be_started_twice() {
    if !common::kvm_available() {
        return;
    }
    let dir = TempDir::new("arbiter-twice");
    let key = common::key_file(&dir, "key", 7);
    let spec = GuestSpec::new("memtest", "rounds=400 pages=1024 writes=2000 sleep=4");
    let start = |console: &str, extra: &[&str]| {
        let mut c = spec.run_cmd(&dir.path(console));
        // No standby answers: the guest runs unprotected under the record.
        c.args(["--shadow", "127.0.0.1:9", "--key-file"])
            .arg(&key)
            .arg("--arbiter")
            .arg(common::arbiter_arg(&key))
            .args(["--vm-id", "twice", "--wait-shadow-ms", "0"])
            .args(extra);
        Proc::spawn(c)
    };
    let mut first = start("1.txt", &[]);
    first
        .wait_line("is ours in term 1", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{}", first.stderr()));
    let mut second = start("2.txt", &[]);
    let st = second.wait(Duration::from_secs(20), "second primary");
    let err = second.stderr();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("already has a running primary") && err.contains("--supersede"),
        "{err}"
    );
    assert!(std::fs::read(dir.path("2.txt"))
        .unwrap_or_default()
        .is_empty());
    let st = first.wait(Duration::from_secs(60), "first primary");
    assert!(st.success(), "{}", first.stderr());
    // The guest ended: the record is stopped, and the VM may start again.
    let mut third = start("3.txt", &[]);
    third
        .wait_line("is ours in term 2", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{}", third.stderr()));
    let _ = third.child.kill();
}
