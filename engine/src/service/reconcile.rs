//! Reconciliation: what one agent does next, as a pure function of what it
//! sees (the registry, its own children) — no sockets, no clocks, in the
//! style of `replication/liveness.rs`. The agent's loop gathers a [`World`]
//! every turn, carries out the [`Action`]s and comes back; an action that
//! fails is simply decided again on the next turn. Design:
//! `docs/service.md#protection-lifecycle`.
//!
//! Who writes what: a VM's document is written by the agent of its
//! primary's host (and at a takeover by the new primary's), each write a
//! compare-and-swap on the revision it read, so two agents never both
//! move a VM.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{AssignedSpare, Desired, Endpoint, HostInfo, Phase, VmDoc};
use super::placement::{self, Current, HostView};
use super::registry::Versioned;

/// Which side of a VM a child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    /// `hotspare run`.
    Primary,
    /// `hotspare standby`.
    Spare,
}

/// A child as the agent last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    /// Its VM.
    pub vm: String,
    /// What it was started as.
    pub kind: ChildKind,
    /// Its exit status once it ended (`Some(None)`: killed by a signal).
    pub exited: Option<Option<i32>>,
    /// A standby's address, once it listens.
    pub listening: Option<String>,
    /// A standby that took over (it now runs the guest).
    pub took_over: bool,
    /// The spares its replicator has (from the control socket).
    pub spares: Vec<crate::control::SpareStatus>,
    /// Spares that joined and protect it (from its events), minus those lost.
    pub protected_by: BTreeSet<String>,
    /// The agent asked it to stop (its exit is a stop, not the guest's end).
    pub stopping: bool,
}

impl Child {
    /// Whether it runs the guest now.
    pub fn runs_guest(&self) -> bool {
        self.exited.is_none() && (self.kind == ChildKind::Primary || self.took_over)
    }
}

/// Everything one turn decides from.
pub struct World<'a> {
    /// This host's id.
    pub me: &'a str,
    /// The live hosts.
    pub hosts: &'a [HostInfo],
    /// Every VM.
    pub vms: &'a [Versioned<VmDoc>],
    /// Every published endpoint.
    pub endpoints: &'a [Endpoint],
    /// This host's children.
    pub children: &'a [Child],
    /// Wall clock, ms since the Unix epoch (only recorded, never compared
    /// with a timeout).
    pub now_ms: u64,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start the VM's primary here with these spares.
    StartPrimary {
        /// The VM.
        vm: String,
        /// Synchronous spares' addresses.
        sync: Vec<String>,
        /// Asynchronous spares' addresses.
        asynchronous: Vec<String>,
    },
    /// Start a standby for the VM here.
    StartSpare {
        /// The VM.
        vm: String,
    },
    /// Publish this host's standby address for the VM.
    Publish(Endpoint),
    /// Withdraw it.
    Withdraw {
        /// The VM.
        vm: String,
    },
    /// Tell the local primary about a new spare.
    AddSpare {
        /// The VM.
        vm: String,
        /// The spare's address.
        addr: String,
        /// Whether it gates output.
        synchronous: bool,
    },
    /// Tell the local primary to forget a lost spare.
    DropSpare {
        /// The VM.
        vm: String,
        /// The spare's address.
        addr: String,
    },
    /// SIGKILL the local child (a failover on purpose, or a stale primary).
    Kill {
        /// The VM.
        vm: String,
    },
    /// Stop the local child in order (SIGTERM).
    Stop {
        /// The VM.
        vm: String,
    },
    /// Drop an ended child from the table.
    Forget {
        /// The VM.
        vm: String,
    },
    /// Write the VM's document if it is still at `expect`.
    Write {
        /// The new document.
        doc: Box<VmDoc>,
        /// The revision read.
        expect: u64,
    },
}

/// Decides one turn.
pub fn reconcile(w: &World) -> Vec<Action> {
    let mut out = Vec::new();
    let by_vm: BTreeMap<&str, &Child> = w.children.iter().map(|c| (c.vm.as_str(), c)).collect();
    let docs: BTreeMap<&str, &Versioned<VmDoc>> = w
        .vms
        .iter()
        .map(|v| (v.doc.spec.name.as_str(), v))
        .collect();
    // Children of deleted VMs stop.
    for c in w.children {
        if !docs.contains_key(c.vm.as_str()) {
            out.push(if c.exited.is_some() {
                Action::Forget { vm: c.vm.clone() }
            } else {
                Action::Stop { vm: c.vm.clone() }
            });
        }
    }
    for v in w.vms {
        let child = by_vm.get(v.doc.spec.name.as_str()).copied();
        vm_turn(w, v, child, &mut out);
    }
    out
}

fn vm_turn(w: &World, v: &Versioned<VmDoc>, child: Option<&Child>, out: &mut Vec<Action>) {
    let d = &v.doc;
    let vm = d.spec.name.clone();
    let me_primary = d.assign.primary == w.me;
    let my_spare = d.assign.spares.iter().find(|s| s.host == w.me);
    let write = |out: &mut Vec<Action>, doc: VmDoc| {
        out.push(Action::Write {
            doc: Box::new(doc),
            expect: v.rev,
        })
    };

    if d.desired == Desired::Stopped || (d.phase == Phase::Finished && !me_primary) {
        // Its address goes with it: a start places new standbys.
        withdraw_mine(w, &vm, out);
        match child {
            Some(c) if c.exited.is_none() => out.push(Action::Stop { vm }),
            Some(_) => out.push(Action::Forget { vm }),
            None => {}
        }
        return;
    }

    // A child still stopping from before a start: wait for its end, then
    // forget it; only then does this VM's new life begin here.
    if let Some(c) = child.filter(|c| c.stopping) {
        if c.exited.is_some() {
            out.push(Action::Forget { vm });
        }
        return;
    }

    // A local standby took over: this host runs the primary now.
    if child.is_some_and(|c| c.took_over && c.exited.is_none()) && !me_primary {
        let mut doc = d.clone();
        doc.assign.gen += 1;
        doc.assign.primary = w.me.to_string();
        doc.assign.spares.retain(|s| s.host != w.me);
        doc.phase = Phase::Running;
        doc.failovers += 1;
        doc.failover_requested = false;
        doc.last_takeover_ms = Some(w.now_ms);
        doc.last_reprotect_ms = None;
        write(out, doc);
        // Its address is withdrawn once the write holds (the next turn,
        // as primary): until then a dead primary's agent still sees this
        // spare as able to take over, and does not flag the VM lost.
        return;
    }

    if me_primary {
        primary_turn(w, v, child, out);
        return;
    }

    match (my_spare, child) {
        (Some(_), None) if d.phase != Phase::Finished && !matches!(d.phase, Phase::Lost { .. }) => {
            out.push(Action::StartSpare { vm })
        }
        (Some(_), Some(c)) if c.exited.is_some() => {
            out.push(Action::Forget { vm: vm.clone() });
            out.push(Action::Withdraw { vm });
        }
        (Some(_), Some(c)) => {
            if let Some(addr) = &c.listening {
                let published = w
                    .endpoints
                    .iter()
                    .any(|e| e.vm == vm && e.host == w.me && &e.addr == addr);
                if !published {
                    out.push(Action::Publish(Endpoint {
                        vm,
                        host: w.me.to_string(),
                        addr: addr.clone(),
                    }));
                }
            }
        }
        (None, Some(c)) if c.exited.is_some() => out.push(Action::Forget { vm }),
        // Not ours any more: a stale primary is killed (it must not say
        // goodbye: that would end the guest on its spares), a spare stops.
        (None, Some(c)) if c.runs_guest() => out.push(Action::Kill { vm }),
        (None, Some(_)) => {
            out.push(Action::Stop { vm: vm.clone() });
            out.push(Action::Withdraw { vm });
        }
        (_, None) => {}
    }
}

/// Withdraws this host's published standby address for `vm`, if it has one.
fn withdraw_mine(w: &World, vm: &str, out: &mut Vec<Action>) {
    if w.endpoints.iter().any(|e| e.vm == vm && e.host == w.me) {
        out.push(Action::Withdraw { vm: vm.to_string() });
    }
}

/// Whether a spare can take over `vm` from its ended primary `c`: one that
/// protected the guest when it ended (the primary's events: joined, and
/// not lost since) and still listens on a live host. A spare whose link
/// the primary dropped holds no usable state (the primary's farewell told
/// it so), and one whose host or standby is gone holds none at all.
fn a_spare_can_take_over(w: &World, vm: &str, c: &Child) -> bool {
    c.protected_by.iter().any(|addr| {
        w.endpoints
            .iter()
            .any(|e| e.vm == vm && &e.addr == addr && w.hosts.iter().any(|h| h.id == e.host))
    })
}

fn primary_turn(w: &World, v: &Versioned<VmDoc>, child: Option<&Child>, out: &mut Vec<Action>) {
    let d = &v.doc;
    let vm = d.spec.name.clone();
    let addr_of = |host: &str| {
        w.endpoints
            .iter()
            .find(|e| e.vm == vm && e.host == host)
            .map(|e| e.addr.clone())
    };
    let write = |out: &mut Vec<Action>, doc: VmDoc| {
        out.push(Action::Write {
            doc: Box::new(doc),
            expect: v.rev,
        })
    };
    let Some(c) = child else {
        // Never restart a primary: only a VM that has not run yet starts.
        if d.phase == Phase::Placed {
            let addrs: Vec<Option<String>> =
                d.assign.spares.iter().map(|s| addr_of(&s.host)).collect();
            if addrs.iter().all(Option::is_some) {
                let (mut sync, mut asynchronous) = (Vec::new(), Vec::new());
                for (s, a) in d.assign.spares.iter().zip(addrs.into_iter().flatten()) {
                    if s.role.synchronous() {
                        sync.push(a);
                    } else {
                        asynchronous.push(a);
                    }
                }
                out.push(Action::StartPrimary {
                    vm,
                    sync,
                    asynchronous,
                });
            }
        }
        return;
    };
    if let Some(code) = c.exited {
        if c.stopping {
            // Stopped on request (a stop, then maybe a start already):
            // nothing to record about the guest.
            out.push(Action::Forget { vm });
            return;
        }
        if code == Some(0) {
            out.push(Action::Forget { vm: vm.clone() });
            if d.phase != Phase::Finished {
                let mut doc = d.clone();
                doc.phase = Phase::Finished;
                write(out, doc);
            }
            return;
        }
        // The guest's primary died. Either a spare takes over (its agent
        // writes itself as primary, and this agent, no longer the
        // primary's, forgets the child), or none can and the VM is lost.
        // The child is kept until one of the two is written, so the
        // question is asked again every turn: a spare whose host dies
        // after the primary, before it took over, leaves the VM lost
        // once its lease expires, and a refused write is retried.
        if matches!(d.phase, Phase::Lost { .. }) {
            out.push(Action::Forget { vm });
        } else if !a_spare_can_take_over(w, &vm, c) {
            let how = code.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
            let why = if d.assign.spares.is_empty() {
                format!(
                    "its primary on {} ended ({how}) with no spare to take over",
                    w.me
                )
            } else {
                format!(
                    "its primary on {} ended ({how}) after its spares were lost: none held its state",
                    w.me
                )
            };
            let mut doc = d.clone();
            doc.phase = Phase::Lost { why };
            write(out, doc);
        }
        return;
    }
    if !c.runs_guest() {
        return;
    }
    // A spare that took over: its standby address goes, now that the
    // record names it primary.
    withdraw_mine(w, &vm, out);
    let mut doc = d.clone();
    let mut changed = false;
    if doc.phase == Phase::Placed {
        doc.phase = Phase::Running;
        changed = true;
    }
    if doc.failover_requested {
        doc.failover_requested = false;
        changed = true;
        out.push(Action::Kill { vm: vm.clone() });
    }
    // Re-protection: spares whose host is gone are replaced; a policy not
    // yet met is placed again.
    let live: Vec<&AssignedSpare> = d
        .assign
        .spares
        .iter()
        .filter(|s| w.hosts.iter().any(|h| h.id == s.host))
        .collect();
    if live.len() < d.assign.spares.len() || d.assign.spares.len() < d.spec.policy.spares as usize {
        let current = Current {
            primary: Some(w.me.to_string()),
            spares: live.iter().map(|s| s.host.clone()).collect(),
        };
        let views = host_views(w, &vm);
        if let Ok(plan) = placement::place(&views, d.spec.need(), &d.spec.policy, &current) {
            let spares = AssignedSpare::from_plan(&plan);
            if spares != d.assign.spares || plan.unmet != d.assign.unmet {
                doc.assign.gen += 1;
                doc.assign.spares = spares;
                doc.assign.unmet = plan.unmet;
                changed = true;
            }
        }
    }
    // Tell the replicator about assigned spares it lacks; forget lost ones
    // no longer assigned.
    let wanted: Vec<(String, bool)> = doc
        .assign
        .spares
        .iter()
        .filter_map(|s| addr_of(&s.host).map(|a| (a, s.role.synchronous())))
        .collect();
    for (addr, synchronous) in &wanted {
        if !c.spares.iter().any(|s| &s.addr == addr) {
            out.push(Action::AddSpare {
                vm: vm.clone(),
                addr: addr.clone(),
                synchronous: *synchronous,
            });
        }
    }
    for s in &c.spares {
        if !s.linked && !wanted.iter().any(|(a, _)| a == &s.addr) {
            out.push(Action::DropSpare {
                vm: vm.clone(),
                addr: s.addr.clone(),
            });
        }
    }
    // Protected again after a takeover: every assigned spare protects it.
    if let (Some(t), None) = (doc.last_takeover_ms, doc.last_reprotect_ms) {
        let all = wanted.len() == doc.assign.spares.len()
            && !wanted.is_empty()
            && wanted.iter().all(|(a, _)| c.protected_by.contains(a));
        if all {
            doc.last_reprotect_ms = Some(w.now_ms.saturating_sub(t));
            changed = true;
        }
    }
    if changed {
        write(out, doc);
    }
}

/// The live hosts as placement sees them, with what every other VM
/// already holds on them subtracted.
pub fn host_views(w: &World, except_vm: &str) -> Vec<HostView> {
    host_views_of(w.hosts, w.vms.iter().map(|v| &v.doc), except_vm)
}

/// `host_views` from any list of documents.
pub fn host_views_of<'a>(
    hosts: &[HostInfo],
    docs: impl Iterator<Item = &'a VmDoc>,
    except_vm: &str,
) -> Vec<HostView> {
    let mut views: Vec<HostView> = hosts
        .iter()
        .map(|h| HostView {
            id: h.id.clone(),
            rack: h.rack.clone(),
            site: h.site.clone(),
            free: h.capacity,
            groups: BTreeSet::new(),
        })
        .collect();
    for d in docs {
        if d.spec.name == except_vm
            || d.desired == Desired::Stopped
            || matches!(d.phase, Phase::Finished | Phase::Lost { .. })
        {
            continue;
        }
        let need = d.spec.need();
        let holders =
            std::iter::once(&d.assign.primary).chain(d.assign.spares.iter().map(|s| &s.host));
        for (i, host) in holders.enumerate() {
            if let Some(v) = views.iter_mut().find(|v| &v.id == host) {
                v.free.mem_mib = v.free.mem_mib.saturating_sub(need.mem_mib);
                v.free.vcpus = v.free.vcpus.saturating_sub(need.vcpus);
                v.free.disk_mib = v.free.disk_mib.saturating_sub(need.disk_mib);
                if i == 0 {
                    v.groups.extend(d.spec.policy.anti_affinity.iter().cloned());
                }
            }
        }
    }
    views
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
