//! The host service end to end: five `hotspare agent`s, each in its own
//! network namespace (rack a1: two hosts, rack a2: two hosts, site b: one
//! host), one real etcd on the switch, VMs created through the API.
//!
//! - A VM with `spares: 2, geo: true` is placed by the rules, loses its
//!   primary's VMM (fails over to the other rack, re-protected with no
//!   operator action), then its primary's whole rack (namespaces cut off
//!   and their processes killed), and is protected again; its console,
//!   stitched across both takeovers, equals an uninterrupted run.
//! - The API refuses unauthenticated (401), wrong-role (403) and malformed
//!   (400, no side effect) requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{Etcd, Lab};
use common::{GuestSpec, TempDir};
use serde_json::{json, Value};

const ADMIN: &str = "hs_test_admin_token_0123456789abcdef";
/// (id, rack, site) of the five hosts, in lab order.
const HOSTS: [(&str, &str, &str); 5] = [
    ("a1-1", "a1", "a"),
    ("a1-2", "a1", "a"),
    ("a2-1", "a2", "a"),
    ("a2-2", "a2", "a"),
    ("b1-1", "b1", "b"),
];

struct Cluster {
    lab: Lab,
    _etcd: Etcd,
    dir: TempDir,
    agents: Vec<Option<common::Proc>>,
}

impl Cluster {
    fn start() -> Cluster {
        let lab = Lab::with_hosts(HOSTS.len());
        let etcd = Etcd::start(&lab.hub_ip, 1);
        let dir = TempDir::new("cluster");
        let key = common::key_file(&dir, "psk", 41);
        let admin = dir.path("admin.token");
        std::fs::write(&admin, ADMIN).unwrap();
        let mut agents = Vec::new();
        for (i, (id, rack, site)) in HOSTS.iter().enumerate() {
            let (ns, addr) = &lab.hosts[i];
            let cfg = dir.path(&format!("{id}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[host]\nid = \"{id}\"\nrack = \"{rack}\"\nsite = \"{site}\"\n\
                     [capacity]\nmem_mib = 2048\nvcpus = 4\ndisk_mib = 8192\n\
                     [etcd]\nendpoints = [\"{}\"]\nlease_ttl_s = 2\n\
                     [api]\nlisten = \"{addr}:7800\"\nadmin_token_file = \"{}\"\n\
                     [replication]\naddress = \"{addr}\"\nports = \"7100-7109\"\nkey_file = \"{}\"\n\
                     [paths]\nstate_dir = \"{}\"\n",
                    etcd.clients[0],
                    admin.display(),
                    key.display(),
                    dir.path(id).display()
                ),
            )
            .unwrap();
            let mut c = Command::new(common::hotspare());
            c.args(["agent", "--config"]).arg(&cfg).stdin(Stdio::null());
            agents.push(Some(common::Proc::spawn(Lab::wrap(ns, &c))));
        }
        let cl = Cluster {
            lab,
            _etcd: etcd,
            dir,
            agents,
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, v)) = cl.call(0, "GET", "/v1/hosts", ADMIN, None) {
                if v.as_array().map_or(0, |a| a.len()) == HOSTS.len() {
                    break;
                }
            }
            assert!(
                Instant::now() < end,
                "the agents did not register:\n{}",
                cl.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cl
    }

    /// A new token for `name` in `role`, made by the admin through agent `i`.
    fn token(&self, i: usize, name: &str, role: &str) -> String {
        let body = json!({ "name": name, "role": role }).to_string();
        let (c, v) = self
            .call(i, "POST", "/v1/tokens", ADMIN, Some(&body))
            .unwrap();
        assert_eq!(c, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn api(&self, i: usize) -> String {
        format!("http://{}:7800", self.lab.hosts[i].1)
    }

    /// One API call to agent `i`: (status, JSON body).
    fn call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> Result<(u16, Value), String> {
        let req = ureq::request(method, &format!("{}{path}", self.api(i)))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(5));
        let res = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let (code, text) = match res {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => return Err(e.to_string()),
        };
        Ok((
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// The VM as the API lists it (from any live agent).
    fn vm(&self, name: &str) -> Option<Value> {
        (0..HOSTS.len())
            .filter(|i| self.agents[*i].is_some())
            .find_map(
                |i| match self.call(i, "GET", &format!("/v1/vms/{name}"), ADMIN, None) {
                    Ok((200, v)) => Some(v),
                    _ => None,
                },
            )
    }

    /// Waits up to `t` for the VM to satisfy `ok`; returns it.
    fn wait_vm(&self, name: &str, t: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + t;
        loop {
            if let Some(v) = self.vm(name) {
                if ok(&v) {
                    return v;
                }
                if Instant::now() > end {
                    panic!("{what}: the VM is {v}\n{}", self.logs());
                }
            } else if Instant::now() > end {
                panic!("{what}: no agent answers\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the VM's VMM on host `id` (found by its state directory on
    /// its command line).
    fn kill_vmm(&self, id: &str, vm: &str) {
        let pattern = format!("{}/vms/{vm}/", self.dir.path(id).display());
        let ok = Command::new("pkill")
            .args(["-KILL", "-f", &pattern])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "no VMM of {vm} on {id} to kill");
    }

    /// A rack fails: its hosts' uplinks go down and every process in their
    /// namespaces is killed (the agents, the VMMs).
    fn kill_rack(&mut self, rack: &str) {
        for (i, h) in HOSTS.iter().enumerate() {
            if h.1 != rack {
                continue;
            }
            self.lab.unplug(i);
            let ns = &self.lab.hosts[i].0;
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .unwrap();
            for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                common::signal("-KILL", pid.parse().unwrap());
            }
            if let Some(mut p) = self.agents[i].take() {
                let _ = p.child.wait();
            }
        }
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                a.as_ref()
                    .map(|a| format!("--- agent {}:\n{}", HOSTS[i].0, a.stderr()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Every process in the hosts' namespaces: the agents and their VMMs.
        for (ns, _) in &self.lab.hosts {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
    }
}

fn site_rack(id: &str) -> (&'static str, &'static str) {
    let h = HOSTS.iter().find(|h| h.0 == id).unwrap();
    (h.2, h.1)
}

fn spares(v: &Value) -> Vec<(String, String)> {
    v["spares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["host"].as_str().unwrap().to_string(),
                s["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Checks the rack and site rules of a protected VM's spares (a flagged
/// unmet rule excuses the rack rule).
fn check_rules(v: &Value) {
    let p = v["primary"].as_str().unwrap();
    let (ps, pr) = site_rack(p);
    let s = spares(v);
    assert_eq!(s.len(), 2, "{v}");
    let unmet = v["unmet"].as_array().unwrap();
    for (host, role) in &s {
        assert_ne!(host, p, "a spare on the primary's host: {v}");
        let (ss, sr) = site_rack(host);
        match role.as_str() {
            "rack" if unmet.is_empty() => assert!(ss == ps && sr != pr, "rack rule: {v}"),
            "rack" => assert_eq!(ss, ps, "{v}"),
            "geo" => assert_ne!(ss, ps, "site rule: {v}"),
            r => panic!("unexpected role {r}: {v}"),
        }
    }
}

/// Every console and takeover position of `vm` on every host: the first
/// primary's console, then each new primary's with the byte it resumed at.
fn stitched_console(dir: &TempDir, vm: &str) -> Vec<(u64, PathBuf)> {
    let mut parts = Vec::new();
    for (id, _, _) in HOSTS {
        let d = dir.path(id).join("vms").join(vm);
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("events") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for line in text.lines() {
                let l: engine::events::Line = serde_json::from_str(line).expect("an event");
                let at = match l.event {
                    engine::events::Event::Started {
                        role: engine::events::Role::Primary,
                        ..
                    } => Some(0),
                    engine::events::Event::TookOver { console_at, .. } => Some(console_at),
                    _ => None,
                };
                if let Some(at) = at {
                    parts.push((at, p.with_extension("console")));
                }
            }
        }
    }
    parts.sort();
    parts
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

#[test]
fn a_vm_fails_over_is_reprotected_and_survives_its_rack() {
    if !common::kvm_available() {
        return;
    }
    let spec = GuestSpec::new("memtest", "rounds=3000 writes=2000 pattern=mixed");
    let (reference, _) = common::reference(&spec);
    let mut cl = Cluster::start();
    let vm = json!({
        "name": "web",
        "kernel": hw_tests::guest_path("memtest"),
        "mem_mib": 128,
        "cmdline": "rounds=3000 writes=2000 pattern=mixed",
        "disks": [{ "size_mib": 64 }],
        "policy": { "spares": 2, "geo": true },
        "run": { "interval-ms": 20 }
    });
    let (code, body) = cl
        .call(2, "POST", "/v1/vms", ADMIN, Some(&vm.to_string()))
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let v = cl.wait_vm("web", Duration::from_secs(30), "protection", |v| {
        v["protection"] == "protected" && v["term"] == 1
    });
    check_rules(&v);
    assert!(v["unmet"].as_array().unwrap().is_empty(), "{v}");
    // The primary's agent publishes its live figures: epochs, and the geo
    // spare's lag.
    let v = cl.wait_vm("web", Duration::from_secs(20), "live status", |v| {
        v["epochs"].as_u64().is_some_and(|e| e >= 50) && v["async_lag"].is_u64()
    });
    let first = v["primary"].as_str().unwrap().to_string();
    eprintln!("placed: {v}");

    // 1. The primary's VMM dies: the rack spare takes over, a new spare is
    //    placed and seeded, with no operator action.
    std::thread::sleep(Duration::from_secs(2));
    cl.kill_vmm(&first, "web");
    let t = Instant::now();
    let v = cl.wait_vm(
        "web",
        Duration::from_secs(30),
        "re-protection after the VMM's death",
        |v| v["term"] == 2 && v["protection"] == "protected" && v["last_reprotect_ms"].is_u64(),
    );
    eprintln!(
        "after the VMM's death ({:.1} s): {v}",
        t.elapsed().as_secs_f64()
    );
    let second = v["primary"].as_str().unwrap().to_string();
    assert_ne!(
        site_rack(&second).1,
        site_rack(&first).1,
        "failed over to the other rack: {v}"
    );
    assert_eq!(v["failovers"], 1);
    check_rules(&v);

    // 2. The new primary's whole rack fails.
    let rack = site_rack(&second).1;
    cl.kill_rack(rack);
    let t = Instant::now();
    let v = cl.wait_vm(
        "web",
        Duration::from_secs(60),
        "re-protection after the rack's loss",
        |v| {
            v["term"].as_u64().unwrap_or(0) >= 3
                && v["protection"] != "unprotected"
                && v["spares"].as_array().is_some_and(|s| s.len() == 2)
                && v["last_reprotect_ms"].is_u64()
        },
    );
    eprintln!(
        "after rack {rack}'s loss ({:.1} s): {v}",
        t.elapsed().as_secs_f64()
    );
    let third = v["primary"].as_str().unwrap().to_string();
    assert_ne!(site_rack(&third).1, rack, "{v}");
    check_rules(&v);
    for (h, _) in spares(&v) {
        assert_ne!(site_rack(&h).1, rack, "a spare on the dead rack: {v}");
    }
    // Site a has one rack left: the near spare shares it, and says so.
    assert!(
        v["unmet"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str().unwrap().contains("rack other than")),
        "{v}"
    );

    // 3. The guest runs to its end; its console, stitched across both
    //    takeovers, is an uninterrupted run's.
    cl.wait_vm("web", Duration::from_secs(240), "the guest's end", |v| {
        v["phase"]["phase"] == "finished"
    });
    let parts = stitched_console(&cl.dir, "web");
    assert!(parts.len() >= 3, "a primary and two takeovers: {parts:?}");
    let mut shown: Vec<u8> = Vec::new();
    for (i, (at, path)) in parts.iter().enumerate() {
        let at = *at as usize;
        let text = read(path);
        // A takeover resumes at or before what was shown (a repeat at the
        // boundary is byte-identical), never after (nothing lost).
        assert!(
            at <= shown.len(),
            "part {i} resumes at {at} after {} bytes shown",
            shown.len()
        );
        assert!(
            reference.starts_with(&shown),
            "part {i}: what was shown is not the reference's beginning"
        );
        shown.truncate(at);
        shown.extend_from_slice(&text);
    }
    assert!(
        shown == reference,
        "the stitched console ({} bytes) is not the reference ({} bytes)\n{}",
        shown.len(),
        reference.len(),
        common::tail(&shown)
    );
}

#[test]
fn the_api_refuses_unauthenticated_wrong_role_and_malformed_calls() {
    if !common::kvm_available() {
        return;
    }
    let cl = Cluster::start();
    // A viewer and an operator.
    let viewer = cl.token(0, "val", "viewer");
    let operator = cl.token(1, "olga", "operator");
    // The tokens live in the store: every agent knows them.
    assert_eq!(cl.call(4, "GET", "/v1/vms", &viewer, None).unwrap().0, 200);

    // 401: no token, a wrong one, a malformed header.
    let raw = |auth: Option<&str>| {
        let mut r = ureq::get(&format!("{}/v1/vms", cl.api(3)));
        if let Some(a) = auth {
            r = r.set("Authorization", a);
        }
        match r.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(raw(None), 401);
    assert_eq!(raw(Some("Bearer not-a-token")), 401);
    assert_eq!(raw(Some("Basic abc")), 401);
    assert_eq!(cl.call(0, "GET", "/metrics", "nope", None).unwrap().0, 401);

    // 403: a viewer creates, an operator makes tokens.
    let spec = json!({"name":"v1","kernel": hw_tests::guest_path("memtest"),"mem_mib":64,
        "cmdline":"rounds=100000 writes=100","policy":{"spares":1}});
    let (c, v) = cl
        .call(0, "POST", "/v1/vms", &viewer, Some(&spec.to_string()))
        .unwrap();
    assert_eq!(c, 403, "{v}");
    assert_eq!(
        cl.call(
            0,
            "POST",
            "/v1/tokens",
            &operator,
            Some(r#"{"name":"x","role":"admin"}"#)
        )
        .unwrap()
        .0,
        403
    );

    // 400 with no side effect: malformed JSON, unknown fields, bad values,
    // run options the command line refuses.
    for bad in [
        "{not json".to_string(),
        json!({"name":"v1","kernel":"/k","mem_mib":64,"policy":{"spares":1},"colour":"red"}).to_string(),
        json!({"name":"v 1","kernel":"/k","mem_mib":64,"policy":{"spares":1}}).to_string(),
        json!({"name":"v1","kernel":"/k","mem_mib":64,"policy":{"spares":1,"geo":true}}).to_string(),
        json!({"name":"v1","kernel":"/k","mem_mib":64,"policy":{"spares":1},"run":{"no-such-flag":1}}).to_string(),
        json!({"name":"v1","kernel":"/k","mem_mib":64,"policy":{"spares":1},"run":{"interval-ms":"soon"}}).to_string(),
    ] {
        let (c, v) = cl.call(0, "POST", "/v1/vms", &operator, Some(&bad)).unwrap();
        assert_eq!(c, 400, "{bad}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let (_, list) = cl.call(0, "GET", "/v1/vms", ADMIN, None).unwrap();
    assert_eq!(list, json!([]), "a refused call left something behind");

    // The operator owns what it creates; another operator may not touch it.
    let (c, v) = cl
        .call(0, "POST", "/v1/vms", &operator, Some(&spec.to_string()))
        .unwrap();
    assert_eq!(c, 201, "{v}");
    assert_eq!(v["owner"], "olga");
    let other = cl.token(0, "otto", "operator");
    assert_eq!(
        cl.call(2, "POST", "/v1/vms/v1/stop", &other, Some(""))
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        cl.call(2, "DELETE", "/v1/vms/v1", &other, None).unwrap().0,
        403
    );
    let (_, l) = cl.call(2, "GET", "/v1/vms", &other, None).unwrap();
    assert_eq!(l, json!([]), "another operator sees no VM of olga's");
    assert_eq!(
        cl.call(2, "GET", "/v1/vms/nope", &operator, None)
            .unwrap()
            .0,
        404
    );
    // The owner stops it in order: every copy ends, none takes over; then
    // starts it again, protected in a new term.
    let v = cl.wait_vm("v1", Duration::from_secs(30), "protection", |v| {
        v["protection"] == "protected"
    });
    let term = v["term"].as_u64().unwrap();
    assert_eq!(
        cl.call(1, "POST", "/v1/vms/v1/stop", &operator, Some(""))
            .unwrap()
            .0,
        202
    );
    let end = Instant::now() + Duration::from_secs(30);
    while Command::new("pgrep")
        .args([
            "-f",
            &format!(
                "{}/[^ ]*/vms/v1/",
                cl.dir.path("x").parent().unwrap().display()
            ),
        ])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            Instant::now() < end,
            "v1's VMMs did not stop\n{}",
            cl.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = cl.vm("v1").unwrap();
    assert_eq!(
        (v["protection"].as_str(), v["failovers"].as_u64()),
        (Some("stopped"), Some(0)),
        "{v}"
    );
    assert_eq!(
        cl.call(4, "POST", "/v1/vms/v1/start", &operator, Some(""))
            .unwrap()
            .0,
        202
    );
    cl.wait_vm(
        "v1",
        Duration::from_secs(30),
        "protection after a start",
        |v| v["protection"] == "protected" && v["term"].as_u64().unwrap_or(0) > term,
    );
    // The owner may delete it; it is gone from every agent's view.
    assert_eq!(
        cl.call(3, "DELETE", "/v1/vms/v1", &operator, None)
            .unwrap()
            .0,
        200
    );
    assert_eq!(cl.call(1, "GET", "/v1/vms/v1", ADMIN, None).unwrap().0, 404);
}
