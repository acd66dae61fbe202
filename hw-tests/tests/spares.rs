//! Several spares (`docs/spares.md`): two synchronous spares and one
//! asynchronous (distant) spare behind one primary, on real KVM, with the
//! embedded file arbiter, a guest whose output is clock-dependent (every
//! line carries the TSC and a hash chained over all of them), and kills of
//! the primary, of the new primary and of a spare.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{GuestSpec, Proc, TempDir};

/// The clock-dependent guest: about 6 s unprotected, ~375 KB of output, in
/// 32 MiB so that hashing all memory at every epoch (`--verify-memory`)
/// stays cheap.
fn guest() -> GuestSpec {
    let mut g = GuestSpec::new("memtest", "rounds=1400 pages=1024 writes=2000 tsc=1");
    g.mem_mib = 32;
    g
}

/// Standby options: every new primary hashes memory at every epoch and its
/// spares compare theirs at each commit, so a torn live copy shows.
const VERIFY: &[&str] = &["--verify-memory"];

/// Checks no spare's memory ever differed from its primary's, and that
/// `p` compared some commits.
fn memory_matched(p: &Proc, what: &str) {
    let err = p.stderr();
    assert!(
        !err.contains("DIVERGED"),
        "{what}: shadow memory diverged:\n{err}"
    );
    let n = err
        .lines()
        .filter_map(|l| common::field(l, "matched the primary's at "))
        .fold(0.0, f64::max);
    assert!(n > 0.0, "{what}: no commit was compared:\n{err}");
}

/// A primary streaming to `sync` and `asynchronous` spares.
fn primary(
    spec: &GuestSpec,
    console: &Path,
    key: &Path,
    sync: &[&str],
    asynchronous: &[&str],
) -> Proc {
    Proc::spawn(primary_cmd(spec, console, key, sync, asynchronous))
}

/// The command of [`primary`], for a caller that adds options.
fn primary_cmd(
    spec: &GuestSpec,
    console: &Path,
    key: &Path,
    sync: &[&str],
    asynchronous: &[&str],
) -> std::process::Command {
    let mut c = spec.run_cmd(console);
    for s in sync {
        c.arg("--shadow").arg(s);
    }
    for s in asynchronous {
        c.arg("--async-shadow").arg(s);
    }
    c.arg("--key-file")
        .arg(key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(key))
        .args(["--interval-ms", "40", "--verify-memory"]);
    c
}

/// Waits until `file` holds at least `n` bytes (or `p` ended).
fn wait_output(p: &mut Proc, file: &Path, n: u64, what: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(file).map_or(0, |m| m.len()) < n {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "{what} ended before showing {n} bytes: the trial proves nothing\n{}",
            p.stderr()
        );
        assert!(
            Instant::now() < end,
            "{what}: no {n} bytes of output in 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `second`, starting at console byte `at`, agrees with everything `shown`
/// holds from there (nothing shown is lost or contradicted). Returns what
/// the world has now seen: the longer of the two stories.
fn agrees(what: &str, shown: &[u8], at: usize, second: &[u8]) -> Vec<u8> {
    assert!(
        at <= shown.len(),
        "{what}: output lost: {} bytes were shown, the survivor resumed at {at}",
        shown.len()
    );
    let overlap = (shown.len() - at).min(second.len());
    assert!(
        shown[at..at + overlap] == second[..overlap],
        "{what}: the survivor contradicts what was shown from byte {at}:\nshown:\n{}\nsurvivor:\n{}",
        common::tail(&shown[at..at + overlap]),
        common::tail(&second[..overlap])
    );
    let mut seen = shown[..at].to_vec();
    seen.extend_from_slice(second);
    if seen.len() < shown.len() {
        return shown.to_vec();
    }
    seen
}

/// Which of `spares` printed `needle` (exactly one must).
fn the_one(spares: &[&Proc], needle: &str, what: &str) -> usize {
    let which: Vec<usize> = (0..spares.len())
        .filter(|&i| spares[i].count_lines(needle) > 0)
        .collect();
    assert_eq!(
        which.len(),
        1,
        "{what}: {} spares printed {needle:?}:\n{}",
        which.len(),
        spares
            .iter()
            .map(|p| p.stderr())
            .collect::<Vec<_>>()
            .join("\n-----\n")
    );
    which[0]
}

/// A primary protected by spare A (synchronous) and spare B (synchronous,
/// or asynchronous with `b_async`), all in sync.
struct Two {
    _dir: TempDir,
    key: std::path::PathBuf,
    a: Proc,
    a_addr: String,
    a_con: std::path::PathBuf,
    b: Proc,
    b_addr: String,
    b_con: std::path::PathBuf,
    p: Proc,
    p_con: std::path::PathBuf,
}

fn two(tag: &str, seed: u64, b_async: bool, b_extra: &[&str]) -> Two {
    let dir = TempDir::new(tag);
    let key = common::key_file(&dir, "key", seed);
    let (a_con, b_con, p_con) = (dir.path("a.txt"), dir.path("b.txt"), dir.path("p.txt"));
    let (mut a, a_addr) = common::spawn_standby(&key, &a_con, "127.0.0.1:0");
    let (mut b, b_addr) = common::spawn_standby_with(&key, &b_con, "127.0.0.1:0", b_extra);
    let (sync, asynchronous): (Vec<&str>, Vec<&str>) = if b_async {
        (vec![&a_addr], vec![&b_addr])
    } else {
        (vec![&a_addr, &b_addr], vec![])
    };
    let p = primary(&guest(), &p_con, &key, &sync, &asynchronous);
    for s in [&mut a, &mut b] {
        assert!(
            s.wait_count("standby in sync", 1, Duration::from_secs(30)),
            "a spare never synced:\n{}\nprimary:\n{}",
            s.stderr(),
            p.stderr()
        );
    }
    Two {
        _dir: dir,
        key,
        a,
        a_addr,
        a_con,
        b,
        b_addr,
        b_con,
        p,
        p_con,
    }
}

/// The check: a primary with two synchronous spares and one
/// asynchronous spare survives the loss of the primary, then of the new
/// primary, with the console byte-exact. The winner of each failover takes
/// the other spares over as its own (the asynchronous one stays
/// asynchronous and never claims while a synchronous spare is alive).
#[test]
fn two_sync_and_one_async_spare_survive_the_primary_then_the_new_primary() {
    if !common::kvm_available() {
        return;
    }
    let spec = guest();
    let dir = TempDir::new("spares3");
    let key = common::key_file(&dir, "key", 0x5ba2e);
    let cons: Vec<_> = ["a.txt", "b.txt", "c.txt", "p.txt"]
        .iter()
        .map(|n| dir.path(n))
        .collect();
    let (a, a_addr) = common::spawn_standby_with(&key, &cons[0], "127.0.0.1:0", VERIFY);
    let (b, b_addr) = common::spawn_standby_with(&key, &cons[1], "127.0.0.1:0", VERIFY);
    let (mut c, c_addr) = common::spawn_standby_with(
        &key,
        &cons[2],
        "127.0.0.1:0",
        &["--async-grace-ms", "1000", "--verify-memory"],
    );
    let mut p = primary(&spec, &cons[3], &key, &[&a_addr, &b_addr], &[&c_addr]);
    let mut spares = [a, b];
    for s in spares.iter_mut().chain([&mut c]) {
        assert!(
            s.wait_count("standby in sync", 1, Duration::from_secs(30)),
            "a spare never synced:\n{}\nprimary:\n{}",
            s.stderr(),
            p.stderr()
        );
    }
    wait_output(&mut p, &cons[3], 60_000, "the primary");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let pout = std::fs::read(&cons[3]).unwrap();

    // Exactly one synchronous spare takes over; the other and the async
    // spare follow it.
    let end = Instant::now() + Duration::from_secs(10);
    while spares.iter().all(|s| s.count_lines("TAKING OVER") == 0) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let w1 = the_one(&[&spares[0], &spares[1]], "TAKING OVER", "first failover");
    let other = 1 - w1;
    assert!(
        spares[other].wait_count("standby in sync", 2, Duration::from_secs(30)),
        "the new primary did not take the other synchronous spare over:\nnew primary:\n{}\nspare:\n{}",
        spares[w1].stderr(),
        spares[other].stderr()
    );
    assert!(
        c.wait_count("standby in sync", 2, Duration::from_secs(30)),
        "the new primary did not take the async spare over:\nnew primary:\n{}\nasync spare:\n{}",
        spares[w1].stderr(),
        c.stderr()
    );
    // Each re-adopted spare either continues from the resumed epoch (it
    // committed exactly that epoch) or gets a live copy; either way its
    // memory is checked against the new primary's at every commit below.
    let own = [&a_addr, &b_addr][w1];
    let err = spares[w1].stderr();
    for addr in [&a_addr, &b_addr, &c_addr]
        .into_iter()
        .filter(|a| *a != own)
    {
        assert!(
            err.lines().any(|l| l.contains(addr.as_str())
                && (l.contains("continues from epoch") || l.contains("live copy at epoch"))),
            "the new primary never took {addr} over:\n{err}"
        );
    }
    let w1_at = common::takeover_resume(&spares[w1].stderr(), "first winner");
    let seen = agrees(
        "first failover",
        &pout,
        w1_at,
        &std::fs::read(&cons[w1]).unwrap(),
    );
    // Let the new primary run and show output of its own, then kill it.
    let w1_con = cons[w1].clone();
    wait_output(&mut spares[w1], &w1_con, 40_000, "the new primary");
    spares[w1].child.kill().unwrap();
    spares[w1].child.wait().unwrap();
    let seen = agrees(
        "output of the first winner",
        &seen,
        w1_at,
        &std::fs::read(&cons[w1]).unwrap(),
    );

    let (err, w2_at) = common::finished_takeover(&mut spares[other], "second winner");
    let line = err.lines().find(|l| l.contains("TAKING OVER")).unwrap();
    assert!(
        line.contains("term 3"),
        "the second winner runs in term 3: {line}"
    );
    let second = std::fs::read(&cons[other]).unwrap();
    common::check_agrees("second failover", &seen, w2_at, &second);
    // The async spare never claimed; it followed the last primary to the
    // guest's end and stopped with it.
    let st = c.wait(Duration::from_secs(30), "the async spare");
    assert!(st.success(), "async spare: {st}\n{}", c.stderr());
    assert_eq!(
        c.count_lines("TAKING OVER"),
        0,
        "the async spare took over while a synchronous spare was alive:\n{}",
        c.stderr()
    );
    // Every spare that joined a running primary by a live copy held exactly
    // its memory at every commit (the second winner at its takeover, the
    // async spare at the guest's end).
    memory_matched(&spares[other], "the second winner");
    memory_matched(&c, "the async spare");
}

/// A synchronous spare dies: the primary drops it from the record and goes
/// on committing (and releasing output) with the other. The dead spare
/// restarts and rejoins the running primary with a live copy (its memory
/// checked against the primary's at every commit); then the other spare
/// dies, and the primary, and the rejoined spare takes over without losing
/// or contradicting anything the world saw.
#[test]
fn losing_a_sync_spare_leaves_the_other_committing() {
    if !common::kvm_available() {
        return;
    }
    let Two {
        _dir,
        key,
        mut a,
        a_addr,
        a_con,
        mut b,
        b_addr,
        mut p,
        p_con,
        ..
    } = two("spares2", 0x5ba2f, false, &[]);
    wait_output(&mut p, &p_con, 30_000, "the primary");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(
        p.wait_line(
            "left the record; output is committed by",
            Duration::from_secs(10)
        )
        .is_some_and(|l| l.contains(&b_addr)),
        "the primary did not drop the lost spare:\n{}",
        p.stderr()
    );
    // Output keeps flowing, committed by B alone.
    let shown = std::fs::metadata(&p_con).unwrap().len();
    wait_output(&mut p, &p_con, shown + 30_000, "the primary after losing A");
    assert!(
        !p.stderr().contains("UNPROTECTED"),
        "the primary ran unprotected with B alive:\n{}",
        p.stderr()
    );
    // A restarts on the same address: it rejoins the running primary with
    // a live copy while B keeps committing.
    let (mut a2, _) = common::spawn_standby(&key, &a_con, &a_addr);
    assert!(
        a2.wait_count("standby in sync", 1, Duration::from_secs(30)),
        "the restarted spare never rejoined:\n{}\nprimary:\n{}",
        a2.stderr(),
        p.stderr()
    );
    assert!(
        p.wait_line("the arbiter names it", Duration::from_secs(10))
            .is_some_and(|l| l.contains(&a_addr)),
        "the rejoined spare was never recorded:\n{}",
        p.stderr()
    );
    // Then B dies: the rejoined A alone protects the VM, and takes it over.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    assert!(
        p.wait_count(
            "left the record; output is committed by",
            2,
            Duration::from_secs(10)
        ),
        "the primary did not drop B:\n{}",
        p.stderr()
    );
    let shown = std::fs::metadata(&p_con).unwrap().len();
    wait_output(
        &mut p,
        &p_con,
        shown + 20_000,
        "the primary protected by the rejoined spare",
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let (err, at) = common::finished_takeover(&mut a2, "rejoined spare A");
    assert!(
        !err.contains("DIVERGED"),
        "the rejoined spare's memory diverged:\n{err}"
    );
    common::check_agrees(
        "takeover by the rejoined spare",
        &std::fs::read(&p_con).unwrap(),
        at,
        &std::fs::read(&a_con).unwrap(),
    );
    assert!(
        common::field(&err, "matched the primary's at ").unwrap_or(0.0) > 0.0,
        "the rejoined spare compared no commit:\n{err}"
    );
}

/// The primary's whole site fails (it and its synchronous spare die
/// together): the asynchronous spare waits its grace period, takes the VM
/// over, says how far behind it was, and finishes the guest.
#[test]
fn the_async_spare_takes_over_only_when_no_sync_spare_is_left() {
    if !common::kvm_available() {
        return;
    }
    let Two {
        _dir,
        mut a,
        b: mut c,
        b_con: c_con,
        mut p,
        p_con,
        ..
    } = two("spares-async", 0x5ba30, true, &["--async-grace-ms", "800"]);
    wait_output(&mut p, &p_con, 30_000, "the primary");
    // The site goes: the synchronous spare first, then the primary (which
    // holds its output while the arbiter drops the spare, or pauses).
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let (err, at) = common::finished_takeover(&mut c, "async spare");
    let line = err
        .lines()
        .find(|l| l.contains("ASYNCHRONOUS spare takes over"))
        .unwrap_or_else(|| panic!("the async spare did not say what it lost:\n{err}"));
    assert!(line.contains("from epoch"), "{line}");
    let took = err.lines().find(|l| l.contains("TAKING OVER")).unwrap();
    let claim_ms = common::field(took, "arbiter ").expect("arbiter time");
    assert!(
        claim_ms >= 800.0,
        "the async spare claimed {claim_ms} ms into its 800 ms grace period: {took}"
    );
    let out = std::fs::read(&c_con).unwrap();
    assert!(
        String::from_utf8_lossy(&out)
            .trim_end()
            .ends_with("result=ok"),
        "the guest did not finish on the async spare: {}",
        common::tail(&out)
    );
    assert!(
        at >= 1000,
        "the async spare resumed at byte {at}: it never followed the primary's output"
    );
}

/// A distant spare that stops answering (its host freezes: SIGSTOP) never
/// stalls the primary: it is dropped from the record, the synchronous spare
/// goes on committing and output keeps flowing; when it answers again it
/// rejoins with a fresh live copy, and a failover afterwards agrees.
#[test]
fn a_frozen_async_spare_never_stalls_the_primary_and_rejoins() {
    if !common::kvm_available() {
        return;
    }
    let Two {
        _dir,
        mut a,
        a_con,
        b: mut c,
        b_addr: c_addr,
        mut p,
        p_con,
        ..
    } = two("spares-frozen", 0x5ba31, true, &[]);
    assert!(
        p.wait_line("asynchronous spare", Duration::from_secs(10))
            .is_some_and(|l| l.contains("the arbiter names it")),
        "the async spare was never recorded:\n{}",
        p.stderr()
    );
    wait_output(&mut p, &p_con, 20_000, "the primary");
    common::signal("-STOP", c.child.id());
    assert!(
        p.wait_line("SHADOW LOST", Duration::from_secs(10))
            .is_some_and(|l| l.contains(&c_addr)),
        "the frozen async spare was not declared lost:\n{}",
        p.stderr()
    );
    // The primary goes on, committed by A alone, while C stays frozen.
    let shown = std::fs::metadata(&p_con).unwrap().len();
    wait_output(
        &mut p,
        &p_con,
        shown + 20_000,
        "the primary with a frozen async spare",
    );
    assert!(
        !p.stderr().contains("PAUSED"),
        "the primary paused for a distant spare:\n{}",
        p.stderr()
    );
    common::signal("-CONT", c.child.id());
    assert!(
        c.wait_count("standby in sync", 2, Duration::from_secs(30)),
        "the async spare never rejoined:\n{}\nprimary:\n{}",
        c.stderr(),
        p.stderr()
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let (_, at) = common::finished_takeover(&mut a, "spare A");
    common::check_agrees(
        "takeover after the async spare rejoined",
        &std::fs::read(&p_con).unwrap(),
        at,
        &std::fs::read(&a_con).unwrap(),
    );
}

/// A spare joining a running guest whose memory holds data (24 MiB from
/// `run --prefill`: zero, random and text-like pages) gets a live copy
/// whose chunks go some plain and some zstd-coded (`copycoding.rs` probes
/// both), into memory it reserved before listening (`--reserve-mib`), and
/// holds exactly the primary's memory at every commit after it, the
/// pages written during the copy read again in its catch-up round.
///
/// Whether epochs fall inside the copy (and so the round carries pages)
/// depends on the scheduling of a loaded 2-core host: with every epoch
/// captured or encoded after the copy was read the round is empty, which
/// is just as exact. So the join is repeated, up to three times, until a
/// round carried pages; every attempt must leave the spare exact.
#[test]
fn a_live_copy_mixing_plain_and_zstd_chunks_leaves_the_spare_exact() {
    if !common::kvm_available() {
        return;
    }
    common::until_nonzero(3, "a catch-up round carrying pages", |attempt| {
        mixed_copy_join(attempt)
    });
}

/// One join of [`a_live_copy_mixing_plain_and_zstd_chunks_leaves_the_spare_exact`];
/// returns the units of its catch-up round.
fn mixed_copy_join(attempt: u32) -> u64 {
    let dir = TempDir::new(&format!("spares-mixed-copy-{attempt}"));
    let key = common::key_file(&dir, "key", 0x3c0b7);
    let fill = dir.path("fill.ram");
    let mut r = common::Rng::from_env("a_live_copy_mixing_plain_and_zstd_chunks");
    // 60 MiB of fill, 52 MiB of it data: far more than the socket's buffers
    // hold, so the copy's reading (which runs ahead of the socket by those
    // buffers and two containers) spans epochs, which `--verify-memory`
    // makes long (each pause hashes the whole guest). A copy of 16 MiB
    // fitted in the buffers, was read within one epoch, and left its round
    // empty.
    let mut data = Vec::with_capacity(60 << 20);
    for page in 0..(60u64 << 20) / 4096 {
        match (page % 8).min(2) {
            0 => data.extend_from_slice(&[0u8; 4096]),
            1 => data.extend((0..512).flat_map(|_| r.next().to_le_bytes())),
            _ => {
                let line = format!("page {page}: the quick brown fox jumps over the lazy dog\n");
                data.extend(line.bytes().cycle().take(4096));
            }
        }
    }
    std::fs::write(&fill, &data).unwrap();
    // The primary dials the spare from its start, and gets an answer only
    // once the guest runs.
    let addr = common::free_loopback_addr();
    let mut g = GuestSpec::new("memtest", "rounds=120 pages=1024 writes=500 tsc=1");
    g.mem_mib = 64;
    let p_con = dir.path("primary.txt");
    // Epochs every 10 ms: the copy spans several, so
    // what the guest writes meanwhile goes in the catch-up round.
    let mut c = g.run_cmd(&p_con);
    c.arg("--shadow")
        .arg(&addr)
        .arg("--key-file")
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key))
        .args(["--interval-ms", "10", "--verify-memory"])
        .arg("--prefill")
        .arg(&fill)
        .args(["--wait-shadow-ms", "0"]);
    let mut p = Proc::spawn_with_events(c);
    wait_output(&mut p, &p_con, 2_000, "the primary");
    let (mut s, _) = common::spawn_standby_with(
        &key,
        &dir.path("spare.txt"),
        &addr,
        &["--reserve-mib", "64"],
    );
    let (units, plain, catch_up) = p
        .wait_event(Duration::from_secs(30), |e| match e {
            engine::events::Event::LiveCopied {
                units,
                plain_units,
                catch_up_units,
                ..
            } => Some((*units, *plain_units, *catch_up_units)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no live copy:\n{}\nspare:\n{}", p.stderr(), s.stderr()));
    // 52 MiB of data pages (plus what the guest wrote), decided 4 MiB at a
    // time: the copy probes plain for three decisions, then zstd.
    assert!(units >= 13440, "{units} pages copied");
    // What the guest wrote while it was copied went again, once each, in
    // the catch-up round (`catchup.rs`), not as queued epochs.
    common::check_catch_up(attempt, units, catch_up, &p.stderr());
    assert!(
        plain > 0 && plain < units,
        "{plain} of {units} pages went plain: one coding was never used"
    );
    assert!(
        s.wait_count("standby in sync", 1, Duration::from_secs(30)),
        "the spare never got in sync:\n{}\nprimary:\n{}",
        s.stderr(),
        p.stderr()
    );
    // The guest ends; the primary says goodbye and the spare reports how
    // many commits it compared.
    assert!(
        common::wait_for(&mut p.child, Duration::from_secs(120)),
        "the guest did not end:\n{}",
        p.stderr()
    );
    assert!(
        s.wait_line("no takeover", Duration::from_secs(10))
            .is_some(),
        "the spare did not end with the primary:\n{}",
        s.stderr()
    );
    memory_matched(&s, "the spare seeded by a mixed live copy");
    let err = s.stderr();
    assert!(err.contains("reserved 64 MiB of guest memory"), "{err}");
    assert!(!err.contains("not the 64 MiB reserved"), "{err}");
    catch_up
}
