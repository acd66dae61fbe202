//! The agent as a systemd service: the shipped unit passes
//! `systemd-analyze verify`, the agent tells systemd it is ready (once
//! registered and serving) and pets the watchdog, and a bad config stops
//! it at once, naming the line. No KVM needed: no VM runs here.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::Etcd;
use common::TempDir;

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/hotspare-agent.service");
    let text = std::fs::read_to_string(&unit).expect("packaging/hotspare-agent.service");
    for want in [
        "Type=notify",
        "WatchdogSec=",
        "User=hotspare",
        "SupplementaryGroups=kvm",
        "KillMode=mixed",
    ] {
        assert!(text.contains(want), "the unit lacks {want}");
    }
    // verify checks ExecStart's binary exists: point it at the one built.
    let dir = TempDir::new("unit");
    let copy = dir.path("hotspare-agent.service");
    std::fs::write(
        &copy,
        text.replace(
            "/usr/local/bin/hotspare",
            &common::hotspare().display().to_string(),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (package systemd; scripts/setup.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It warns without failing on a misspelt setting: any word is a failure.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("hotspare-agent"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn the_agent_notifies_ready_and_pets_the_watchdog_and_refuses_a_bad_config() {
    let etcd = Etcd::start("127.0.0.1", 1);
    let dir = TempDir::new("notify");
    let key = common::key_file(&dir, "psk", 3);
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = dir.path("agent.toml");
    let text = format!(
        "[host]\nid = \"n1\"\nrack = \"r1\"\nsite = \"s\"\n\
         [capacity]\nmem_mib = 1024\nvcpus = 2\n\
         [etcd]\nendpoints = [\"{}\"]\n\
         [api]\nlisten = \"{api}\"\n\
         [replication]\naddress = \"127.0.0.1\"\nports = \"7200-7209\"\nkey_file = \"{}\"\n\
         [paths]\nstate_dir = \"{}\"\n",
        etcd.clients[0],
        key.display(),
        dir.path("state").display()
    );
    std::fs::write(&cfg, &text).unwrap();
    let sock_path = dir.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut agent = common::Proc::spawn({
        // systemd names the watched pid: the shell's, which exec makes the
        // agent's.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$0\" agent --config \"$1\"")
            .arg(common::hotspare())
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "2000000")
            .stdin(Stdio::null());
        c
    });
    let (mut ready, mut pets) = (false, 0);
    let end = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    while Instant::now() < end && !(ready && pets >= 3) {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.contains("READY=1") {
                // Ready means registered: the API answers now.
                let r = ureq::get(&format!("http://{api}/v1/hosts")).call();
                assert!(
                    matches!(r, Err(ureq::Error::Status(401, _))),
                    "the API serves (and wants a token) once READY: {r:?}"
                );
                ready = true;
            }
            if msg.contains("WATCHDOG=1") {
                assert!(ready, "the watchdog is petted only after READY");
                pets += 1;
            }
        }
    }
    assert!(
        ready && pets >= 3,
        "ready {ready}, pets {pets}\n{}",
        agent.stderr()
    );
    let _ = agent.child.kill();

    // A bad config: exit 1 at once, naming file, line and key.
    std::fs::write(&cfg, text.replace("vcpus = 2", "vcpus = 0")).unwrap();
    let out = Command::new(common::hotspare())
        .args(["agent", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("agent.toml:7: capacity.vcpus: must be at least 1"),
        "{err}"
    );
}
