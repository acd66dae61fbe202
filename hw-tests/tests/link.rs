//! The link between primary and standby: separate network namespaces joined
//! by a veth pair (where the machine allows; otherwise loopback, said
//! loudly), and a delayed, lossy link emulated by a delaying proxy (this
//! kernel has no `tc netem`). Delay and loss below the timeout must never
//! cause a takeover, and must never corrupt the shadow.

mod common;

use std::time::Duration;

use common::{key_file, reference, DelayProxy, GuestSpec, NetnsPair, Proc, TempDir};

/// A failover between two network namespaces.
#[test]
fn failover_across_network_namespaces() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=300 writes=30000 pattern=mixed");
    let (r, took) = reference(&spec);
    let dir = TempDir::new("netns");
    let key = key_file(&dir, "key", 3);
    let (pcon, scon) = (dir.path("primary.txt"), dir.path("shadow.txt"));
    let Some(ns) = NetnsPair::create("f") else {
        common::skipped("network namespaces are not available here (not root, or no `ip`): the namespace part did NOT run; this test falls back to LOOPBACK");
        let mut rng = common::Rng::from_env("netns-fallback");
        // The trial asserts continuity itself.
        common::failover_trial(&spec, &r, took, 25, &mut rng);
        return;
    };
    eprintln!(
        "primary in netns {}, standby in netns {} at {} (veth)",
        ns.primary_ns, ns.standby_ns, ns.standby_ip
    );
    let mut sc = std::process::Command::new(common::hotspare());
    sc.args([
        "standby",
        "--listen",
        &format!("{}:7400", ns.standby_ip),
        "--key-file",
    ])
    .arg(&key)
    .arg("--arbiter")
    .arg(common::arbiter_arg(&key))
    .arg("--console")
    .arg(&scon);
    let mut standby = Proc::spawn(NetnsPair::wrap(&ns.standby_ns, &sc));
    standby
        .wait_line("standby listening on", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "standby did not start in its namespace:\n{}",
                standby.stderr()
            )
        });
    let mut pc = spec.run_cmd(&pcon);
    pc.args(["--shadow", &format!("{}:7400", ns.standby_ip), "--key-file"])
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key));
    let mut primary = Proc::spawn(NetnsPair::wrap(&ns.primary_ns, &pc));
    standby
        .wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "no sync across namespaces:\n{}\n{}",
                primary.stderr(),
                standby.stderr()
            )
        });
    std::thread::sleep(took / 3);
    // `ip netns exec` execs hotspare directly, so this SIGKILLs the VMM.
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    let (_, at) = common::finished_takeover(&mut standby, "netns");
    common::check_failover_output(
        "netns",
        &r,
        &std::fs::read(&pcon).unwrap(),
        at,
        &std::fs::read(&scon).unwrap(),
    );
}

/// 30 ms each way plus stalls of up to 150 ms, against a 600 ms timeout
/// configured on both ends (a wide margin for a loaded CI machine): no
/// takeover, the guest completes on the primary with exact output, and the
/// shadow's memory equals the primary's at every commit.
#[test]
fn delay_and_loss_below_the_timeout_cause_no_takeover() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=150 writes=30000 pattern=mixed");
    let (r, _) = reference(&spec);
    let dir = TempDir::new("delay");
    let key = key_file(&dir, "key", 5);
    let (mut standby, addr) = common::spawn_standby_with(
        &key,
        &dir.path("shadow.txt"),
        "127.0.0.1:0",
        &["--timeout-ms", "600"],
    );
    let proxy = DelayProxy::start(
        &addr,
        Duration::from_millis(30),
        Duration::from_millis(150),
        99,
    );
    let spec = spec.primary_args(&["--verify-memory", "--timeout-ms", "600"]);
    let mut primary = common::spawn_primary(&spec, &dir.path("primary.txt"), &proxy.addr, &key, 25);
    let st = primary.wait(Duration::from_secs(300), "primary over a slow link");
    assert!(st.success(), "{}", primary.stderr());
    assert_eq!(
        std::fs::read(dir.path("primary.txt")).unwrap(),
        r,
        "output differs over a slow link"
    );
    let st = standby.wait(Duration::from_secs(30), "standby");
    let err = standby.stderr();
    assert!(st.success(), "{err}");
    assert!(
        !err.contains("TAKING OVER"),
        "false takeover on a slow link:\n{err}"
    );
    assert!(err.contains("no takeover"), "{err}");
    let v = err
        .lines()
        .find(|l| l.contains("shadow memory matched"))
        .expect("verification line");
    assert!(!v.contains("DIVERGED"), "{v}");
    assert!(
        !primary.stderr().contains("SHADOW LOST"),
        "the primary lost its shadow on a slow link:\n{}",
        primary.stderr()
    );
    assert!(
        std::fs::read(dir.path("shadow.txt"))
            .unwrap_or_default()
            .is_empty(),
        "the standby printed output without a takeover"
    );
}
