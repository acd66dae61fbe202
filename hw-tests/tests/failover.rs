//! Replication with failover: a primary and a standby as separate processes
//! (on loopback), the primary SIGKILLed at random moments. The shadow must
//! take over and the console output must continue exactly: the primary's
//! released output followed by the shadow's equals an uninterrupted run,
//! with at most a byte-identical repetition at the boundary.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{failover_trial, reference, spawn_primary, spawn_standby, GuestSpec, Rng, TempDir};

fn trials(spec: GuestSpec, n: usize, interval_ms: u64) {
    if !common::kvm_available() {
        return;
    }
    eprintln!(
        "{}: primary and standby run as separate processes on loopback (127.0.0.1)",
        spec.name
    );
    let (r, mut took) = reference(&spec);
    assert!(String::from_utf8_lossy(&r).contains("result=ok"));
    let mut rng = Rng::from_env(spec.name);
    let (mut kills, mut repeated) = (0, 0);
    let (mut det, mut act) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = std::time::Instant::now();
        let (killed, rep, d, a) = failover_trial(&spec, &r, took, interval_ms, &mut rng);
        if !killed {
            // The kill time is drawn inside the guest's run time, estimated
            // by the unprotected reference run; a replicated run that ended
            // sooner (the reference ran beside other tests on this 2-core
            // host) shows the estimate was long: draw inside that instead.
            took = took.min(t.elapsed());
        }
        if killed {
            kills += 1;
            repeated += rep;
            det.push(d);
            act.push(a);
        }
    }
    det.sort_by(f64::total_cmp);
    act.sort_by(f64::total_cmp);
    eprintln!(
        "{} ({}): {n} trials, {kills} primaries SIGKILLed, every takeover continuous; {repeated} bytes repeated in total; \
         detection median {:.1} ms, activation median {:.2} ms",
        spec.name,
        spec.cmdline,
        det.get(det.len() / 2).copied().unwrap_or(0.0),
        act.get(act.len() / 2).copied().unwrap_or(0.0)
    );
    assert!(
        kills >= n / 2,
        "{}: only {kills} of {n} trials killed the primary mid-run",
        spec.name
    );
}

#[test]
fn memtest_failover_20_random_kills() {
    trials(
        GuestSpec::new("memtest", "rounds=100 writes=30000 pattern=mixed"),
        20,
        25,
    );
}

/// Test mode: at every committed epoch the shadow's memory hash must equal
/// the primary's at that epoch.
#[test]
fn shadow_memory_equals_primary_memory_at_every_commit() {
    trials(
        GuestSpec::new("memtest", "rounds=100 writes=30000 pattern=mixed")
            .primary_args(&["--verify-memory"]),
        3,
        50,
    );
    trials(
        GuestSpec::new("smp", "rounds=600")
            .vcpus(2)
            .primary_args(&["--verify-memory"]),
        2,
        50,
    );
}

#[test]
fn elf32_pvh_guest_failover() {
    trials(
        GuestSpec::new("memtest32", "rounds=100 writes=30000 pattern=mixed"),
        3,
        25,
    );
}

#[test]
fn smp_failover() {
    trials(GuestSpec::new("smp", "rounds=1000").vcpus(2), 4, 25);
}

#[test]
fn timer_failover() {
    trials(GuestSpec::new("timer", "ticks=2500 every=50"), 4, 25);
}

#[test]
fn sse_failover() {
    trials(GuestSpec::new("sse", "rounds=50"), 4, 25);
}

/// SIGKILL the shadow: the primary keeps running unprotected (its output
/// complete and correct), then re-protects to a new standby on the same
/// address, which can take over in turn.
#[test]
fn shadow_loss_then_reprotection() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=200 writes=30000 pattern=mixed");
    let (r, _) = reference(&spec);
    let dir = TempDir::new("reprotect");
    let key = common::key_file(&dir, "key", 7);
    let (mut s1, addr) = spawn_standby(&key, &dir.path("s1.txt"), "127.0.0.1:0");
    let pcon = dir.path("primary.txt");
    let mut primary = spawn_primary(&spec, &pcon, &addr, &key, 25);
    s1.wait_line("standby in sync", Duration::from_secs(30))
        .expect("first standby synced");
    std::thread::sleep(Duration::from_millis(300));
    s1.child.kill().unwrap();
    s1.child.wait().unwrap();
    primary
        .wait_line("UNPROTECTED", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the primary did not report running unprotected:\n{}",
                primary.stderr()
            )
        });
    assert!(
        primary.child.try_wait().unwrap().is_none(),
        "the primary died with its shadow"
    );
    // A new standby on the same address: the primary re-syncs to it.
    let (mut s2, _) = spawn_standby(&key, &dir.path("s2.txt"), &addr);
    s2.wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "the primary did not re-protect:\nprimary:\n{}\nstandby:\n{}",
                primary.stderr(),
                s2.stderr()
            )
        });
    std::thread::sleep(Duration::from_millis(200));
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (_, at) = common::finished_takeover(&mut s2, "second standby");
    let first = std::fs::read(&pcon).unwrap();
    let second = std::fs::read(dir.path("s2.txt")).unwrap();
    common::check_failover_output("reprotect", &r, &first, at, &second);
    assert!(std::fs::read(dir.path("s1.txt"))
        .unwrap_or_default()
        .is_empty());
}

/// A shadow that freezes (SIGSTOP: its host hangs without resetting the
/// connection, so its socket buffers fill and writes block) is declared
/// lost by the heartbeat monitor, and the primary's sender does not block
/// on it for TCP's retry time: the guest runs to its end unprotected, with
/// its complete, correct output.
#[test]
fn frozen_shadow_is_declared_lost_and_the_guest_runs_on() {
    if !common::kvm_available() {
        return;
    }
    // Whole random pages: megabytes per epoch, to fill the socket buffers.
    let spec = GuestSpec::new("memtest", "rounds=150 writes=20000 pattern=pages");
    let (r, _) = reference(&spec);
    let dir = TempDir::new("frozen");
    let key = common::key_file(&dir, "key", 9);
    let (mut s1, addr) = spawn_standby(&key, &dir.path("s1.txt"), "127.0.0.1:0");
    let pcon = dir.path("primary.txt");
    let mut primary = spawn_primary(&spec, &pcon, &addr, &key, 25);
    s1.wait_line("standby in sync", Duration::from_secs(30))
        .expect("standby synced");
    common::signal("-STOP", s1.child.id());
    primary
        .wait_line("UNPROTECTED", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "a frozen shadow was not declared lost:\n{}",
                primary.stderr()
            )
        });
    // Generous bound: the guest alone takes a few seconds; a sender stuck
    // in a write to the frozen peer would hold the supervisor for minutes.
    primary.wait(Duration::from_secs(120), "the primary with a frozen shadow");
    common::signal("-CONT", s1.child.id());
    s1.child.kill().unwrap();
    s1.child.wait().unwrap();
    let out = std::fs::read(&pcon).unwrap();
    assert!(
        out == r,
        "the primary's output differs from an unprotected run ({} against {} bytes)",
        out.len(),
        r.len()
    );
}

/// A standby whose staging cap (`--max-epoch-mib`) is smaller than the
/// primary's epochs refuses them with a message naming the option; the
/// primary is told why, runs unprotected and keeps the guest's output
/// complete and correct; the standby never takes over.
#[test]
fn epochs_over_the_standby_staging_cap_are_refused_clearly() {
    if !common::kvm_available() {
        return;
    }
    // The guest initialises 16 MiB of random pages: epochs far above 1 MiB.
    let spec = GuestSpec::new("memtest", "rounds=20 writes=20000 pattern=pages");
    let (r, _) = reference(&spec);
    let dir = TempDir::new("cap");
    let key = common::key_file(&dir, "key", 11);
    let (mut s1, addr) = common::spawn_standby_with(
        &key,
        &dir.path("s1.txt"),
        "127.0.0.1:0",
        &["--max-epoch-mib", "1"],
    );
    let pcon = dir.path("primary.txt");
    let mut primary = spawn_primary(&spec, &pcon, &addr, &key, 25);
    s1.wait_line("--max-epoch-mib", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no refusal naming the cap:\n{}", s1.stderr()));
    primary.wait(
        Duration::from_secs(120),
        "the primary refused by a capped standby",
    );
    assert!(
        primary.stderr().contains("UNPROTECTED"),
        "the primary did not say it ran unprotected:\n{}",
        primary.stderr()
    );
    s1.child.kill().unwrap();
    s1.child.wait().unwrap();
    assert!(
        std::fs::read(&pcon).unwrap() == r,
        "the primary's output differs from an unprotected run"
    );
    assert!(
        std::fs::read(dir.path("s1.txt"))
            .unwrap_or_default()
            .is_empty(),
        "the standby took over"
    );
}

/// A primary with the wrong key, and a peer sending garbage, are refused and
/// change nothing: the standby then protects the right primary and takes
/// over correctly. The wrongly keyed primary runs unprotected and says so.
#[test]
fn wrong_key_and_garbage_are_refused_and_change_nothing() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=100 writes=30000 pattern=mixed");
    let (r, took) = reference(&spec);
    let dir = TempDir::new("wrongkey");
    let key = common::key_file(&dir, "key", 11);
    let bad = common::key_file(&dir, "bad", 13);
    let scon = dir.path("shadow.txt");
    let (mut standby, addr) = spawn_standby(&key, &scon, "127.0.0.1:0");

    // Garbage bytes, then a connection that closes mid-frame.
    // The last is a valid preamble followed by a handshake message that
    // stops half way.
    for junk in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &b"HSF1\x01\x00"[..],
        &b"HSN1\x04\x00\x00\x00\x00\x00\x00\x00\x01\x40\x00\x01\x02"[..],
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(junk);
    }
    // A primary with the wrong key: refused, runs unprotected, output intact.
    let wrong_spec = spec.clone().primary_args(&["--wait-shadow-ms", "1000"]);
    let mut wrong = spawn_primary(&wrong_spec, &dir.path("wrong.txt"), &addr, &bad, 25);
    let st = wrong.wait(Duration::from_secs(60), "wrongly keyed primary");
    assert!(st.success());
    assert!(wrong.stderr().contains("UNPROTECTED"), "{}", wrong.stderr());
    assert_eq!(std::fs::read(dir.path("wrong.txt")).unwrap(), r);
    let serr = standby.stderr();
    assert!(
        serr.contains("refused"),
        "the standby did not report the refused peers:\n{serr}"
    );
    assert!(
        !serr.contains("in sync"),
        "the standby accepted state from a wrongly keyed primary:\n{serr}"
    );
    assert!(
        standby.child.try_wait().unwrap().is_none(),
        "the standby died"
    );

    // The right primary is still served, and a takeover still works.
    let pcon = dir.path("primary.txt");
    let mut primary = spawn_primary(&spec, &pcon, &addr, &key, 25);
    standby
        .wait_line("standby in sync", Duration::from_secs(30))
        .expect("sync");
    std::thread::sleep(took / 3);
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (_, at) = common::finished_takeover(&mut standby, "wrongkey");
    common::check_failover_output(
        "wrongkey",
        &r,
        &std::fs::read(&pcon).unwrap(),
        at,
        &std::fs::read(&scon).unwrap(),
    );
}

/// Kills drawn from the moment the primary process starts, the initial sync
/// included. The guest does not run before the shadow holds its complete
/// state. So either the shadow takes over and the output is continuous, or
/// (a kill before protection) the guest printed nothing and no takeover happens.
#[test]
fn kills_from_process_start_never_lose_visible_output() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=150 writes=30000 pattern=mixed");
    let (r, took) = reference(&spec);
    let mut rng = Rng::from_env("from-start");
    let (mut takeovers, mut early) = (0, 0);
    for _ in 0..10 {
        let dir = TempDir::new("fromstart");
        let key = common::key_file(&dir, "key", rng.next());
        let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
        let (mut standby, addr) = spawn_standby(&key, &scon, "127.0.0.1:0");
        let mut primary = spawn_primary(&spec, &pcon, &addr, &key, 25);
        let when = Duration::from_millis(rng.range(0, took.as_millis() as u64 * 3 / 4 + 1));
        std::thread::sleep(when);
        if primary.child.try_wait().unwrap().is_some() {
            continue;
        }
        primary.child.kill().unwrap();
        primary.child.wait().unwrap();
        let first = std::fs::read(&pcon).unwrap_or_default();
        if standby
            .wait_line("TAKING OVER", Duration::from_secs(5))
            .is_none()
        {
            assert!(
                first.is_empty(),
                "killed after {when:?} with {} bytes of output visible, but the shadow did not take over:\n{}",
                first.len(),
                standby.stderr()
            );
            early += 1;
            continue;
        }
        let (_, at) = common::finished_takeover(&mut standby, "from-start");
        common::check_failover_output("from-start", &r, &first, at, &std::fs::read(&scon).unwrap());
        takeovers += 1;
    }
    eprintln!("from process start: {takeovers} takeovers, {early} kills before protection (nothing printed, nothing lost)");
    assert!(
        takeovers >= 5,
        "only {takeovers} of 10 kills led to a takeover"
    );
}

/// After a takeover the new primary protects itself with a further standby
/// (`--reprotect`), which can take over in turn: two failovers, and the
/// three consoles together are the uninterrupted output.
#[test]
fn takeover_reprotects_and_survives_a_second_failover() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=200 writes=30000 pattern=mixed");
    let (r, took) = reference(&spec);
    let dir = TempDir::new("chain");
    let key = common::key_file(&dir, "key", 21);
    let (b_con, a_con, p_con) = (dir.path("b.txt"), dir.path("a.txt"), dir.path("p.txt"));
    let (mut b, b_addr) = spawn_standby(&key, &b_con, "127.0.0.1:0");
    let mut ac = std::process::Command::new(common::hotspare());
    ac.args([
        "standby",
        "--listen",
        "127.0.0.1:0",
        "--reprotect",
        &b_addr,
        "--key-file",
    ])
    .arg(&key)
    .arg("--arbiter")
    .arg(common::arbiter_arg(&key))
    .arg("--console")
    .arg(&a_con);
    let mut a = common::Proc::spawn(ac);
    let line = a
        .wait_line("listening on ", Duration::from_secs(10))
        .expect("standby A");
    let a_addr = line
        .rsplit("listening on ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let mut p = spawn_primary(&spec, &p_con, &a_addr, &key, 25);
    a.wait_line("standby in sync", Duration::from_secs(30))
        .expect("A in sync");
    std::thread::sleep(took / 4);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    a.wait_line("TAKING OVER", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("A did not take over:\n{}", a.stderr()));
    b.wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "A did not re-protect to B:\nA:\n{}\nB:\n{}",
                a.stderr(),
                b.stderr()
            )
        });
    std::thread::sleep(took / 4);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let (b_err, b_at) = common::finished_takeover(&mut b, "standby B");
    let a_at = common::takeover_resume(&a.stderr(), "standby A");
    let b_line = b_err
        .lines()
        .find(|l| l.contains("TAKING OVER"))
        .unwrap_or_default();
    assert!(
        b_line.contains("term 3"),
        "B should run in term 3: {b_line}"
    );
    let (pout, aout, bout) = (
        std::fs::read(&p_con).unwrap(),
        std::fs::read(&a_con).unwrap(),
        std::fs::read(&b_con).unwrap(),
    );
    // P's output, then A's from a_at (A was killed, so its output is a prefix
    // of the rest), then B's from b_at to the end.
    assert!(r.starts_with(&pout));
    assert!(a_at <= pout.len(), "output lost at the first failover");
    assert!(
        r[a_at..].starts_with(&aout),
        "A's output does not continue the reference"
    );
    let a_end = a_at + aout.len();
    assert!(
        b_at <= a_end,
        "output lost at the second failover: A printed up to {a_end}, B resumed at {b_at}"
    );
    assert_eq!(
        &r[b_at..],
        &bout[..],
        "B's output does not finish the reference"
    );
}

/// A guest whose output is not a function of its inputs (every line holds
/// the TSC and a hash chained over every TSC so far): a reference run
/// cannot be compared, so each takeover must instead agree, byte for byte,
/// with everything the killed primary showed, and then finish the guest.
/// Output released before its epoch committed, or a takeover from an older
/// epoch, re-executes a stretch the world saw with other values and fails
/// here (with a deterministic guest it would pass as an allowed repeat).
/// Every trial kills mid-run: the kill comes once the primary's released
/// output reaches a random point of the run, and a guest that finished
/// first fails the test.
#[test]
fn clock_dependent_output_survives_10_random_kills_without_contradiction() {
    if !common::kvm_available() {
        return;
    }
    // About 2 s unprotected, 61,352 bytes of output (every line has the
    // same width). Kill points stay below 70% of it, so
    // the guest is still running at each kill even when an epoch releases
    // a long stretch.
    let spec = GuestSpec::new("memtest", "rounds=500 pages=1024 writes=2000 tsc=1");
    let mut rng = Rng::from_env("tsc-failover");
    for trial in 0..10 {
        let dir = TempDir::new("tsc-failover");
        let key = common::key_file(&dir, "key", rng.next());
        let (pcon, scon) = (dir.path("p.txt"), dir.path("s.txt"));
        let (mut standby, addr) = spawn_standby(&key, &scon, "127.0.0.1:0");
        let mut primary = spawn_primary(&spec, &pcon, &addr, &key, 20);
        standby
            .wait_line("standby in sync", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("trial {trial}: never synced\n{}", standby.stderr()));
        let target = rng.range(2_000, 42_000);
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while primary.child.try_wait().unwrap().is_none()
            && std::fs::metadata(&pcon).map_or(0, |m| m.len()) < target
            && std::time::Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            primary.child.try_wait().unwrap().is_none(),
            "trial {trial}: the primary exited before the kill at byte {target} (its console \
             held {} bytes): the trial proves nothing\n{}",
            std::fs::metadata(&pcon).map_or(0, |m| m.len()),
            primary.stderr()
        );
        primary.child.kill().unwrap();
        primary.child.wait().unwrap();
        let (err, at) = common::finished_takeover(&mut standby, "tsc memtest");
        let first = std::fs::read(&pcon).unwrap_or_default();
        let second = std::fs::read(&scon).unwrap_or_default();
        common::check_agrees(&format!("trial {trial} ({err})"), &first, at, &second);
    }
}

/// The typed events (`--events`) tell a failover's story with figures:
/// the primary's start, protection, run and per-epoch figures; the
/// standby's address, sync, takeover (with the console position the text
/// also gives) and exit.
#[test]
fn typed_events_describe_a_failover() {
    use engine::events::{Event, Role};
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=150 writes=30000 pattern=mixed");
    let dir = TempDir::new("events");
    let key = common::key_file(&dir, "key", 7);
    let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
    let (mut standby, addr) = spawn_standby(&key, &scon, "127.0.0.1:0");
    let mut c = spec.run_cmd(&pcon);
    c.args(["--shadow", &addr, "--key-file"])
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key))
        .args(["--interval-ms", "20"]);
    let mut primary = common::Proc::spawn_with_events(c);
    let tenth = primary.wait_event(Duration::from_secs(30), |e| match e {
        Event::Epoch { seq: 10, .. } => Some(()),
        _ => None,
    });
    assert!(tenth.is_some(), "no tenth epoch:\n{}", primary.stderr());
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (err, at) = common::finished_takeover(&mut standby, "events");

    let p = primary.events();
    assert!(
        matches!(&p[0], Event::Started { role: Role::Primary, vm: Some(v) } if v == "vm"),
        "{p:?}"
    );
    assert!(p.contains(&Event::Protected {
        spare: addr.clone(),
        epoch: 1
    }));
    let term = p
        .iter()
        .find_map(|e| match e {
            Event::Running { term } => Some(*term),
            _ => None,
        })
        .expect("a running event");
    let epochs: Vec<_> = p
        .iter()
        .filter_map(|e| match e {
            Event::Epoch {
                seq,
                pause_us,
                pages,
                raw_bytes,
                wire_bytes,
                ..
            } => Some((*seq, *pause_us, *pages, *raw_bytes, *wire_bytes)),
            _ => None,
        })
        .collect();
    assert!(epochs.len() >= 10, "{epochs:?}");
    let acks: usize = p
        .iter()
        .map(|e| match e {
            Event::Epoch { acks_us, .. } => acks_us.len(),
            _ => 0,
        })
        .sum();
    assert!(acks >= 5, "ack latencies reach the events: {acks}");
    assert!(epochs.windows(2).all(|w| w[1].0 > w[0].0), "seqs rise");
    assert!(epochs.iter().all(|e| e.1 > 0), "every pause is timed");
    assert!(
        epochs
            .iter()
            .any(|e| e.2 > 0 && e.3 >= e.2 * 4096 && e.4 > 0),
        "pages, raw bytes and wire bytes: {epochs:?}"
    );

    let s = standby.events();
    let kinds: Vec<&str> = s
        .iter()
        .map(|e| match e {
            Event::Started { .. } => "started",
            Event::Listening { .. } => "listening",
            Event::InSync { .. } => "in_sync",
            Event::TookOver { .. } => "took_over",
            Event::Running { .. } => "running",
            Event::Exiting { .. } => "exiting",
            _ => "other",
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(
        kinds,
        [
            "started",
            "listening",
            "in_sync",
            "took_over",
            "running",
            "exiting"
        ],
        "{s:?}"
    );
    match s.iter().find(|e| matches!(e, Event::TookOver { .. })) {
        Some(Event::TookOver {
            term: t,
            console_at,
            from_async,
            ..
        }) => {
            assert!(*t > term, "the takeover's term {t} follows {term}");
            assert_eq!(*console_at as usize, at);
            assert!(!from_async);
        }
        _ => unreachable!(),
    }
    assert!(
        matches!(s.last(), Some(Event::Exiting { code: 0, .. })),
        "{s:?}\n{err}"
    );
}
