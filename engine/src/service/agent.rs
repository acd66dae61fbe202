//! `hotspare agent`: one per host. It registers the host under a lease,
//! serves the API and `/metrics`, and runs its turn every `TURN`: read the
//! registry, refresh its children, let `reconcile` decide, carry the
//! decisions out. It tells systemd it is ready once registered and
//! serving, and pets the watchdog only from a turn that completed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use super::api::{self, Api, RunCheck};
use super::config::AgentConfig;
use super::metrics::Metrics;
use super::model::{Desired, HostInfo, Phase, TokenRecord};
use super::reconcile::{self, Action, World};
use super::registry::{Registry, RegistryError};
use super::supervisor::{Children, Launch};
use crate::control;

/// How often the agent takes a turn.
pub const TURN: Duration = Duration::from_millis(200);

/// What stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The registry failed at start.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// Something else at start.
    #[error("{0}")]
    Start(String),
}

/// The running agent's handles (for a clean stop).
pub struct Agent {
    cfg: AgentConfig,
    registry: Registry,
    lease: u64,
    next_renew: Instant,
    children: Children,
    launch: Launch,
    metrics: Arc<Metrics>,
    server: Arc<tiny_http::Server>,
    me: HostInfo,
    /// The statuses last published, per VM.
    published: std::collections::BTreeMap<String, super::model::VmStatus>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// Registers the host, stores the admin token's hash, starts the API.
    pub fn start(
        cfg: AgentConfig,
        binary: std::path::PathBuf,
        run_check: RunCheck,
    ) -> Result<Agent, AgentError> {
        let hosts = cfg.etcd_hosts();
        let mut registry = Registry::new(&hosts, &cfg.etcd.prefix)?;
        if let Some(f) = &cfg.api.admin_token_file {
            let token = std::fs::read_to_string(f)
                .map_err(|e| AgentError::Start(format!("admin_token_file {}: {e}", f.display())))?;
            let token = token.trim();
            if token.len() < 16 {
                return Err(AgentError::Start(format!(
                    "admin_token_file {}: a token of at least 16 characters",
                    f.display()
                )));
            }
            registry.add_token(
                &super::auth::hash(token),
                &TokenRecord {
                    name: "admin".into(),
                    role: super::model::AccessRole::Admin,
                },
            )?;
        }
        let me = HostInfo {
            id: cfg.host.id.clone(),
            rack: cfg.host.rack.clone(),
            site: cfg.host.site.clone(),
            capacity: cfg.capacity,
            api: cfg.api.listen,
            address: cfg.replication.address,
        };
        let lease = registry.lease(cfg.etcd.lease_ttl_s)?;
        registry.put_host(&me, lease)?;
        let server = Arc::new(
            tiny_http::Server::http(cfg.api.listen)
                .map_err(|e| AgentError::Start(format!("api.listen {}: {e}", cfg.api.listen)))?,
        );
        let metrics = Arc::new(Metrics::new());
        let api = Api {
            registry: Registry::new(&hosts, &cfg.etcd.prefix)?,
            metrics: metrics.clone(),
            run_check,
        };
        let srv = server.clone();
        std::thread::Builder::new()
            .name("hs-api".into())
            .spawn(move || api::serve(srv, api))
            .map_err(|e| AgentError::Start(format!("the API thread: {e}")))?;
        let launch = Launch {
            binary,
            state_dir: cfg.paths.state_dir.clone(),
            key_file: cfg.replication.key_file.clone(),
            arbiter: format!("etcd://{}{}", hosts, cfg.etcd.prefix),
            host: cfg.host.id.clone(),
            address: cfg.replication.address,
            ports: cfg.replication.port_range().map_err(AgentError::Start)?,
        };
        eprintln!(
            "hotspare agent: host {} (rack {}, site {}) registered in etcd at {} under lease {lease:x}; API on http://{}",
            me.id,
            me.rack,
            me.site,
            hosts,
            cfg.api.listen
        );
        Ok(Agent {
            next_renew: Instant::now(),
            cfg,
            registry,
            lease,
            children: Children::default(),
            launch,
            metrics,
            server,
            me,
            published: Default::default(),
        })
    }

    /// Runs turns until `stop` is set; then stops the children and leaves
    /// the registry. `ready` is called once, after the first turn.
    pub fn run(&mut self, stop: &AtomicBool, mut ready: impl FnMut(), mut watchdog: impl FnMut()) {
        let mut first = true;
        let mut last_error: Option<(String, Instant)> = None;
        while !stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            match self.turn() {
                Ok(()) => {
                    if first {
                        ready();
                        first = false;
                    }
                    watchdog();
                }
                Err(e) => {
                    // Said when it changes, and every 10 s while it lasts.
                    let msg = e.to_string();
                    if last_error
                        .as_ref()
                        .is_none_or(|(m, at): &(String, Instant)| {
                            *m != msg || at.elapsed() > Duration::from_secs(10)
                        })
                    {
                        eprintln!("hotspare agent: turn failed: {msg}");
                        last_error = Some((msg, Instant::now()));
                    }
                }
            }
            std::thread::sleep(TURN.saturating_sub(t0.elapsed()));
        }
        eprintln!("hotspare agent: stopping: its VMMs stop (their VMs fail over to their spares)");
        for p in &self.children.procs {
            if p.view.exited.is_none() {
                // A primary killed fails over; one stopped in order would
                // end its guest on every spare.
                let sig = if p.view.runs_guest() {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                };
                self.children.signal(&p.view.vm, sig);
            }
        }
        let _ = self.registry.revoke(self.lease);
        self.server.unblock();
    }

    fn turn(&mut self) -> Result<(), RegistryError> {
        if Instant::now() >= self.next_renew {
            if !self.registry.renew(self.lease)? {
                eprintln!("hotspare agent: the lease had expired; registering again");
                self.lease = self.registry.lease(self.cfg.etcd.lease_ttl_s)?;
                self.registry.put_host(&self.me, self.lease)?;
            }
            self.next_renew =
                Instant::now() + Duration::from_millis(self.cfg.etcd.lease_ttl_s * 1000 / 3);
        }
        let hosts = self.registry.hosts()?;
        if !hosts.iter().any(|h| h.id == self.me.id) {
            self.registry.put_host(&self.me, self.lease)?;
        }
        let vms = self.registry.vms()?;
        let endpoints = self.registry.endpoints()?;
        self.children.poll(&self.metrics);
        let views = self.children.views();
        let acts = reconcile::reconcile(&World {
            me: &self.me.id,
            hosts: &hosts,
            vms: &vms,
            endpoints: &endpoints,
            children: &views,
            now_ms: now_ms(),
        });
        for a in acts {
            self.act(a, &vms)?;
        }
        // Publish each running guest's status when it changed (epochs are
        // counted in steps of 50, so a busy VM is written about twice a second).
        for p in &self.children.procs {
            if !p.view.runs_guest() {
                continue;
            }
            let mut st = p.status.clone();
            st.host = self.me.id.clone();
            st.epochs -= st.epochs % 50;
            if self.published.get(&p.view.vm) != Some(&st) {
                self.registry.put_status(&p.view.vm, &st, self.lease)?;
                self.published.insert(p.view.vm.clone(), st);
            }
        }
        self.published.retain(|vm, _| {
            self.children
                .procs
                .iter()
                .any(|p| &p.view.vm == vm && p.view.runs_guest())
        });
        let committed = vms
            .iter()
            .filter(|v| {
                v.doc.desired == Desired::Running
                    && !matches!(v.doc.phase, Phase::Finished | Phase::Lost { .. })
            })
            .filter(|v| {
                v.doc.assign.primary == self.me.id
                    || v.doc.assign.spares.iter().any(|s| s.host == self.me.id)
            })
            .fold((0, 0), |(m, c), v| {
                (m + v.doc.spec.mem_mib, c + v.doc.spec.vcpus)
            });
        let running = self
            .children
            .procs
            .iter()
            .filter(|p| p.view.exited.is_none())
            .count();
        self.metrics.host(
            &self.me.id,
            (self.me.capacity.mem_mib, self.me.capacity.vcpus),
            committed,
            running,
        );
        Ok(())
    }

    fn act(
        &mut self,
        a: Action,
        vms: &[super::registry::Versioned<super::model::VmDoc>],
    ) -> Result<(), RegistryError> {
        let say = |what: String| eprintln!("hotspare agent: {what}");
        // The spec of a VM to start (gone meanwhile: nothing to start).
        let spec_of = |vm: &str| {
            vms.iter()
                .find(|v| v.doc.spec.name == vm)
                .map(|v| &v.doc.spec)
        };
        match a {
            Action::StartSpare { vm } => {
                let Some(s) = spec_of(&vm) else {
                    return Ok(());
                };
                let disks = s.disk_sizes();
                match self
                    .children
                    .start_spare(&self.launch, &vm, s.mem_mib, &disks)
                {
                    Ok(()) => say(format!("{vm}: standby started")),
                    Err(e) => say(format!("{vm}: cannot start a standby: {e}")),
                }
            }
            Action::StartPrimary {
                vm,
                sync,
                asynchronous,
            } => {
                let Some(s) = spec_of(&vm) else {
                    return Ok(());
                };
                let mut args = vec![
                    "--kernel".to_string(),
                    s.kernel.display().to_string(),
                    "--mem-mib".into(),
                    s.mem_mib.to_string(),
                    "--vcpus".into(),
                    s.vcpus.to_string(),
                    "--cmdline".into(),
                    s.cmdline.clone(),
                ];
                args.extend(s.run_args().unwrap_or_default());
                let disks = s.disk_sizes();
                match self.children.start_primary(
                    &self.launch,
                    &vm,
                    &args,
                    &sync,
                    &asynchronous,
                    &disks,
                ) {
                    Ok(()) => say(format!(
                        "{vm}: primary started, spares {sync:?} + asynchronous {asynchronous:?}"
                    )),
                    Err(e) => say(format!("{vm}: cannot start the primary: {e}")),
                }
            }
            Action::Publish(ep) => {
                self.registry.put_endpoint(&ep, self.lease)?;
                say(format!("{}: standby listens on {}", ep.vm, ep.addr));
            }
            Action::Withdraw { vm } => self.registry.delete_endpoint(&vm, &self.me.id)?,
            Action::AddSpare {
                vm,
                addr,
                synchronous,
            } => {
                let r = self.children.command(
                    &vm,
                    &control::Command::AddSpare {
                        addr: addr.clone(),
                        synchronous,
                    },
                );
                match r {
                    Ok(r) if r.ok => say(format!("{vm}: new spare {addr}")),
                    Ok(r) => say(format!(
                        "{vm}: spare {addr} refused: {}",
                        r.error.unwrap_or_default()
                    )),
                    Err(e) => say(format!("{vm}: spare {addr}: {e}")),
                }
            }
            Action::DropSpare { vm, addr } => {
                let _ = self
                    .children
                    .command(&vm, &control::Command::DropSpare { addr: addr.clone() });
                say(format!("{vm}: lost spare {addr} forgotten"));
            }
            Action::Kill { vm } => {
                say(format!("{vm}: SIGKILL to its VMM"));
                self.children.signal(&vm, Signal::SIGKILL);
            }
            Action::Stop { vm } => {
                if self.children.stop(&vm) {
                    say(format!("{vm}: stopping its VMM (SIGTERM)"));
                }
            }
            Action::Forget { vm } => self.children.forget(&vm, &self.metrics),
            Action::Write { doc, expect } => {
                if self.registry.swap_vm(&doc, Some(expect))? {
                    say(format!(
                        "{}: primary {}, spares {:?}, phase {:?}",
                        doc.spec.name,
                        doc.assign.primary,
                        doc.assign
                            .spares
                            .iter()
                            .map(|s| &s.host)
                            .collect::<Vec<_>>(),
                        doc.phase
                    ));
                }
            }
        }
        Ok(())
    }
}
