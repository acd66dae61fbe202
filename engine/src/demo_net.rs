//! The network part of `hotspare demo`, and the runs `hotspare bench-net`
//! measures: the bundled `netcheck` guest (it answers ARP, ping and a UDP
//! counter service) on a virtio-net NIC, in a lab of network namespaces
//! (`netlab`: a switch, a client and two hosts with bridged TAPs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netlab::{NetLab, ReplyLog};

use crate::demo::{arbiter_arg, guest_run, Child};

/// The bundled network guest.
pub const GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guests/netcheck.elf"));

/// The port the standby listens on, on the second host.
const STANDBY_PORT: u16 = 7600;

/// A running netcheck guest: its primary and, when protected, its standby.
pub(crate) struct NetVm {
    pub(crate) primary: Child,
    pub(crate) standby: Option<Child>,
}

impl Drop for NetVm {
    fn drop(&mut self) {
        // The standby first: killed second, it would take over and move
        // the guest's MAC to its host on the switch (it announces it).
        drop(self.standby.take());
        let _ = self.primary.child.kill();
        let _ = self.primary.child.wait();
    }
}

/// Starts `netcheck` on the lab's first host; with `protect`, protected by
/// a standby on the second host with these extra primary arguments.
/// Returns once the guest's driver is up (and the shadow in sync).
pub(crate) fn start(
    exe: &Path,
    lab: &NetLab,
    work: &Path,
    interval_ms: u64,
    protect: Option<&[&str]>,
) -> anyhow::Result<NetVm> {
    let guest = work.join("netcheck.elf");
    std::fs::write(&guest, GUEST).context("writing the network guest")?;
    let console = work.join("net-primary.txt");
    let _ = std::fs::remove_file(&console);
    let key = work.join("key");
    crate::fresh_key(&key)?;
    let _ = std::fs::remove_file(work.join("arbiter"));
    let mut cmd = guest_run(exe, &guest, 64, &format!("ip={}", lab.guest_ip), &console);
    cmd.args(["--net", "tap=tap0", "--vm-id", "demo-net"]);
    let mut standby = None;
    if let Some(extra) = protect {
        let mut s = Command::new(exe);
        s.args(["standby", "--listen"])
            .arg(format!("{}:{STANDBY_PORT}", lab.host_ips[1]))
            .arg("--key-file")
            .arg(&key)
            .arg("--arbiter")
            .arg(arbiter_arg(&key))
            .arg("--console")
            .arg(work.join("net-shadow.txt"))
            .args(["--net", "tap=tap0"]);
        let mut s = Child::spawn_with_events(
            &mut NetLab::wrap(&lab.hosts[1], &s),
            &work.join("net-shadow.events"),
        )?;
        s.wait_listening(Duration::from_secs(10))?;
        cmd.arg("--shadow")
            .arg(format!("{}:{STANDBY_PORT}", lab.host_ips[1]))
            .arg("--key-file")
            .arg(&key)
            .arg("--arbiter")
            .arg(arbiter_arg(&key))
            .arg("--interval-ms")
            .arg(interval_ms.to_string())
            .args(extra);
        standby = Some(s);
    }
    let primary = Child::spawn(&mut NetLab::wrap(&lab.hosts[0], &cmd))?;
    let mut vm = NetVm { primary, standby };
    if let Some(s) = vm.standby.as_mut() {
        s.wait_in_sync(Duration::from_secs(30))?;
    }
    // Frames that arrive before the guest's driver is up are dropped, as on
    // any NIC: wait for it.
    netlab::wait_for_line(&console, "netcheck up", Duration::from_secs(20), || {
        vm.primary.child.try_wait().map_or(true, |s| s.is_some())
    })
    .map_err(|e| anyhow::anyhow!("the network guest did not come up: {e}"))?;
    Ok(vm)
}

/// Sends requests one after another until `until`, checking every reply.
pub(crate) fn drive(
    lab: &NetLab,
    sock: &std::net::UdpSocket,
    log: &mut ReplyLog,
    id: &mut u64,
    until: Instant,
) -> anyhow::Result<()> {
    log.drive(sock, lab.service(), id, until)
        .map_err(anyhow::Error::msg)
}

/// A ping running in the background from the client.
struct Ping {
    child: std::process::Child,
    interval_ms: u64,
}

impl Drop for Ping {
    fn drop(&mut self) {
        // Finished already (finish waited for it), or the demo failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ping {
    fn start(lab: &NetLab, count: u32, interval_ms: u64) -> anyhow::Result<Ping> {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.client_ns, "ping", "-n", "-c"])
            .arg(count.to_string())
            .arg("-i")
            .arg(format!("{}", interval_ms as f64 / 1e3))
            .args(["-W", "1", &lab.guest_ip])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running ping (scripts/setup.sh installs iputils-ping)")?;
        Ok(Ping { child, interval_ms })
    }

    /// (answered, duplicates, longest gap in ms between answered pings).
    fn finish(mut self) -> anyhow::Result<(u32, u32, u64)> {
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use std::io::Read;
            out.read_to_string(&mut text)?;
        }
        self.child.wait()?;
        let r = netlab::parse_ping(&text);
        Ok((r.answered, r.dups, r.longest_seq_gap() * self.interval_ms))
    }
}

/// The demo's network part: a protected guest answers ping and requests
/// while its primary is SIGKILLed; the standby's host takes over and
/// announces the guest's MAC. Skipped, loudly, where the lab cannot be
/// built (it needs root and iproute2).
pub fn net_demo(exe: &Path, dir: &Path, interval_ms: u64) -> anyhow::Result<bool> {
    println!("[net] network: a protected guest answering ping and a UDP counter service across a failover...");
    let lab = match NetLab::create() {
        Ok(l) => l,
        Err(e) => {
            println!("[net] SKIPPED, the network part did NOT run: {e}");
            return Ok(false);
        }
    };
    let work: PathBuf = dir.join("net");
    std::fs::create_dir_all(&work)?;
    let mut vm = start(exe, &lab, &work, interval_ms, Some(&[]))?;
    println!(
        "      guest {} up on host A (TAP bridged to the switch), shadow on host B in sync",
        lab.guest_ip
    );
    let sock = lab.client_socket()?;
    let ping = Ping::start(&lab, 150, 20)?;
    let mut log = ReplyLog::default();
    let mut id = 0u64;
    drive(
        &lab,
        &sock,
        &mut log,
        &mut id,
        Instant::now() + Duration::from_millis(1200),
    )?;
    let before = log.replies.len();
    println!("      {before} requests answered; SIGKILL of the primary...");
    vm.primary.child.kill()?;
    vm.primary.child.wait()?;
    let standby = vm.standby.as_mut().context("a standby")?;
    standby.wait_event(Duration::from_secs(10), "the takeover", |e| {
        matches!(e, engine::events::Event::TookOver { .. }).then_some(())
    })?;
    if let Some(line) = standby.line("TAKING OVER") {
        println!("      {}", line.trim_start_matches("hotspare: "));
    }
    drive(
        &lab,
        &sock,
        &mut log,
        &mut id,
        Instant::now() + Duration::from_millis(1500),
    )?;
    let (answered, dups, gap) = ping.finish()?;
    let mut lat: Vec<f64> = log
        .latencies
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    println!(
        "      ping: {answered} of 150 answered, {dups} duplicates, longest gap {gap} ms (the failover)"
    );
    println!(
        "      requests: {} answered ({} after the kill, by the new primary, unprotected: it has no spare), counter {}..{}, \
         none contradicted; longest gap {:.0} ms; request/response p50 {:.2} ms",
        log.replies.len(),
        log.replies.len() - before,
        log.replies.first().map_or(0, |r| r.counter),
        log.replies.last().map_or(0, |r| r.counter),
        log.worst_gap.as_secs_f64() * 1e3,
        netlab::quantile(&mut lat, 0.5)
    );
    if dups > 0 {
        bail!("ping saw {dups} duplicate replies: two hosts answered");
    }
    if log.replies.len() == before || answered < 100 {
        bail!("the guest did not answer after the takeover");
    }
    Ok(true)
}
