//! Placement: which hosts run a VM's primary and spares. A pure function
//! of the host registry, the VM's needs and policy, and what the VM has
//! now; no sockets, no clocks, so every agent computes the same plan and
//! the rules are property-tested (`placement_tests.rs`). Design:
//! `docs/service.md#placement`.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Most spares a policy may ask for.
pub const MAX_SPARES: u8 = 8;

/// Memory and vCPUs: a host's capacity, what is free on it, or a VM's need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory, MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Disk space for images, MiB (a host that offers none takes no VM
    /// with disks).
    #[serde(default)]
    pub disk_mib: u64,
}

impl Resources {
    /// Whether `need` fits in `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        self.mem_mib >= need.mem_mib && self.vcpus >= need.vcpus && self.disk_mib >= need.disk_mib
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB and {} vCPUs", self.mem_mib, self.vcpus)?;
        if self.disk_mib > 0 {
            write!(f, " and {} MiB of disk", self.disk_mib)?;
        }
        Ok(())
    }
}

/// A live host, as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    /// The host's id.
    pub id: String,
    /// Its rack.
    pub rack: String,
    /// Its site.
    pub site: String,
    /// What is free on it (capacity minus the copies it already holds).
    pub free: Resources,
    /// Anti-affinity groups of the primaries it runs.
    pub groups: BTreeSet<String>,
}

/// How a VM wants to be protected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How many spares (0: unprotected).
    pub spares: u8,
    /// The last spare goes to another site (asynchronous).
    #[serde(default)]
    pub geo: bool,
    /// VMs sharing a group never share a primary's host.
    #[serde(default)]
    pub anti_affinity: Vec<String>,
}

impl Policy {
    /// Checks the policy on its own; the message names what is wrong.
    pub fn validate(&self) -> Result<(), PlaceError> {
        if self.spares > MAX_SPARES {
            return Err(PlaceError::Policy(format!(
                "spares = {} is more than the {MAX_SPARES} supported",
                self.spares
            )));
        }
        if self.geo && self.spares < 2 {
            return Err(PlaceError::Policy(format!(
                "geo = true needs spares >= 2 (the first spare is the neighbouring rack's, the last the other site's); spares = {}",
                self.spares
            )));
        }
        if let Some(g) = self.anti_affinity.iter().find(|g| g.is_empty()) {
            return Err(PlaceError::Policy(format!(
                "an empty anti-affinity group name ({g:?})"
            )));
        }
        Ok(())
    }
}

/// What a VM has now: the hosts of its live primary and live spares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// Its primary's host, if it runs.
    pub primary: Option<String>,
    /// Its live spares' hosts.
    pub spares: Vec<String>,
}

/// Why a spare is where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The first spare: another rack of the primary's site (synchronous).
    Rack,
    /// A further synchronous spare.
    Extra,
    /// The distant spare: another site (asynchronous).
    Geo,
}

impl Role {
    /// Whether this spare gates output (all but the geo spare).
    pub fn synchronous(self) -> bool {
        self != Role::Geo
    }
}

/// One spare of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSpare {
    /// Its host.
    pub host: String,
    /// Its role.
    pub role: Role,
    /// Whether the VM already has it (`false`: it must be placed and seeded).
    pub kept: bool,
}

/// A rule the plan could not meet (the VM runs degraded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "unmet", rename_all = "snake_case")]
pub enum Unmet {
    /// No host on another rack of the primary's site had room.
    NoOtherRack {
        /// The primary's site.
        site: String,
        /// The primary's rack.
        rack: String,
    },
    /// No host in another site had room.
    NoOtherSite {
        /// The primary's site.
        site: String,
    },
    /// No host at all had room for this spare.
    NoHost {
        /// The spare's role.
        role: Role,
    },
    /// Every host with room runs a primary of one of the VM's groups.
    AntiAffinity {
        /// The VM's groups.
        groups: Vec<String>,
    },
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::NoOtherRack { site, rack } => write!(
                f,
                "no host with room on a rack other than {rack} in site {site}: the first spare shares the primary's rack or site"
            ),
            Unmet::NoOtherSite { site } => write!(
                f,
                "no host with room outside site {site}: the geo spare is in the primary's site"
            ),
            Unmet::NoHost { role } => write!(f, "no host with room for a {role:?} spare"),
            Unmet::AntiAffinity { groups } => write!(
                f,
                "every host with room runs a primary of anti-affinity groups {groups:?}"
            ),
        }
    }
}

/// Where a VM's copies go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The primary's host.
    pub primary: String,
    /// Whether it is the VM's running primary (`false`: start it there).
    pub primary_kept: bool,
    /// The spares, in role order (rack, extras, geo).
    pub spares: Vec<PlannedSpare>,
    /// Live spares beyond what the policy asks for.
    pub surplus: Vec<String>,
    /// The rules not met.
    pub unmet: Vec<Unmet>,
}

impl Plan {
    /// Whether every rule was met.
    pub fn degraded(&self) -> bool {
        !self.unmet.is_empty()
    }
}

/// Why no plan could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// The policy itself is invalid.
    #[error("invalid protection policy: {0}")]
    Policy(String),
    /// No live host can run the primary.
    #[error("no live host has {need} free for the primary ({hosts} live hosts)")]
    NoPrimaryHost {
        /// The VM's need.
        need: Resources,
        /// How many hosts were live.
        hosts: usize,
    },
}

/// Places a VM: keeps its live copies, fills its spares by the rules of
/// `docs/service.md#placement`.
pub fn place(
    hosts: &[HostView],
    need: Resources,
    policy: &Policy,
    current: &Current,
) -> Result<Plan, PlaceError> {
    policy.validate()?;
    let mut unmet = Vec::new();
    let find = |id: &str| hosts.iter().find(|h| h.id == id);
    let (primary, primary_kept) = match current.primary.as_deref().and_then(find) {
        Some(h) => (h, true),
        None => {
            let room: Vec<&HostView> = sorted(hosts.iter().filter(|h| h.free.fits(&need)));
            let clear = room
                .iter()
                .find(|h| policy.anti_affinity.iter().all(|g| !h.groups.contains(g)));
            match (clear, room.first()) {
                (Some(h), _) => (*h, false),
                (None, Some(h)) => {
                    unmet.push(Unmet::AntiAffinity {
                        groups: policy.anti_affinity.clone(),
                    });
                    (*h, false)
                }
                (None, None) => {
                    return Err(PlaceError::NoPrimaryHost {
                        need,
                        hosts: hosts.len(),
                    })
                }
            }
        }
    };
    let mut used: BTreeSet<&str> = BTreeSet::from([primary.id.as_str()]);

    // The slots the policy asks for.
    let n = policy.spares as usize;
    let mut slots: Vec<(Role, Option<PlannedSpare>)> = (0..n)
        .map(|i| {
            let role = if policy.geo && i + 1 == n {
                Role::Geo
            } else if i == 0 {
                Role::Rack
            } else {
                Role::Extra
            };
            (role, None)
        })
        .collect();

    // Keep live spares: each goes to the slot its position fits best.
    let mut live: Vec<&HostView> = Vec::new();
    for id in &current.spares {
        if let Some(h) = find(id) {
            if !used.contains(h.id.as_str()) {
                used.insert(&h.id);
                live.push(h);
            }
        }
    }
    let mut surplus = Vec::new();
    for h in live {
        let fits = |role: Role| match role {
            Role::Geo => h.site != primary.site,
            Role::Rack => h.site == primary.site && h.rack != primary.rack,
            Role::Extra => h.site == primary.site,
        };
        // A spare that fits a slot's rule takes it; otherwise any free
        // slot but the geo one (a near spare must not pose as distant).
        let slot = [Role::Geo, Role::Rack, Role::Extra]
            .into_iter()
            .find_map(|r| {
                slots
                    .iter()
                    .position(|(role, s)| *role == r && s.is_none() && fits(r))
            })
            .or_else(|| {
                slots
                    .iter()
                    .position(|(role, s)| s.is_none() && *role != Role::Geo)
            });
        match slot {
            Some(i) => {
                slots[i].1 = Some(PlannedSpare {
                    host: h.id.clone(),
                    role: slots[i].0,
                    kept: true,
                })
            }
            None => surplus.push(h.id.clone()),
        }
    }

    // Fill the empty slots: the rack spare first, then the geo spare (so
    // an extra spare never takes the only host of another site), then the
    // extras.
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| match slots[i].0 {
        Role::Rack => 0,
        Role::Geo => 1,
        Role::Extra => 2,
    });
    for i in order {
        if slots[i].1.is_some() {
            continue;
        }
        let role = slots[i].0;
        let pick = {
            let used_racks: BTreeSet<(&str, &str)> = used
                .iter()
                .filter_map(|id| find(id))
                .map(|h| (h.site.as_str(), h.rack.as_str()))
                .collect();
            let used_sites: BTreeSet<&str> = used
                .iter()
                .filter_map(|id| find(id))
                .map(|h| h.site.as_str())
                .collect();
            let room: Vec<&HostView> = sorted(
                hosts
                    .iter()
                    .filter(|h| !used.contains(h.id.as_str()) && h.free.fits(&need)),
            );
            let first = |p: &dyn Fn(&HostView) -> bool| room.iter().copied().find(|h| p(h));
            let same_site = |h: &HostView| h.site == primary.site;
            let other_rack = |h: &HostView| same_site(h) && h.rack != primary.rack;
            let new_rack = |h: &HostView| {
                same_site(h) && !used_racks.contains(&(h.site.as_str(), h.rack.as_str()))
            };
            match role {
                Role::Rack => {
                    match first(&|h| new_rack(h) && other_rack(h)).or_else(|| first(&other_rack)) {
                        Some(h) => Some(h),
                        None => {
                            unmet.push(Unmet::NoOtherRack {
                                site: primary.site.clone(),
                                rack: primary.rack.clone(),
                            });
                            first(&same_site).or_else(|| first(&|_| true))
                        }
                    }
                }
                Role::Extra => first(&new_rack)
                    .or_else(|| first(&same_site))
                    .or_else(|| first(&|_| true)),
                Role::Geo => {
                    match first(&|h| !used_sites.contains(h.site.as_str()))
                        .or_else(|| first(&|h| !same_site(h)))
                    {
                        Some(h) => Some(h),
                        None => {
                            unmet.push(Unmet::NoOtherSite {
                                site: primary.site.clone(),
                            });
                            first(&new_rack).or_else(|| first(&|_| true))
                        }
                    }
                }
            }
        };
        match pick {
            Some(h) => {
                used.insert(&h.id);
                slots[i].1 = Some(PlannedSpare {
                    host: h.id.clone(),
                    role,
                    kept: false,
                });
            }
            None => unmet.push(Unmet::NoHost { role }),
        }
    }
    Ok(Plan {
        primary: primary.id.clone(),
        primary_kept,
        spares: slots.into_iter().filter_map(|(_, s)| s).collect(),
        surplus,
        unmet,
    })
}

/// Hosts by preference: most free memory, then most free vCPUs, then id.
fn sorted<'a>(hosts: impl Iterator<Item = &'a HostView>) -> Vec<&'a HostView> {
    let mut v: Vec<&HostView> = hosts.collect();
    v.sort_by(|a, b| {
        b.free
            .mem_mib
            .cmp(&a.free.mem_mib)
            .then(b.free.vcpus.cmp(&a.free.vcpus))
            .then(a.id.cmp(&b.id))
    });
    v
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
