//! A three-host lab: the primary's host and the standby's host are network
//! namespaces on one bridge, and the arbiter (etcd) runs in the root
//! namespace on the bridge's address. Faults are iptables rules inside a
//! host's namespace: a partition drops packets (silence, as a cut cable
//! or a dead switch port looks), a reset answers them with TCP RSTs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::TempDir;

static LABS: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ip(args: &[&str]) -> bool {
    run(Command::new("ip").args(args))
}

/// Hosts in namespaces and the root namespace's bridge address.
pub struct Lab {
    pub primary_ns: String,
    pub standby_ns: String,
    pub primary_ip: String,
    pub standby_ip: String,
    /// Every host: (namespace, address); the first two are the primary's
    /// and the standby's.
    pub hosts: Vec<(String, String)>,
    /// The root namespace's address on the bridge (where etcd listens).
    pub hub_ip: String,
    bridge: String,
}

impl Lab {
    /// Builds the two-host lab; panics, naming what failed, where it cannot
    /// (these tests need root, `ip` and iptables: `scripts/setup.sh`).
    pub fn create(tag: &str) -> Lab {
        let _ = tag;
        Lab::with_hosts(2)
    }

    /// Builds a lab of `n` hosts (at most 250).
    pub fn with_hosts(n: usize) -> Lab {
        let seq = LABS.fetch_add(1, Ordering::SeqCst);
        // Interface names have at most 15 bytes: "hf" + index + "o" + id.
        let id = format!("{}{seq}", std::process::id() % 100_000);
        let k = (std::process::id() * 7 + seq * 31) % 250 + 1;
        let hosts: Vec<(String, String)> = (0..n)
            .map(|i| (format!("hf{i}n{id}"), format!("10.216.{k}.{}", i + 1)))
            .collect();
        let lab = Lab {
            primary_ns: hosts[0].0.clone(),
            standby_ns: hosts[1.min(n - 1)].0.clone(),
            primary_ip: hosts[0].1.clone(),
            standby_ip: hosts[1.min(n - 1)].1.clone(),
            hub_ip: format!("10.216.{k}.254"),
            bridge: format!("hfb{id}"),
            hosts,
        };
        let br = lab.bridge.clone();
        let mut ok = ip(&["link", "add", &br, "type", "bridge"])
            && ip(&["addr", "add", &format!("{}/24", lab.hub_ip), "dev", &br])
            && ip(&["link", "set", &br, "up"]);
        for (i, (ns, addr)) in lab.hosts.iter().enumerate() {
            let (outer, inner) = (format!("hf{i}o{id}"), format!("hf{i}i{id}"));
            ok = ok
                && ip(&["netns", "add", ns])
                && ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ])
                && ip(&["link", "set", &outer, "master", &br])
                && ip(&["link", "set", &outer, "up"])
                && ip(&["link", "set", &inner, "netns", ns])
                && ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &inner,
                ])
                && ip(&["-n", ns, "link", "set", &inner, "up"])
                && ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        assert!(
            ok,
            "cannot build the network-namespace lab (needs root and iproute2; interface names {id})"
        );
        assert!(
            lab.iptables(&lab.primary_ns, &["-L", "-n"]),
            "iptables does not work in a network namespace: scripts/setup.sh installs it"
        );
        lab
    }

    /// Takes host `i` off the network: its uplink goes down (its processes
    /// live on, cut off, as behind a dead switch).
    pub fn unplug(&self, i: usize) {
        let id = self.bridge.trim_start_matches("hfb");
        assert!(
            ip(&["link", "set", &format!("hf{i}o{id}"), "down"]),
            "unplugging host {i}"
        );
    }

    fn iptables(&self, ns: &str, args: &[&str]) -> bool {
        run(Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-w"])
            .args(args))
    }

    /// A command to run inside namespace `ns`.
    pub fn wrap(ns: &str, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }

    /// Drops every packet between host `ns` and `peer` (both directions,
    /// as seen from `ns`).
    pub fn cut(&self, ns: &str, peer: &str) {
        assert!(
            self.iptables(ns, &["-I", "INPUT", "-s", peer, "-j", "DROP"])
                && self.iptables(ns, &["-I", "OUTPUT", "-d", peer, "-j", "DROP"]),
            "iptables DROP in {ns}"
        );
    }

    /// Answers every TCP segment host `ns` receives from or for `port`
    /// with a reset.
    pub fn reset(&self, ns: &str, port: u16) {
        let p = port.to_string();
        assert!(
            self.iptables(
                ns,
                &[
                    "-I",
                    "INPUT",
                    "-p",
                    "tcp",
                    "--dport",
                    &p,
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset"
                ]
            ) && self.iptables(
                ns,
                &[
                    "-I",
                    "INPUT",
                    "-p",
                    "tcp",
                    "--sport",
                    &p,
                    "-j",
                    "REJECT",
                    "--reject-with",
                    "tcp-reset"
                ]
            ),
            "iptables REJECT in {ns}"
        );
    }

    /// Removes every fault of both hosts.
    pub fn heal(&self) {
        for ns in [&self.primary_ns, &self.standby_ns] {
            assert!(self.iptables(ns, &["-F"]), "iptables -F in {ns}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Debian's etcd (`etcd-server`), started on `host` for one test.
pub struct Etcd {
    members: Vec<Option<Child>>,
    /// `HOST:PORT` of each member's client URL.
    pub clients: Vec<String>,
    _dir: TempDir,
}

fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {host}: {e}"))
}

fn etcd_binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("etcd not found: the fencing tests run a real etcd (Debian's etcd-server; scripts/setup.sh installs it)");
}

impl Etcd {
    /// A cluster of `n` members listening on `host`, healthy.
    pub fn start(host: &str, n: usize) -> Etcd {
        let dir = TempDir::new("etcd");
        let peers: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("http://{host}:{}", free_port(host)),
                )
            })
            .collect();
        let cluster = peers
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (name, peer) in &peers {
            let client = format!("{host}:{}", free_port(host));
            let log = std::fs::File::create(dir.path(&format!("{name}.log"))).unwrap();
            let child = Command::new(etcd_binary())
                .args(["--name", name, "--data-dir"])
                .arg(dir.path(name))
                .args(["--listen-client-urls", &format!("http://{client}")])
                .args(["--advertise-client-urls", &format!("http://{client}")])
                .args(["--listen-peer-urls", peer])
                .args(["--initial-advertise-peer-urls", peer])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            members.push(Some(child));
            clients.push(client);
        }
        let etcd = Etcd {
            members,
            clients,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(30);
        while !etcd.healthy() {
            assert!(
                Instant::now() < end,
                "etcd did not become healthy in 30 s (logs in its temp dir)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn healthy(&self) -> bool {
        run(Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.clients.join(","),
                "--command-timeout=1s",
            ])
            .args(["put", "/hotspare-test/health", "ok"]))
    }

    /// The `--arbiter` spec naming every member, in order.
    pub fn spec(&self) -> String {
        format!("etcd://{}", self.clients.join(","))
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The stored record of `vm` (as etcdctl prints it), for messages.
    pub fn record(&self, vm: &str) -> String {
        let live: Vec<&String> = self
            .clients
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.is_some())
            .map(|(c, _)| c)
            .collect();
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &live
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ])
            .args(["get", "--print-value-only", &format!("/hotspare/vm/{vm}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
