//! virtio-net end to end: the netcheck guest (a ring-3 virtio-net driver
//! answering ARP, ICMP echo and a UDP counter service) on a TAP bridged to
//! a switch, reached from a client in another network namespace; on
//! hotspare's device and on QEMU's; and protected, across random primary
//! kills, with every reply the client saw agreeing with the survivor.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, TempDir};
use netlab::{request, NetLab, Reply, ReplyLog};

fn netcheck_cmd(lab: &NetLab, console: &std::path::Path) -> Command {
    let mut c = Command::new(common::hotspare());
    c.arg("run")
        .arg("--kernel")
        .arg(hw_tests::guest_path("netcheck"))
        .args(["--mem-mib", "64", "--cmdline"])
        .arg(format!("ip={}", lab.guest_ip))
        .arg("--console")
        .arg(console)
        .args(["--net", "tap=tap0", "--vm-id", "netcheck"]);
    c
}

fn wait_file(path: &std::path::Path, needle: &str, t: Duration) -> String {
    netlab::wait_for_line(path, needle, t, || false).unwrap_or_else(|e| panic!("{e}"))
}

/// Ping and a few distinct requests; returns the replies.
fn exercise(lab: &NetLab, what: &str) -> Vec<Reply> {
    let (replies, dups) = lab.ping(5, 0.05);
    assert!(
        replies >= 4 && dups == 0,
        "{what}: ping got {replies}/5 replies, {dups} duplicates"
    );
    let sock = lab
        .client_socket()
        .expect("a socket in the client namespace");
    let mut out = Vec::new();
    for id in [11u64, 12, 12, 13] {
        let got = request(
            &sock,
            lab.service(),
            id,
            Duration::from_millis(200),
            Duration::from_secs(5),
        );
        let r = *got
            .last()
            .unwrap_or_else(|| panic!("{what}: no reply to request {id}"));
        assert_eq!(r.id, id, "{what}");
        out.push(r);
    }
    // A repeated id gets the same reply; a new one the next counter.
    assert_eq!(
        out[1], out[2],
        "{what}: a repeated request got another reply"
    );
    assert_eq!(out[0].counter + 1, out[1].counter, "{what}");
    assert_eq!(out[1].counter + 1, out[3].counter, "{what}");
    out
}

/// The same guest on hotspare's virtio-net and on QEMU's virtio-net-device
/// (microvm, virtio-mmio version 2): it follows the standard, not our
/// device. Then the TAP is deleted under the running VMM: it says so and
/// goes on.
#[test]
fn the_guest_answers_on_hotspare_and_on_qemu_and_a_vanished_tap_is_survived() {
    if !common::kvm_available() {
        return;
    }
    let lab = NetLab::create().unwrap();
    let dir = TempDir::new("net-basic");
    let con = dir.path("a.txt");
    let mut p = Proc::spawn(NetLab::wrap(&lab.hosts[0], &netcheck_cmd(&lab, &con)));
    let up = wait_file(&con, "netcheck up", Duration::from_secs(20));
    // The MAC derived from the VM id, shown by the guest from config space.
    let mac = engine::devices::virtio::net::mac_string(&engine::devices::virtio::net::derive_mac(
        "netcheck", 0,
    ));
    assert!(up.contains(&format!("mac={mac}")), "{up}");
    exercise(&lab, "hotspare");

    // The TAP vanishes: the VMM logs it and keeps running.
    assert!(Command::new("ip")
        .args(["-n", &lab.hosts[0], "link", "del", "tap0"])
        .status()
        .unwrap()
        .success());
    let (replies, _) = lab.ping(2, 0.1);
    assert_eq!(replies, 0, "a deleted TAP still answered");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the VMM exited when its TAP vanished:\n{}",
        p.stderr()
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let err = p.stderr();
    assert!(
        err.contains("TAP \"tap0\""),
        "no word of the vanished TAP:\n{err}"
    );

    let Some(mut q) = common::qemu_microvm("netcheck", &format!("ip={}", lab.guest_ip)) else {
        return;
    };
    q.arg("-serial")
        .arg(format!("file:{}", dir.path("q.txt").display()))
        .args([
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
        ])
        .args([
            "-device",
            "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
        ]);
    // Another MAC at the same address: the client must ask again.
    assert!(Command::new("ip")
        .args(["-n", &lab.client_ns, "neigh", "flush", "all"])
        .status()
        .unwrap()
        .success());
    let mut qp = Proc::spawn(NetLab::wrap(&lab.hosts[1], &q));
    let up = wait_file(&dir.path("q.txt"), "netcheck up", Duration::from_secs(20));
    assert!(up.contains("mac=52:54:00:12:34:56"), "{up}");
    exercise(&lab, "QEMU");
    qp.child.kill().unwrap();
    qp.child.wait().unwrap();
}

struct Host {
    proc: Proc,
    side: usize,
}

fn standby(lab: &NetLab, dir: &TempDir, key: &std::path::Path, side: usize, n: usize) -> Host {
    let other = 1 - side;
    let mut c = Command::new(common::hotspare());
    c.args(["standby", "--listen"])
        .arg(format!("{}:{}", lab.host_ips[side], 7600 + n))
        .arg("--reprotect")
        .arg(format!("{}:{}", lab.host_ips[other], 7600 + n + 1))
        .arg("--key-file")
        .arg(key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(key))
        .arg("--console")
        .arg(dir.path(&format!("c{n}.txt")))
        .args(["--net", "tap=tap0", "--interval-ms", "20"]);
    let (proc, _) = common::start_standby(NetLab::wrap(&lab.hosts[side], &c));
    Host { proc, side }
}

/// 20 random SIGKILLs of the primary while a client sends requests one
/// after another. The hosts alternate: the standby on the other host takes
/// over, announces the guest's MAC (the switch learns its new port), and
/// protects it again with a standby started on the killed host. Every
/// reply agrees with the survivor: no request is answered twice
/// differently, and the counter never goes back or stalls.
#[test]
fn a_protected_guest_survives_20_random_kills_with_no_reply_contradicted() {
    if !common::kvm_available() {
        return;
    }
    let kills: usize = std::env::var("HOTSPARE_NET_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rng = common::Rng::from_env("net-kills");
    let lab = NetLab::create().unwrap();
    let dir = TempDir::new("net-kills");
    let key = common::key_file(&dir, "key", 77);
    let mut sb = standby(&lab, &dir, &key, 1, 0);
    let mut c = netcheck_cmd(&lab, &dir.path("p.txt"));
    c.arg("--shadow")
        .arg(format!("{}:7600", lab.host_ips[1]))
        .arg("--key-file")
        .arg(&key)
        .arg("--arbiter")
        .arg(common::arbiter_arg(&key))
        .args(["--interval-ms", "20"]);
    let mut primary = Host {
        proc: Proc::spawn(NetLab::wrap(&lab.hosts[0], &c)),
        side: 0,
    };
    sb.proc
        .wait_line("standby in sync", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no sync:\n{}\n{}", sb.proc.stderr(), primary.proc.stderr()));
    // "in sync" comes at epoch 1, before the guest ran: wait for its driver
    // (frames that arrive before it are dropped, as on any NIC, and the
    // client would wait out an ARP retry).
    wait_file(&dir.path("p.txt"), "netcheck up", Duration::from_secs(20));
    let (replies, dups, rtts) = lab.ping_rtts(20, 0.013).unwrap();
    assert!(
        replies >= 18 && dups == 0,
        "ping of the protected guest: {replies}/20, {dups} DUP"
    );
    eprintln!("protected ping RTTs (ms): {rtts:?}");

    let sock = lab
        .client_socket()
        .expect("a socket in the client namespace");
    let mut client = ReplyLog::default();
    let mut id = 1000u64;
    let mut drive = |client: &mut ReplyLog, until: Instant| {
        if let Err(e) = client.drive(&sock, lab.service(), &mut id, until) {
            panic!("{e}");
        }
    };
    for n in 1..=kills {
        drive(
            &mut client,
            Instant::now() + Duration::from_millis(rng.range(200, 700)),
        );
        primary.proc.child.kill().unwrap();
        primary.proc.child.wait().unwrap();
        // The next spare, on the killed host, where the taking-over
        // standby's --reprotect points.
        let next = standby(&lab, &dir, &key, primary.side, n);
        sb.proc
            .wait_line("TAKING OVER", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("kill {n}: no takeover:\n{}", sb.proc.stderr()));
        primary = std::mem::replace(&mut sb, next);
        // Requests go on while the new spare syncs.
        drive(&mut client, Instant::now() + Duration::from_millis(100));
        let synced = sb
            .proc
            .wait_line("standby in sync", Duration::from_secs(30));
        assert!(
            synced.is_some(),
            "kill {n}: the new spare did not sync:\n{}\n{}",
            sb.proc.stderr(),
            primary.proc.stderr()
        );
    }
    drive(&mut client, Instant::now() + Duration::from_millis(300));
    let (replies, dups) = lab.ping(10, 0.02);
    assert!(
        replies >= 8 && dups == 0,
        "ping after {kills} kills: {replies}/10, {dups} DUP"
    );
    assert!(
        client.replies.len() > kills * 5,
        "only {} requests answered",
        client.replies.len()
    );
    // Service resumed each time within failover + announce, well under the
    // generous bound.
    assert!(
        client.worst_gap < Duration::from_secs(5),
        "the service was gone for {:?}",
        client.worst_gap
    );
    eprintln!(
        "net kills: {kills} kills, {} requests answered, counter {}..{}, worst gap {:?}",
        client.replies.len(),
        client.replies[0].counter,
        client.replies.last().unwrap().counter,
        client.worst_gap
    );
    if std::env::var_os("HOTSPARE_NET_DEBUG").is_some() {
        for (r, t) in client.replies.iter().zip(&client.latencies).take(40) {
            eprintln!("{r:?} {t:?}");
        }
    }
    let mut lat: Vec<f64> = client
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    eprintln!(
        "request/response: p50 {:.3} ms, p99 {:.3} ms, {} requests",
        netlab::quantile(&mut lat, 0.5),
        netlab::quantile(&mut lat, 0.99),
        lat.len()
    );
    if std::env::var_os("HOTSPARE_NET_DEBUG").is_some() {
        eprintln!(
            "primary:\n{}\nspare:\n{}",
            primary.proc.stderr(),
            sb.proc.stderr()
        );
    }
    drop(sb);
    drop(primary);
}

/// Local checkpoints of a networked guest: output waits until the
/// checkpoint that produced it is durable, so after a SIGKILL and a
/// `hotspare restore --net` no reply the client saw is contradicted. A
/// restore without the NIC says what is missing.
#[test]
fn a_networked_guest_restores_from_local_checkpoints_without_contradiction() {
    if !common::kvm_available() {
        return;
    }
    let lab = NetLab::create().unwrap();
    let dir = TempDir::new("net-local");
    let ckpt = dir.path("ckpt");
    let mut c = netcheck_cmd(&lab, &dir.path("a.txt"));
    c.arg("--checkpoint-dir")
        .arg(&ckpt)
        .args(["--checkpoint-interval-ms", "20"]);
    let mut p = Proc::spawn(NetLab::wrap(&lab.hosts[0], &c));
    wait_file(&dir.path("a.txt"), "netcheck up", Duration::from_secs(20));
    let sock = lab
        .client_socket()
        .expect("a socket in the client namespace");
    let mut log = ReplyLog::default();
    let mut id = 0u64;
    let mut drive = |log: &mut ReplyLog, until: Instant| {
        if let Err(e) = log.drive(&sock, lab.service(), &mut id, until) {
            panic!("{e}");
        }
    };
    drive(&mut log, Instant::now() + Duration::from_millis(600));
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let before = log.replies.len();

    let restore = |nets: &[&str], console: &str| {
        let mut r = Command::new(common::hotspare());
        r.args(["restore", "--checkpoint-dir"])
            .arg(&ckpt)
            .args(["--checkpoint-interval-ms", "20", "--console"])
            .arg(dir.path(console))
            .args(nets);
        r
    };
    let out = NetLab::wrap(&lab.hosts[0], &restore(&[], "none.txt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("has 1 NICs but 0 were given"), "{err}");

    let mut r = Proc::spawn(NetLab::wrap(
        &lab.hosts[0],
        &restore(&["--net", "tap=tap0"], "b.txt"),
    ));
    r.wait_line("restored checkpoint", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no restore:\n{}", r.stderr()));
    drive(&mut log, Instant::now() + Duration::from_millis(400));
    assert!(log.replies.len() > before, "no reply after the restore");
    let (replies, dups) = lab.ping(5, 0.05);
    assert!(
        replies >= 4 && dups == 0,
        "ping after the restore: {replies}/5, {dups} DUP"
    );
}
