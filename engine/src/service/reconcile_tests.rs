//! Reconciliation in memory: five agents (two racks of two hosts in site
//! a, one host in site b) share a store; children are simulated the way
//! the engine behaves (a killed primary's synchronous spare takes over and
//! keeps the others). Every test runs the agents to a fixed point, in
//! varying orders, and checks what the cluster did.

use super::*;
use crate::control::SpareStatus;
use crate::service::model::VmSpec;
use crate::service::placement::{Policy, Resources, Role};

fn host(id: &str, rack: &str, site: &str) -> HostInfo {
    HostInfo {
        id: id.into(),
        rack: rack.into(),
        site: site.into(),
        capacity: Resources {
            mem_mib: 4096,
            vcpus: 8,
            disk_mib: 0,
        },
        api: "127.0.0.1:1".parse().unwrap(),
        address: "127.0.0.1".parse().unwrap(),
    }
}

struct Sim {
    hosts: Vec<HostInfo>,
    vms: Vec<Versioned<VmDoc>>,
    endpoints: Vec<Endpoint>,
    children: BTreeMap<String, Vec<Child>>,
    rev: u64,
    now: u64,
    /// Every StartPrimary ever carried out: (vm, host).
    started: Vec<(String, String)>,
    writes_refused: usize,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            hosts: vec![
                host("a1-1", "a1", "a"),
                host("a1-2", "a1", "a"),
                host("a2-1", "a2", "a"),
                host("a2-2", "a2", "a"),
                host("b1-1", "b1", "b"),
            ],
            vms: Vec::new(),
            endpoints: Vec::new(),
            children: BTreeMap::new(),
            rev: 1,
            now: 1000,
            started: Vec::new(),
            writes_refused: 0,
        }
    }

    /// Creates a VM as the API does: placed, phase Placed.
    fn create(&mut self, name: &str, spares: u8, geo: bool) {
        let spec = VmSpec {
            name: name.into(),
            kernel: "/k".into(),
            mem_mib: 512,
            vcpus: 1,
            cmdline: String::new(),
            policy: Policy {
                spares,
                geo,
                anti_affinity: vec![],
            },
            disks: vec![],
            run: Default::default(),
        };
        let views = host_views_of(&self.hosts, self.vms.iter().map(|v| &v.doc), name);
        let plan =
            placement::place(&views, spec.need(), &spec.policy, &Current::default()).unwrap();
        self.rev += 1;
        self.vms.push(Versioned {
            doc: VmDoc::placed(spec, "o", &plan),
            rev: self.rev,
        });
    }

    fn doc(&self, name: &str) -> &VmDoc {
        &self
            .vms
            .iter()
            .find(|v| v.doc.spec.name == name)
            .unwrap()
            .doc
    }

    fn doc_mut(&mut self, name: &str) -> &mut VmDoc {
        &mut self
            .vms
            .iter_mut()
            .find(|v| v.doc.spec.name == name)
            .unwrap()
            .doc
    }

    fn addr(host: &str) -> String {
        format!("{host}:7100")
    }

    /// One turn of agent `me`; returns the actions it took.
    fn turn(&mut self, me: &str) -> Vec<Action> {
        if !self.hosts.iter().any(|h| h.id == me) {
            return Vec::new();
        }
        self.now += 7;
        // Children asked to stop end one turn later.
        for c in self.kids(me).iter_mut() {
            if c.stopping && c.exited.is_none() {
                c.exited = Some(Some(0));
            }
        }
        let kids = self.children.get(me).cloned().unwrap_or_default();
        let acts = reconcile(&World {
            me,
            hosts: &self.hosts,
            vms: &self.vms,
            endpoints: &self.endpoints,
            children: &kids,
            now_ms: self.now,
        });
        for a in &acts {
            self.apply(me, a);
        }
        acts
    }

    fn kids(&mut self, me: &str) -> &mut Vec<Child> {
        self.children.entry(me.to_string()).or_default()
    }

    fn apply(&mut self, me: &str, a: &Action) {
        let child = |vm: &str, kind| Child {
            vm: vm.into(),
            kind,
            exited: None,
            listening: None,
            took_over: false,
            spares: vec![],
            protected_by: BTreeSet::new(),
            stopping: false,
        };
        match a {
            Action::StartSpare { vm } => {
                let mut c = child(vm, ChildKind::Spare);
                c.listening = Some(Sim::addr(me));
                self.kids(me).push(c);
            }
            Action::StartPrimary {
                vm,
                sync,
                asynchronous,
            } => {
                self.started.push((vm.clone(), me.to_string()));
                let mut c = child(vm, ChildKind::Primary);
                for (a, s) in sync
                    .iter()
                    .map(|a| (a, true))
                    .chain(asynchronous.iter().map(|a| (a, false)))
                {
                    c.spares.push(SpareStatus {
                        addr: a.clone(),
                        synchronous: s,
                        linked: true,
                    });
                    c.protected_by.insert(a.clone());
                }
                self.kids(me).push(c);
            }
            Action::Publish(e) => {
                self.endpoints
                    .retain(|x| !(x.vm == e.vm && x.host == e.host));
                self.endpoints.push(e.clone());
            }
            Action::Withdraw { vm } => self.endpoints.retain(|x| !(&x.vm == vm && x.host == me)),
            Action::AddSpare {
                vm,
                addr,
                synchronous,
            } => {
                let linked = self.endpoints.iter().any(|e| &e.addr == addr);
                if let Some(c) = self.kids(me).iter_mut().find(|c| &c.vm == vm) {
                    c.spares.push(SpareStatus {
                        addr: addr.clone(),
                        synchronous: *synchronous,
                        linked,
                    });
                    if linked {
                        c.protected_by.insert(addr.clone());
                    }
                }
            }
            Action::DropSpare { vm, addr } => {
                if let Some(c) = self.kids(me).iter_mut().find(|c| &c.vm == vm) {
                    c.spares.retain(|s| &s.addr != addr);
                }
            }
            Action::Kill { vm } => self.kill(me, vm),
            Action::Stop { vm } => {
                if let Some(c) = self.kids(me).iter_mut().find(|c| &c.vm == vm) {
                    c.stopping = true;
                    // It exits on a later turn.
                }
            }
            Action::Forget { vm } => self.kids(me).retain(|c| &c.vm != vm),
            Action::Write { doc, expect } => {
                let v = self
                    .vms
                    .iter_mut()
                    .find(|v| v.doc.spec.name == doc.spec.name)
                    .unwrap();
                if v.rev == *expect {
                    self.rev += 1;
                    v.doc = (**doc).clone();
                    v.rev = self.rev;
                } else {
                    self.writes_refused += 1;
                }
            }
        }
    }

    /// SIGKILL of the VM's primary on `host`: as the engine does, its first
    /// linked synchronous spare takes over and keeps the others.
    fn kill(&mut self, host: &str, vm: &str) {
        let Some(c) = self
            .kids(host)
            .iter_mut()
            .find(|c| c.vm == vm && c.exited.is_none())
        else {
            return;
        };
        let runs = c.runs_guest();
        c.exited = Some(None);
        if !runs {
            return;
        }
        let spares = c.spares.clone();
        let winner = spares
            .iter()
            .filter(|s| s.synchronous && s.linked)
            .find_map(|s| {
                let h = s.addr.trim_end_matches(":7100").to_string();
                self.hosts.iter().any(|x| x.id == h).then_some(h)
            });
        if let Some(w) = winner {
            let me_addr = Sim::addr(&w);
            if let Some(k) = self
                .kids(&w)
                .iter_mut()
                .find(|c| c.vm == vm && c.exited.is_none())
            {
                k.took_over = true;
                k.spares = spares.into_iter().filter(|s| s.addr != me_addr).collect();
                // Only the spares still linked follow the new primary.
                k.protected_by = k
                    .spares
                    .iter()
                    .filter(|s| s.linked)
                    .map(|s| s.addr.clone())
                    .collect();
            }
        }
    }

    /// The VM's standby on `host` ends (its process dies): its agent sees
    /// the exit, and the primary loses the link (`SpareLost`).
    fn kill_spare(&mut self, host: &str, vm: &str) {
        if let Some(c) = self
            .kids(host)
            .iter_mut()
            .find(|c| c.vm == vm && c.exited.is_none())
        {
            c.exited = Some(None);
        }
        self.unlink(&Sim::addr(host));
    }

    /// Every primary loses its link to the spare at `addr`.
    fn unlink(&mut self, addr: &str) {
        for kids in self.children.values_mut() {
            for c in kids.iter_mut() {
                for s in c.spares.iter_mut().filter(|s| s.addr == addr) {
                    s.linked = false;
                }
                c.protected_by.remove(addr);
            }
        }
    }

    /// A host dies: its children, its lease (registry entry, endpoints).
    fn lose_host(&mut self, id: &str) {
        let vms: Vec<String> = self.kids(id).iter().map(|c| c.vm.clone()).collect();
        for vm in vms {
            self.kill(id, &vm);
        }
        self.children.remove(id);
        self.hosts.retain(|h| h.id != id);
        self.endpoints.retain(|e| e.host != id);
        // Spares on it lose their links at the primaries.
        self.unlink(&Sim::addr(id));
    }

    /// Runs every agent until nothing changes; `order` rotates who goes first.
    fn settle(&mut self, order: usize) {
        let ids: Vec<String> = self.hosts.iter().map(|h| h.id.clone()).collect();
        for round in 0..100 {
            let mut any = false;
            for i in 0..ids.len() {
                let me = &ids[(i + order + round) % ids.len()];
                let acts = self.turn(me);
                // A Publish/Write/AddSpare changes the world; anything else
                // is idle.
                any |= !acts.is_empty();
            }
            if !any {
                return;
            }
        }
        panic!("no fixed point after 100 rounds: {:?}", self.vms);
    }

    fn primary_host(&self, vm: &str) -> String {
        self.children
            .iter()
            .filter(|(_, k)| k.iter().any(|c| c.vm == vm && c.runs_guest()))
            .map(|(h, _)| h.clone())
            .next()
            .expect("a running primary")
    }

    fn site_rack(&self, id: &str) -> (String, String) {
        let h = self.hosts.iter().find(|h| h.id == id).unwrap();
        (h.site.clone(), h.rack.clone())
    }

    /// The VM runs once, protected by exactly its assigned spares, which
    /// follow the rack and site rules.
    fn check_protected(&self, vm: &str) {
        let d = self.doc(vm);
        let runners: Vec<_> = self
            .children
            .iter()
            .filter(|(_, k)| k.iter().any(|c| c.vm == vm && c.runs_guest()))
            .collect();
        assert_eq!(runners.len(), 1, "one running copy of {vm}: {runners:?}");
        let p = self.primary_host(vm);
        assert_eq!(d.assign.primary, p);
        assert_eq!(d.phase, Phase::Running);
        let prim = runners[0].1.iter().find(|c| c.vm == vm).unwrap();
        assert_eq!(
            d.assign.spares.len(),
            d.spec.policy.spares as usize,
            "{d:?}"
        );
        for s in &d.assign.spares {
            assert!(
                prim.protected_by.contains(&Sim::addr(&s.host)),
                "{s:?} not protecting: {prim:?}"
            );
            let (ps, pr) = self.site_rack(&p);
            let (ss, sr) = self.site_rack(&s.host);
            match s.role {
                Role::Rack if d.assign.unmet.is_empty() => assert!(ss == ps && sr != pr),
                Role::Geo if d.assign.unmet.is_empty() => assert_ne!(ss, ps),
                _ => {}
            }
        }
    }
}

/// A settled cluster running one VM, `web`, with one spare (agents taking
/// turns in `order`): the cluster, the primary's host, the spare's host.
fn web_with_one_spare(order: usize) -> (Sim, String, String) {
    let mut s = Sim::new();
    s.create("web", 1, false);
    s.settle(order);
    let p = s.primary_host("web");
    let spare = s.doc("web").assign.spares[0].host.clone();
    (s, p, spare)
}

#[test]
fn a_vm_starts_once_its_spares_listen_then_runs_protected() {
    for order in 0..5 {
        let mut s = Sim::new();
        s.create("web", 2, true);
        s.settle(order);
        s.check_protected("web");
        assert_eq!(s.started.len(), 1, "{:?}", s.started);
    }
}

#[test]
fn a_killed_primary_fails_over_and_is_reprotected_never_restarted() {
    for order in 0..5 {
        let mut s = Sim::new();
        s.create("web", 2, true);
        s.settle(order);
        let p = s.primary_host("web");
        s.kill(&p, "web");
        s.settle(order + 1);
        s.check_protected("web");
        let d = s.doc("web");
        assert_ne!(d.assign.primary, p);
        assert_eq!(d.failovers, 1);
        assert!(d.last_reprotect_ms.is_some(), "{d:?}");
        assert_eq!(
            s.started.len(),
            1,
            "a primary was started again: {:?}",
            s.started
        );
    }
}

#[test]
fn a_lost_rack_moves_the_vm_and_it_is_protected_again() {
    for order in 0..5 {
        let mut s = Sim::new();
        s.create("web", 2, true);
        s.settle(order);
        let (_, rack) = s.site_rack(&s.primary_host("web"));
        let lost: Vec<String> = s
            .hosts
            .iter()
            .filter(|h| h.rack == rack)
            .map(|h| h.id.clone())
            .collect();
        for h in &lost {
            s.lose_host(h);
        }
        s.settle(order);
        s.check_protected("web");
        let d = s.doc("web");
        // Site a has one rack left: the near spare shares it, flagged.
        assert!(!lost.contains(&d.assign.primary));
        assert!(
            d.assign
                .unmet
                .iter()
                .any(|u| matches!(u, placement::Unmet::NoOtherRack { .. })),
            "{d:?}"
        );
        assert_eq!(s.started.len(), 1);
    }
}

#[test]
fn a_lost_spare_host_is_replaced() {
    let mut s = Sim::new();
    s.create("web", 2, true);
    s.settle(0);
    let rack_spare = s.doc("web").assign.spares[0].host.clone();
    s.lose_host(&rack_spare);
    s.settle(1);
    s.check_protected("web");
    let d = s.doc("web");
    assert!(!d.assign.spares.iter().any(|x| x.host == rack_spare));
    // The dead spare was forgotten by the primary.
    let p = s.primary_host("web");
    let prim = s.children[&p].iter().find(|c| c.vm == "web").unwrap();
    assert!(!prim.spares.iter().any(|x| x.addr == Sim::addr(&rack_spare)));
}

#[test]
fn failover_on_request_and_stop_and_delete() {
    let mut s = Sim::new();
    s.create("web", 1, false);
    s.settle(0);
    let p = s.primary_host("web");
    s.doc_mut("web").failover_requested = true;
    s.settle(0);
    s.check_protected("web");
    assert_ne!(s.primary_host("web"), p);
    assert!(!s.doc("web").failover_requested);
    // Stopped: every copy stops, addresses withdrawn; started again: a
    // fresh start, protected.
    s.doc_mut("web").desired = Desired::Stopped;
    s.settle(0);
    assert!(
        s.children.values().all(|k| k.is_empty()),
        "{:?}",
        s.children
    );
    assert!(s.endpoints.is_empty(), "{:?}", s.endpoints);
    s.doc_mut("web").start_again();
    s.settle(1);
    s.check_protected("web");
    assert_eq!(s.started.len(), 2, "{:?}", s.started);
    // A start that comes while the stopped copies are still ending: they
    // end as stops (not the guest's end), and the VM starts afresh.
    s.doc_mut("web").desired = Desired::Stopped;
    let ids: Vec<String> = s.hosts.iter().map(|h| h.id.clone()).collect();
    for id in &ids {
        s.turn(id);
    }
    s.doc_mut("web").start_again();
    s.settle(2);
    s.check_protected("web");
    assert_eq!(s.started.len(), 3, "{:?}", s.started);
    // Deleted: every child stops and is forgotten.
    s.vms.clear();
    s.settle(0);
    assert!(
        s.children.values().all(|k| k.is_empty()),
        "{:?}",
        s.children
    );
}

#[test]
fn a_primary_with_no_spare_that_dies_is_lost_not_restarted() {
    let mut s = Sim::new();
    s.create("solo", 0, false);
    s.settle(0);
    let p = s.primary_host("solo");
    s.kill(&p, "solo");
    s.settle(0);
    assert!(matches!(s.doc("solo").phase, Phase::Lost { .. }));
    assert_eq!(s.started.len(), 1);
}

#[test]
fn a_primary_whose_spares_were_lost_first_is_lost_when_it_dies() {
    // Its spare's host dies, then the primary, before a new spare
    // protects the guest: no copy holds its state, so the VM is flagged
    // lost and nothing starts it again (that would fork the guest).
    for order in 0..5 {
        let (mut s, p, spare) = web_with_one_spare(order);
        s.lose_host(&spare);
        s.kill(&p, "web");
        s.settle(order);
        let d = s.doc("web");
        match &d.phase {
            Phase::Lost { why } => assert!(why.contains("spares were lost"), "{why}"),
            other => panic!("not lost: {other:?}"),
        }
        assert_eq!(s.started.len(), 1, "{:?}", s.started);
        assert!(
            !s.children.values().flatten().any(|c| c.runs_guest()),
            "{:?}",
            s.children
        );
    }
    // The same when the spare's process died on a live host: it joins again
    // only as a new spare, and the primary ended before that.
    let (mut s, p, spare) = web_with_one_spare(0);
    s.kill_spare(&spare, "web");
    s.kill(&p, "web");
    s.settle(0);
    assert!(
        matches!(s.doc("web").phase, Phase::Lost { .. }),
        "{:?}",
        s.doc("web")
    );
    assert_eq!(s.started.len(), 1);
}

#[test]
fn a_primary_dying_with_one_spare_left_fails_over_not_lost() {
    // Two synchronous spares; one is lost first, the other still
    // protects: it takes over, and the VM is protected again, never
    // flagged lost.
    for order in 0..5 {
        let mut s = Sim::new();
        s.create("web", 2, false);
        s.settle(order);
        assert!(s
            .doc("web")
            .assign
            .spares
            .iter()
            .all(|x| x.role.synchronous()));
        let p = s.primary_host("web");
        let first = s.doc("web").assign.spares[0].host.clone();
        s.kill_spare(&first, "web");
        s.kill(&p, "web");
        // The dead primary's agent goes first: it must not flag the VM
        // lost while a spare holds its state, even for a moment.
        s.turn(&p);
        assert!(
            !matches!(s.doc("web").phase, Phase::Lost { .. }),
            "{:?}",
            s.doc("web")
        );
        s.settle(order);
        s.check_protected("web");
        let d = s.doc("web");
        assert_ne!(d.assign.primary, p);
        assert_eq!(d.failovers, 1);
        assert_eq!(s.started.len(), 1, "{:?}", s.started);
    }
}

#[test]
fn a_spare_host_that_dies_unnoticed_leaves_the_vm_lost_once_its_lease_expires() {
    // The spare's host stops (its standby with it) just before the
    // primary dies: the primary never saw the link go, and the host's
    // lease still stands. The dead primary's agent waits while that spare
    // could still take over, then flags the VM lost when the lease
    // expires, without starting anything again.
    let (mut s, p, spare) = web_with_one_spare(0);
    for c in s.kids(&spare).iter_mut() {
        c.exited = Some(None);
    }
    s.kill(&p, "web");
    s.turn(&p);
    assert_eq!(s.doc("web").phase, Phase::Running, "decided too early");
    // The lease expires: the host, its endpoints and its children go.
    s.children.remove(&spare);
    s.hosts.retain(|h| h.id != spare);
    s.endpoints.retain(|e| e.host != spare);
    s.settle(0);
    assert!(
        matches!(s.doc("web").phase, Phase::Lost { .. }),
        "{:?}",
        s.doc("web")
    );
    assert_eq!(s.started.len(), 1, "{:?}", s.started);
    // The dead primary is forgotten once the flag holds.
    assert!(!s.children[&p].iter().any(|c| c.vm == "web"));
}

#[test]
fn a_takeover_whose_write_is_refused_keeps_its_address_until_it_holds() {
    // The spare took over, but its agent's write loses a race (another
    // write came between its read and its write). Its address must stay
    // published until the record names it primary: the dead primary's
    // agent, deciding in between, then still sees a spare that can take
    // over and does not flag the VM lost.
    let (mut s, p, spare) = web_with_one_spare(0);
    s.kill(&p, "web");
    let kids = s.children[&spare].clone();
    let acts = reconcile(&World {
        me: &spare,
        hosts: &s.hosts,
        vms: &s.vms,
        endpoints: &s.endpoints,
        children: &kids,
        now_ms: s.now,
    });
    assert!(
        acts.iter().any(|a| matches!(a, Action::Write { .. })),
        "{acts:?}"
    );
    // The race: the record changes before the write lands.
    s.rev += 1;
    s.vms[0].rev = s.rev;
    for a in &acts {
        s.apply(&spare, a);
    }
    assert_eq!(s.writes_refused, 1);
    s.turn(&p);
    assert!(
        !matches!(s.doc("web").phase, Phase::Lost { .. }),
        "{:?}",
        s.doc("web")
    );
    s.settle(0);
    assert_eq!(s.doc("web").assign.primary, spare);
    assert!(
        !s.endpoints.iter().any(|e| e.host == spare),
        "{:?}",
        s.endpoints
    );
    assert_eq!(s.started.len(), 1);
}
