//! A network lab for hotspare's virtio-net tests, demo and benchmark: a
//! switch (a bridge in the root
//! namespace), a client host and two VM hosts, each a network namespace
//! with an uplink to the switch. A VM host bridges its uplink and its TAP
//! (`tap0`, persistent, created here) on a host bridge that also carries
//! the host's own address (where the replication stream runs), as a
//! hypervisor host does. A guest's frames leave through whichever host
//! runs it; the switch learns where its MAC is from the frames it sees.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static LABS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The lab. Hosts: `hosts[0]` and `hosts[1]` run VMs; `client` runs clients.
pub struct NetLab {
    pub client_ns: String,
    pub hosts: [String; 2],
    pub host_ips: [String; 2],
    pub client_ip: String,
    /// An address for the guest on the same subnet.
    pub guest_ip: String,
    switch: String,
}

impl NetLab {
    /// Builds the lab, or says what failed (it needs root, iproute2 and
    /// TAP support; `scripts/setup.sh` installs iproute2).
    pub fn create() -> Result<NetLab, String> {
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let k = (std::process::id() * 13 + n * 37) % 250 + 1;
        let lab = NetLab {
            client_ns: format!("hnc{id}"),
            hosts: [format!("hna{id}"), format!("hnb{id}")],
            host_ips: [format!("10.217.{k}.1"), format!("10.217.{k}.2")],
            client_ip: format!("10.217.{k}.100"),
            guest_ip: format!("10.217.{k}.50"),
            switch: format!("hnw{id}"),
        };
        let sw = lab.switch.clone();
        let mut ok = ip(&["link", "add", &sw, "type", "bridge"])
            // Learn at once, forward at once (no STP delay).
            && ip(&["link", "set", &sw, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
            && ip(&["link", "set", &sw, "up"]);
        let all = [
            (lab.client_ns.clone(), lab.client_ip.clone(), "c", false),
            (lab.hosts[0].clone(), lab.host_ips[0].clone(), "a", true),
            (lab.hosts[1].clone(), lab.host_ips[1].clone(), "b", true),
        ];
        for (ns, addr, side, vm_host) in all {
            let (outer, inner) = (format!("hn{side}o{id}"), format!("hn{side}i{id}"));
            ok = ok
                && ip(&["netns", "add", &ns])
                && ip(&[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ])
                && ip(&["link", "set", &outer, "master", &sw])
                && ip(&["link", "set", &outer, "up"])
                && ip(&["link", "set", &inner, "netns", &ns])
                && ip(&["-n", &ns, "link", "set", "lo", "up"])
                && ip(&["-n", &ns, "link", "set", &inner, "up"]);
            let dev = if vm_host {
                ok = ok
                    && ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])
                    && ip(&[
                        "-n",
                        &ns,
                        "link",
                        "set",
                        "br0",
                        "type",
                        "bridge",
                        "forward_delay",
                        "0",
                        "stp_state",
                        "0",
                    ])
                    && ip(&["-n", &ns, "link", "set", &inner, "master", "br0"])
                    && ip(&["-n", &ns, "tuntap", "add", "dev", "tap0", "mode", "tap"])
                    && ip(&["-n", &ns, "link", "set", "tap0", "master", "br0"])
                    && ip(&["-n", &ns, "link", "set", "tap0", "up"])
                    && ip(&["-n", &ns, "link", "set", "br0", "up"]);
                "br0".to_string()
            } else {
                inner.clone()
            };
            ok = ok && ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &dev]);
        }
        if !ok {
            return Err(format!(
                "cannot build the network lab of namespaces and bridges (it needs root, iproute2 and TAP support; names ending in {id})"
            ));
        }
        Ok(lab)
    }

    /// A command to run inside namespace `ns`.
    pub fn wrap(ns: &str, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }

    /// A UDP socket in the client's namespace.
    pub fn client_socket(&self) -> std::io::Result<UdpSocket> {
        let ns = self.client_ns.clone();
        // The network namespace is per thread: enter it on a thread of our
        // own, make the socket there (it stays in that namespace).
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
            // SAFETY: setns on a valid namespace fd, for this thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            UdpSocket::bind("0.0.0.0:0")
        })
        .join()
        .map_err(|_| std::io::Error::other("the socket thread panicked"))?
    }

    /// Pings the guest from the client: (replies, DUP! lines). Panics if
    /// `ping` cannot run (for tests).
    pub fn ping(&self, count: u32, interval: f64) -> (u32, u32) {
        let (r, d, _) = self.ping_rtts(count, interval).expect("ping");
        (r, d)
    }

    /// Pings the guest from the client: (replies, DUP! lines, RTTs in ms).
    pub fn ping_rtts(&self, count: u32, interval: f64) -> Result<(u32, u32, Vec<f64>), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client_ns, "ping", "-n", "-c"])
            .arg(count.to_string())
            .arg("-i")
            .arg(format!("{interval}"))
            .args(["-W", "1", &self.guest_ip])
            .output()
            .map_err(|e| format!("running ping (scripts/setup.sh installs iputils-ping): {e}"))?;
        let r = parse_ping(&String::from_utf8_lossy(&out.stdout));
        Ok((r.answered, r.dups, r.rtts))
    }

    /// The guest's service address.
    pub fn service(&self) -> SocketAddr {
        format!("{}:7777", self.guest_ip)
            .parse()
            .expect("the lab's own address is well formed")
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.hosts[0], &self.hosts[1]] {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.switch]);
    }
}

/// What `ping -n` printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingReport {
    /// Replies, duplicates left out.
    pub answered: u32,
    /// Duplicate replies (`DUP!`): two hosts answered.
    pub dups: u32,
    /// The `icmp_seq` of each answered reply, in order.
    pub seqs: Vec<u64>,
    /// The RTT of each answered reply, in ms.
    pub rtts: Vec<f64>,
}

impl PingReport {
    /// The most sequence numbers between two answered replies (1 when
    /// none was missed).
    pub fn longest_seq_gap(&self) -> u64 {
        self.seqs
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or(0)
    }
}

/// Parses the reply lines of `ping -n`.
pub fn parse_ping(text: &str) -> PingReport {
    let mut r = PingReport::default();
    for l in text.lines().filter(|l| l.contains("bytes from")) {
        if l.contains("DUP!") {
            r.dups += 1;
            continue;
        }
        r.answered += 1;
        let field = |key: &str| l.split(key).nth(1)?.split(' ').next();
        if let Some(s) = field("icmp_seq=").and_then(|s| s.parse().ok()) {
            r.seqs.push(s);
        }
        if let Some(t) = field("time=").and_then(|t| t.parse().ok()) {
            r.rtts.push(t);
        }
    }
    r
}

/// Waits until the text file `path` (a guest's console) holds a whole line
/// containing `needle` (the file grows byte by byte), for up to `timeout`
/// or until `gone()` says its writer ended; returns the file's text.
pub fn wait_for_line(
    path: &std::path::Path,
    needle: &str,
    timeout: Duration,
    mut gone: impl FnMut() -> bool,
) -> Result<String, String> {
    let end = std::time::Instant::now() + timeout;
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.find(needle).is_some_and(|i| s[i..].contains('\n')) {
            return Ok(s);
        }
        if std::time::Instant::now() > end || gone() {
            return Err(format!("no {needle:?} in {}:\n{s}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One reply of the guest's counter service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub id: u64,
    pub counter: u64,
    pub tsc: u64,
    pub hash: u64,
}

impl Reply {
    pub fn parse(b: &[u8]) -> Option<Reply> {
        if b.len() != 32 {
            return None;
        }
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Some(Reply {
            id: w(0),
            counter: w(1),
            tsc: w(2),
            hash: w(3),
        })
    }
}

/// Sends request `id` until a reply for it comes (retransmitting every
/// `retry`), up to `deadline`; returns every reply received meanwhile
/// (stale ones included), the last being `id`'s, if any.
pub fn request(
    sock: &UdpSocket,
    to: SocketAddr,
    id: u64,
    retry: Duration,
    deadline: Duration,
) -> Vec<Reply> {
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    let mut req = id.to_le_bytes().to_vec();
    req.extend_from_slice(b"hotspare");
    let _ = sock.set_read_timeout(Some(retry.max(Duration::from_millis(1))));
    let mut buf = [0u8; 64];
    while start.elapsed() < deadline {
        let _ = sock.send_to(&req, to);
        let until = std::time::Instant::now() + retry;
        while std::time::Instant::now() < until {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Some(r) = Reply::parse(&buf[..n]) {
                        got.push(r);
                        if r.id == id {
                            return got;
                        }
                    }
                }
                Err(_) => break,
            }
        }
    }
    got
}

/// What a client saw of the counter service, checked as it goes: no id is
/// answered twice differently, and the counter strictly grows with every
/// new id. A reply released before its epoch committed, or a takeover from
/// an older state, breaks one of the two.
#[derive(Default)]
pub struct ReplyLog {
    /// The reply to each id, in id order.
    pub replies: Vec<Reply>,
    /// Each request's time to its reply.
    pub latencies: Vec<Duration>,
    /// The longest time between two answered requests.
    pub worst_gap: Duration,
    last_answer: Option<std::time::Instant>,
}

impl ReplyLog {
    /// Adds what request `id` brought (`got`, from [`request`]), which took
    /// `took`. An error says what was contradicted, or that no reply came.
    pub fn record(&mut self, got: &[Reply], id: u64, took: Duration) -> Result<(), String> {
        for r in got {
            if let Some(prev) = self.replies.iter().rev().find(|p| p.id == r.id) {
                if prev != r {
                    return Err(format!(
                        "CONTRADICTED: request {} was answered twice differently: {prev:?} then {r:?}",
                        r.id
                    ));
                }
            }
        }
        let Some(r) = got.last().filter(|r| r.id == id).copied() else {
            return Err(format!(
                "request {id} got no reply within the deadline (the service did not resume)"
            ));
        };
        if let Some(last) = self.replies.last() {
            if r.counter <= last.counter {
                return Err(format!(
                    "CONTRADICTED: request {id} got counter {} after request {} got {}: guest state the client saw was lost",
                    r.counter, last.id, last.counter
                ));
            }
        }
        let now = std::time::Instant::now();
        if let Some(t) = self.last_answer {
            self.worst_gap = self.worst_gap.max(now - t);
        }
        self.last_answer = Some(now);
        self.replies.push(r);
        self.latencies.push(took);
        Ok(())
    }
}

impl ReplyLog {
    /// Sends requests one after another (ids after `*id`, retransmitting
    /// every 100 ms, each given up to 10 s) until `until`, recording and
    /// checking every reply.
    pub fn drive(
        &mut self,
        sock: &UdpSocket,
        to: SocketAddr,
        id: &mut u64,
        until: std::time::Instant,
    ) -> Result<(), String> {
        while std::time::Instant::now() < until {
            *id += 1;
            let t = std::time::Instant::now();
            let got = request(
                sock,
                to,
                *id,
                Duration::from_millis(100),
                Duration::from_secs(10),
            );
            self.record(&got, *id, t.elapsed())?;
        }
        Ok(())
    }
}

/// The `q` quantile (0..=1) of `v` (sorted in place); zero when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: u64, counter: u64, tsc: u64) -> Reply {
        Reply {
            id,
            counter,
            tsc,
            hash: 0,
        }
    }

    #[test]
    fn the_log_catches_contradictions_and_lost_state() {
        let d = Duration::from_millis(1);
        let mut log = ReplyLog::default();
        log.record(&[r(1, 1, 10)], 1, d).unwrap();
        log.record(&[r(1, 1, 10), r(2, 2, 20)], 2, d).unwrap();
        // The same id answered with another execution's reply.
        let e = log.record(&[r(2, 2, 21), r(3, 3, 30)], 3, d).unwrap_err();
        assert!(e.contains("answered twice differently"), "{e}");
        // The counter going back: state the client saw was lost.
        let e = log.record(&[r(3, 2, 30)], 3, d).unwrap_err();
        assert!(e.contains("was lost"), "{e}");
        // A stale request processed in between makes the counter jump: fine.
        log.record(&[r(3, 4, 30)], 3, d).unwrap();
        let e = log.record(&[r(9, 9, 90)], 4, d).unwrap_err();
        assert!(e.contains("no reply"), "{e}");
        assert_eq!(log.replies.len(), 3);
    }

    #[test]
    fn ping_output_is_read_with_its_duplicates_and_gaps() {
        let text = "PING 10.0.0.5 (10.0.0.5) 56(84) bytes of data.\n\
            64 bytes from 10.0.0.5: icmp_seq=1 ttl=64 time=0.812 ms\n\
            64 bytes from 10.0.0.5: icmp_seq=2 ttl=64 time=1.50 ms\n\
            64 bytes from 10.0.0.5: icmp_seq=2 ttl=64 time=1.90 ms (DUP!)\n\
            64 bytes from 10.0.0.5: icmp_seq=6 ttl=64 time=2.25 ms\n\
            \n--- 10.0.0.5 ping statistics ---\n";
        let r = parse_ping(text);
        assert_eq!((r.answered, r.dups), (3, 1));
        assert_eq!(r.seqs, vec![1, 2, 6]);
        assert_eq!(r.rtts, vec![0.812, 1.5, 2.25]);
        assert_eq!(r.longest_seq_gap(), 4);
    }

    #[test]
    fn replies_parse_only_at_their_size() {
        let mut b = vec![0u8; 32];
        b[8] = 5;
        assert_eq!(Reply::parse(&b).unwrap().counter, 5);
        assert!(Reply::parse(&b[..31]).is_none());
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), 2.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }
}
