//! Placement: the issue's topology by example, then the rules as
//! properties over random registries.

use super::*;
use proptest::prelude::*;

fn host(id: &str, site: &str, rack: &str, mem: u64) -> HostView {
    HostView {
        id: id.into(),
        rack: rack.into(),
        site: site.into(),
        free: Resources {
            mem_mib: mem,
            vcpus: 8,
            disk_mib: 0,
        },
        groups: BTreeSet::new(),
    }
}

/// Two racks of two hosts in site a, one host in site b.
fn cluster() -> Vec<HostView> {
    vec![
        host("a1-1", "a", "a1", 4096),
        host("a1-2", "a", "a1", 4096),
        host("a2-1", "a", "a2", 4096),
        host("a2-2", "a", "a2", 4096),
        host("b1-1", "b", "b1", 4096),
    ]
}

const NEED: Resources = Resources {
    mem_mib: 1024,
    vcpus: 1,
    disk_mib: 0,
};

fn geo2() -> Policy {
    Policy {
        spares: 2,
        geo: true,
        anti_affinity: vec![],
    }
}

fn site_rack<'a>(hosts: &'a [HostView], id: &str) -> (&'a str, &'a str) {
    let h = hosts.iter().find(|h| h.id == id).unwrap();
    (&h.site, &h.rack)
}

#[test]
fn two_spares_geo_go_to_the_other_rack_and_the_other_site() {
    let hosts = cluster();
    let plan = place(&hosts, NEED, &geo2(), &Current::default()).unwrap();
    assert!(!plan.degraded(), "{:?}", plan.unmet);
    let (psite, prack) = site_rack(&hosts, &plan.primary);
    assert_eq!(plan.spares.len(), 2);
    let (s0, r0) = site_rack(&hosts, &plan.spares[0].host);
    assert_eq!((plan.spares[0].role, s0), (Role::Rack, psite));
    assert_ne!(r0, prack);
    assert_eq!(plan.spares[1].role, Role::Geo);
    assert_ne!(site_rack(&hosts, &plan.spares[1].host).0, psite);
    assert!(!plan.spares[1].role.synchronous());
}

#[test]
fn after_a_takeover_the_survivors_stay_and_the_lost_role_is_refilled() {
    let hosts = cluster();
    let first = place(&hosts, NEED, &geo2(), &Current::default()).unwrap();
    // The primary's host dies; its rack spare took over.
    let alive: Vec<HostView> = hosts
        .iter()
        .filter(|h| h.id != first.primary)
        .cloned()
        .collect();
    let now = Current {
        primary: Some(first.spares[0].host.clone()),
        spares: vec![first.spares[1].host.clone()],
    };
    let plan = place(&alive, NEED, &geo2(), &now).unwrap();
    assert_eq!(plan.primary, first.spares[0].host);
    assert!(plan.primary_kept);
    let geo = plan.spares.iter().find(|s| s.role == Role::Geo).unwrap();
    assert_eq!(
        (geo.host.as_str(), geo.kept),
        (first.spares[1].host.as_str(), true)
    );
    let rack = plan.spares.iter().find(|s| s.role == Role::Rack).unwrap();
    assert!(!rack.kept);
    let (ps, pr) = site_rack(&alive, &plan.primary);
    let (rs, rr) = site_rack(&alive, &rack.host);
    assert_eq!(rs, ps);
    assert_ne!(rr, pr, "the new spare is on the other rack: {plan:?}");
}

#[test]
fn a_lost_rack_leaves_the_vm_running_degraded_and_saying_why() {
    let hosts = cluster();
    // Rack a1 is gone; the VM's primary runs on a2-1, geo spare on b1-1.
    let alive: Vec<HostView> = hosts.into_iter().filter(|h| h.rack != "a1").collect();
    let now = Current {
        primary: Some("a2-1".into()),
        spares: vec!["b1-1".into()],
    };
    let plan = place(&alive, NEED, &geo2(), &now).unwrap();
    assert!(plan.degraded());
    assert_eq!(
        plan.unmet,
        [Unmet::NoOtherRack {
            site: "a".into(),
            rack: "a2".into()
        }]
    );
    // The best it can do: the rack's other host.
    let rack = plan.spares.iter().find(|s| s.role == Role::Rack).unwrap();
    assert_eq!(rack.host, "a2-2");
    assert!(plan.unmet[0].to_string().contains("rack other than a2"));
}

#[test]
fn no_room_anywhere_refuses_the_primary_and_policies_are_checked() {
    let hosts = vec![host("h", "a", "r", 512)];
    let e = place(&hosts, NEED, &Policy::default(), &Current::default()).unwrap_err();
    assert!(e.to_string().contains("1024 MiB"), "{e}");
    let bad = Policy {
        spares: 1,
        geo: true,
        anti_affinity: vec![],
    };
    let e = place(&cluster(), NEED, &bad, &Current::default()).unwrap_err();
    assert!(
        e.to_string().contains("geo = true needs spares >= 2"),
        "{e}"
    );
    let many = Policy {
        spares: MAX_SPARES + 1,
        ..Policy::default()
    };
    assert!(matches!(
        place(&cluster(), NEED, &many, &Current::default()),
        Err(PlaceError::Policy(_))
    ));
}

#[test]
fn anti_affinity_avoids_a_groups_primary_host() {
    let mut hosts = cluster();
    // The roomiest host already runs a primary of group "db".
    hosts[0].free.mem_mib = 8192;
    hosts[0].groups.insert("db".into());
    let pol = Policy {
        spares: 1,
        geo: false,
        anti_affinity: vec!["db".into()],
    };
    let plan = place(&hosts, NEED, &pol, &Current::default()).unwrap();
    assert_ne!(plan.primary, hosts[0].id);
    assert!(!plan.degraded());
    // Only that host has room: placed there, flagged.
    let only = vec![hosts[0].clone()];
    let plan = place(&only, NEED, &pol, &Current::default()).unwrap();
    assert!(matches!(plan.unmet[0], Unmet::AntiAffinity { .. }));
    assert!(plan.unmet.contains(&Unmet::NoHost { role: Role::Rack }));
}

// ---- properties ----

fn arb_hosts() -> impl Strategy<Value = Vec<HostView>> {
    prop::collection::vec(
        (
            0..3usize,
            0..3usize,
            prop::sample::select(vec![0u64, 512, 1024, 4096]),
            0..4u32,
            any::<bool>(),
        ),
        0..9,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (site, rack, mem, vcpus, g))| HostView {
                id: format!("h{i}"),
                site: format!("s{site}"),
                rack: format!("s{site}r{rack}"),
                free: Resources {
                    mem_mib: mem,
                    vcpus,
                    disk_mib: 0,
                },
                groups: if g {
                    BTreeSet::from(["g".to_string()])
                } else {
                    BTreeSet::new()
                },
            })
            .collect()
    })
}

fn arb_case() -> impl Strategy<Value = (Vec<HostView>, Resources, Policy, Current)> {
    (
        arb_hosts(),
        prop::sample::select(vec![256u64, 1024]),
        1..3u32,
        0..5u8,
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0..10usize),
        prop::collection::vec(0..10usize, 0..4),
    )
        .prop_map(|(hosts, mem, vcpus, spares, geo, aff, p, s)| {
            let policy = Policy {
                spares,
                geo: geo && spares >= 2,
                anti_affinity: if aff { vec!["g".into()] } else { vec![] },
            };
            // Ids up to h9: some name hosts that are gone.
            let current = Current {
                primary: p.map(|i| format!("h{i}")),
                spares: s.into_iter().map(|i| format!("h{i}")).collect(),
            };
            (
                hosts,
                Resources {
                    mem_mib: mem,
                    vcpus,
                    disk_mib: 0,
                },
                policy,
                current,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn placement_rules_hold((hosts, need, policy, current) in arb_case()) {
        let by = |id: &str| hosts.iter().find(|h| h.id == id);
        let live_primary = current.primary.as_deref().and_then(by);
        let res = place(&hosts, need, &policy, &current);
        let plan = match res {
            Err(PlaceError::NoPrimaryHost { .. }) => {
                // Only when nothing is kept and nothing has room.
                prop_assert!(live_primary.is_none());
                prop_assert!(hosts.iter().all(|h| !h.free.fits(&need)));
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            Ok(p) => p,
        };
        let p = by(&plan.primary).expect("the primary is a live host");
        // What exists is kept.
        if let Some(lp) = live_primary {
            prop_assert_eq!(&plan.primary, &lp.id);
            prop_assert!(plan.primary_kept);
        } else {
            prop_assert!(!plan.primary_kept);
            prop_assert!(p.free.fits(&need), "a new primary fits");
        }
        for s in &current.spares {
            if by(s).is_some() && *s != plan.primary {
                prop_assert!(
                    plan.spares.iter().any(|x| &x.host == s && x.kept)
                        || plan.surplus.contains(s),
                    "live spare {} dropped", s
                );
            }
        }
        // Never co-located, every copy on a live host, new ones with room.
        let mut all: Vec<&str> = vec![&plan.primary];
        for s in &plan.spares {
            let h = by(&s.host).expect("spares are live hosts");
            prop_assert!(s.kept || h.free.fits(&need), "{} lacks room", s.host);
            all.push(&s.host);
        }
        let n = all.len();
        all.sort();
        all.dedup();
        prop_assert_eq!(all.len(), n, "two copies on one host: {:?}", plan);
        prop_assert!(plan.spares.len() <= policy.spares as usize);
        if plan.spares.len() < policy.spares as usize {
            prop_assert!(plan.unmet.iter().any(|u| matches!(u, Unmet::NoHost { .. })), "unmet: {:?}", plan.unmet);
        }
        // Only a geo spare is asynchronous, and only with geo.
        let geos = plan.spares.iter().filter(|s| s.role == Role::Geo).count();
        prop_assert!(geos <= usize::from(policy.geo));
        // The rack rule: a new rack spare is on another rack of the
        // primary's site unless NoOtherRack says there was none to take.
        let taken: Vec<&str> = std::iter::once(plan.primary.as_str())
            .chain(plan.spares.iter().filter(|s| s.kept).map(|s| s.host.as_str()))
            .collect();
        let other_rack = |h: &HostView| h.site == p.site && h.rack != p.rack;
        if let Some(r) = plan.spares.iter().find(|s| s.role == Role::Rack && !s.kept) {
            let h = by(&r.host).unwrap();
            let flagged = plan.unmet.iter().any(|u| matches!(u, Unmet::NoOtherRack { .. }));
            prop_assert_eq!(other_rack(h), !flagged);
            if flagged {
                prop_assert!(hosts.iter().all(|h| !other_rack(h)
                    || !h.free.fits(&need)
                    || taken.contains(&h.id.as_str())));
            }
        }
        // The site rule, likewise.
        if let Some(g) = plan.spares.iter().find(|s| s.role == Role::Geo && !s.kept) {
            let h = by(&g.host).unwrap();
            let flagged = plan.unmet.iter().any(|u| matches!(u, Unmet::NoOtherSite { .. }));
            prop_assert_eq!(h.site != p.site, !flagged);
            if flagged {
                prop_assert!(hosts.iter().all(|h| h.site == p.site
                    || !h.free.fits(&need)
                    || all.contains(&h.id.as_str())));
            }
        }
        // Anti-affinity: a new primary shares no group unless flagged.
        if !plan.primary_kept && policy.anti_affinity.iter().any(|g| p.groups.contains(g)) {
            prop_assert!(plan.unmet.iter().any(|u| matches!(u, Unmet::AntiAffinity { .. })), "unmet: {:?}", plan.unmet);
        }
        // Every agent computes the same plan, whatever order it lists hosts in.
        let mut rev = hosts.clone();
        rev.reverse();
        prop_assert_eq!(place(&rev, need, &policy, &current).unwrap(), plan);
    }
}

#[test]
fn disk_space_is_capacity_too() {
    let mut hosts = cluster();
    for (i, h) in hosts.iter_mut().enumerate() {
        // Only a1-2 and a2-2 offer disk space.
        h.free.disk_mib = if i % 2 == 1 { 10_240 } else { 0 };
    }
    let need = Resources {
        disk_mib: 4096,
        ..NEED
    };
    let pol = Policy {
        spares: 1,
        geo: false,
        anti_affinity: vec![],
    };
    let plan = place(&hosts, need, &pol, &Current::default()).unwrap();
    let mut used: Vec<&str> = vec![&plan.primary];
    used.extend(plan.spares.iter().map(|s| s.host.as_str()));
    used.sort();
    assert_eq!(used, ["a1-2", "a2-2"], "{plan:?}");
    let e = place(&hosts[..1], need, &pol, &Current::default()).unwrap_err();
    assert!(e.to_string().contains("4096 MiB of disk"), "{e}");
}
