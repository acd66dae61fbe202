//! The agent's children: the VMM processes it runs (`hotspare run` for a
//! primary, `hotspare standby` for a spare), each with its own console,
//! events file and control socket under `state_dir/vms/<vm>/`. Their state
//! comes from their typed events and control socket, never from their
//! stderr (which goes to a log file beside them, for people).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::metrics::Metrics;
use super::reconcile::{Child, ChildKind};
use crate::control;
use crate::events::{Event, Tail};

/// What the children need to know about the cluster.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `hotspare` binary.
    pub binary: PathBuf,
    /// Where per-VM files go.
    pub state_dir: PathBuf,
    /// The cluster's key file.
    pub key_file: PathBuf,
    /// `etcd://HOSTS/PREFIX` for `--arbiter`.
    pub arbiter: String,
    /// This host's id (a primary's name in the record).
    pub host: String,
    /// The standbys' listening address.
    pub address: std::net::IpAddr,
    /// Their port range.
    pub ports: (u16, u16),
}

/// One running (or ended) child.
pub struct Proc {
    /// What the reconciler sees.
    pub view: Child,
    process: std::process::Child,
    events: Option<Tail>,
    events_path: PathBuf,
    /// Its control socket.
    pub control: PathBuf,
    /// Its port (a standby's).
    pub port: Option<u16>,
    /// What its events say of the VM (published by the agent while it runs
    /// the guest).
    pub status: super::model::VmStatus,
    /// When it was asked to stop.
    stop_sent: Option<std::time::Instant>,
}

/// How long a child asked to stop gets before it is killed.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Every child of this agent.
#[derive(Default)]
pub struct Children {
    /// The children.
    pub procs: Vec<Proc>,
    seq: u64,
}

impl Children {
    /// The reconciler's view.
    pub fn views(&self) -> Vec<Child> {
        self.procs.iter().map(|p| p.view.clone()).collect()
    }

    fn files(
        &mut self,
        l: &Launch,
        vm: &str,
    ) -> std::io::Result<(PathBuf, PathBuf, PathBuf, PathBuf)> {
        self.seq += 1;
        let dir = l.state_dir.join("vms").join(vm);
        std::fs::create_dir_all(&dir)?;
        let n = format!("{}-{}", std::process::id(), self.seq);
        Ok((
            dir.join(format!("{n}.console")),
            dir.join(format!("{n}.events")),
            dir.join(format!("{n}.sock")),
            dir.join(format!("{n}.log")),
        ))
    }

    fn free_port(&self, l: &Launch) -> Option<u16> {
        let used: BTreeSet<u16> = self.procs.iter().filter_map(|p| p.port).collect();
        (l.ports.0..=l.ports.1)
            .find(|p| !used.contains(p) && std::net::TcpListener::bind((l.address, *p)).is_ok())
    }

    /// Fresh sparse images of `sizes` (MiB) for a new copy of `vm`, named
    /// after its incarnation (a copy never reuses an older one's image).
    fn images(&self, l: &Launch, vm: &str, sizes: &[u64]) -> Result<Vec<PathBuf>, String> {
        let dir = l.state_dir.join("vms").join(vm);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        sizes
            .iter()
            .enumerate()
            .map(|(i, mib)| {
                let p = dir.join(format!(
                    "{}-{}.disk{i}.img",
                    std::process::id(),
                    self.seq + 1
                ));
                let f = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                f.set_len(mib << 20)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(p)
            })
            .collect()
    }

    /// Starts a standby for `vm` with replicas of `disks` (MiB each),
    /// reserving the VM's `mem_mib` before it listens, so the live copy
    /// that seeds it never waits for this host to provide pages
    /// (`docs/spares.md`, "Reserved memory").
    pub fn start_spare(
        &mut self,
        l: &Launch,
        vm: &str,
        mem_mib: u64,
        disks: &[u64],
    ) -> Result<(), String> {
        let port = self
            .free_port(l)
            .ok_or_else(|| format!("no free port in {}-{}", l.ports.0, l.ports.1))?;
        let mut c = Command::new(&l.binary);
        c.arg("standby")
            .arg("--listen")
            .arg(format!("{}:{port}", l.address))
            .arg("--key-file")
            .arg(&l.key_file)
            .arg("--arbiter")
            .arg(&l.arbiter)
            .arg("--reserve-mib")
            .arg(mem_mib.to_string());
        for img in self.images(l, vm, disks)? {
            c.arg("--disk").arg(img);
        }
        self.spawn(l, vm, ChildKind::Spare, c, Some(port))
    }

    /// Starts the primary of `vm` with `args` (kernel, memory, options)
    /// and its spares.
    pub fn start_primary(
        &mut self,
        l: &Launch,
        vm: &str,
        args: &[String],
        sync: &[String],
        asynchronous: &[String],
        disks: &[u64],
    ) -> Result<(), String> {
        let mut c = Command::new(&l.binary);
        c.arg("run").args(args);
        for img in self.images(l, vm, disks)? {
            c.arg("--disk").arg(img);
        }
        for s in sync {
            c.arg("--shadow").arg(s);
        }
        for s in asynchronous {
            c.arg("--async-shadow").arg(s);
        }
        if !sync.is_empty() || !asynchronous.is_empty() {
            c.arg("--key-file")
                .arg(&l.key_file)
                .arg("--arbiter")
                .arg(&l.arbiter)
                .arg("--vm-id")
                .arg(vm)
                .arg("--node-name")
                .arg(&l.host);
        }
        self.spawn(l, vm, ChildKind::Primary, c, None)
    }

    fn spawn(
        &mut self,
        l: &Launch,
        vm: &str,
        kind: ChildKind,
        mut c: Command,
        port: Option<u16>,
    ) -> Result<(), String> {
        let (console, events, control, log) =
            self.files(l, vm).map_err(|e| format!("state dir: {e}"))?;
        let log = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        c.arg("--console")
            .arg(&console)
            .arg("--events")
            .arg(&events)
            .arg("--control")
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let process = c
            .spawn()
            .map_err(|e| format!("{}: {e}", l.binary.display()))?;
        self.procs.push(Proc {
            view: Child {
                vm: vm.to_string(),
                kind,
                exited: None,
                listening: None,
                took_over: false,
                spares: Vec::new(),
                protected_by: BTreeSet::new(),
                stopping: false,
            },
            process,
            events: None,
            events_path: events,
            control,
            port,
            status: super::model::VmStatus::default(),
            stop_sent: None,
        });
        Ok(())
    }

    /// Refreshes every child: its exit, its new events (folded into the
    /// view and the metrics), its primary's spares.
    pub fn poll(&mut self, metrics: &Metrics) {
        for p in &mut self.procs {
            if p.view.exited.is_none() {
                if let Ok(Some(st)) = p.process.try_wait() {
                    p.view.exited = Some(st.code());
                }
            }
            if p.events.is_none() {
                p.events = Tail::open(&p.events_path).ok();
            }
            let lines = p
                .events
                .as_mut()
                .and_then(|t| t.read().ok())
                .unwrap_or_default();
            for line in lines.into_iter().flatten() {
                fold(&mut p.view, &line.event);
                match &line.event {
                    Event::Running { term } => p.status.term = *term,
                    Event::Epoch { async_lag, .. } => {
                        p.status.epochs += 1;
                        p.status.async_lag = *async_lag;
                    }
                    _ => {}
                }
                metrics.event(&p.view.vm, &line.event);
            }
            if p.view.runs_guest() {
                if let Ok(r) = control::call(&p.control, &control::Command::Status) {
                    if let Some(s) = r.status {
                        p.view.spares = s.spares;
                    }
                }
                metrics.spares(&p.view.vm, p.view.protected_by.len());
                p.status.spares = p.view.protected_by.iter().cloned().collect();
            }
        }
    }

    /// Sends `sig` to `vm`'s child.
    pub fn signal(&self, vm: &str, sig: Signal) {
        for p in self
            .procs
            .iter()
            .filter(|p| p.view.vm == vm && p.view.exited.is_none())
        {
            let _ = kill(Pid::from_raw(p.process.id() as i32), sig);
        }
    }

    /// Stops `vm`'s child in order: one SIGTERM (a second would make a
    /// primary exit at once, unstopped, and its spares take over), then
    /// SIGKILL if it is still there after `STOP_GRACE`. Whether a SIGTERM
    /// was sent now.
    pub fn stop(&mut self, vm: &str) -> bool {
        let mut sent = false;
        for p in self
            .procs
            .iter_mut()
            .filter(|p| p.view.vm == vm && p.view.exited.is_none())
        {
            let pid = Pid::from_raw(p.process.id() as i32);
            match p.stop_sent {
                None => {
                    let _ = kill(pid, Signal::SIGTERM);
                    p.stop_sent = Some(std::time::Instant::now());
                    p.view.stopping = true;
                    sent = true;
                }
                Some(at) if at.elapsed() > STOP_GRACE => {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
        sent
    }

    /// Sends a control command to `vm`'s child.
    pub fn command(&self, vm: &str, cmd: &control::Command) -> Result<control::Reply, String> {
        let p = self
            .procs
            .iter()
            .find(|p| p.view.vm == vm && p.view.exited.is_none())
            .ok_or_else(|| format!("no running child for {vm}"))?;
        control::call(&p.control, cmd).map_err(|e| format!("{}: {e}", p.control.display()))
    }

    /// Drops `vm`'s ended children (reaping them).
    pub fn forget(&mut self, vm: &str, metrics: &Metrics) {
        self.procs.retain_mut(|p| {
            if p.view.vm == vm && p.view.exited.is_some() {
                let _ = p.process.wait();
                let _ = std::fs::remove_file(&p.control);
                metrics.remove_vm(vm);
                false
            } else {
                true
            }
        });
    }
}

/// Folds an event into a child's view.
fn fold(v: &mut Child, e: &Event) {
    match e {
        Event::Listening { addr } => v.listening = Some(addr.clone()),
        Event::TookOver { .. } => {
            v.took_over = true;
            v.protected_by.clear();
        }
        Event::Protected { spare, .. } | Event::AsyncFollowing { spare } => {
            v.protected_by.insert(spare.clone());
        }
        Event::SpareLost { spare, .. } => {
            v.protected_by.remove(spare);
        }
        _ => {}
    }
}
