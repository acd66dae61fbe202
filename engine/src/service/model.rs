//! What the registry holds (JSON values in etcd) and how the API names it.
//! Keys, under the configured prefix:
//!
//! | key | value | lifetime |
//! | --- | --- | --- |
//! | `hosts/<host>` | [`HostInfo`] | the host's lease |
//! | `vms/<vm>` | [`VmDoc`] | until deleted |
//! | `endpoints/<vm>/<host>` | [`Endpoint`] | the host's lease |
//! | `status/<vm>` | [`VmStatus`] | the primary's host's lease |
//! | `tokens/<sha256>` | [`TokenRecord`] | until deleted |
//! | `vm/<vm>` | the fencing record (`replication/arbiter`) | until deleted |

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::placement::{Plan, Policy, Resources, Role, Unmet};

/// A host, as its agent registers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Unique id.
    pub id: String,
    /// Its rack.
    pub rack: String,
    /// Its site.
    pub site: String,
    /// What it offers.
    pub capacity: Resources,
    /// Its agent's API.
    pub api: SocketAddr,
    /// Where its standbys listen.
    pub address: IpAddr,
}

/// A VM as created through the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Its name (the arbiter's VM id): letters, digits, '-', '_'.
    pub name: String,
    /// The guest kernel (a path on every host).
    pub kernel: PathBuf,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// vCPUs.
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// How it is protected.
    pub policy: Policy,
    /// Its disks: each copy gets a sparse raw image of this size, the
    /// primary's the VM's disk, a spare's its replica (seeded live).
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Further `hotspare run` options by long name (`"interval-ms": 20`),
    /// checked by the same parser as the command line.
    #[serde(default)]
    pub run: BTreeMap<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// Most disks a VM may have.
pub const MAX_DISKS: usize = 8;

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Its size, MiB.
    pub size_mib: u64,
}

impl VmSpec {
    /// What one copy needs on a host.
    pub fn need(&self) -> Resources {
        Resources {
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            disk_mib: self.disk_sizes().iter().sum(),
        }
    }

    /// Its disks' sizes, MiB.
    pub fn disk_sizes(&self) -> Vec<u64> {
        self.disks.iter().map(|d| d.size_mib).collect()
    }

    /// `run` as command-line arguments (`true`: a bare flag; a list:
    /// the flag repeated).
    pub fn run_args(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for (k, v) in &self.run {
            if k.is_empty()
                || k.starts_with('-')
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(format!(
                    "run option {k:?}: use the long option's name without dashes"
                ));
            }
            let mut one = |v: &serde_json::Value| -> Result<(), String> {
                match v {
                    serde_json::Value::Bool(true) => out.push(format!("--{k}")),
                    serde_json::Value::Bool(false) => {}
                    serde_json::Value::Number(n) => out.extend([format!("--{k}"), n.to_string()]),
                    serde_json::Value::String(s) => out.extend([format!("--{k}"), s.clone()]),
                    other => {
                        return Err(format!(
                            "run option {k:?}: {other} is not a flag, number or string"
                        ))
                    }
                }
                Ok(())
            };
            match v {
                serde_json::Value::Array(items) => items.iter().try_for_each(&mut one)?,
                v => one(v)?,
            }
        }
        Ok(out)
    }

    /// Checks what can be checked without the CLI's parser.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "name {:?}: 1 to 64 letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.mem_mib == 0 || !self.mem_mib.is_multiple_of(2) {
            return Err(format!(
                "mem_mib {}: a positive multiple of 2",
                self.mem_mib
            ));
        }
        if self.vcpus == 0 || self.vcpus > 64 {
            return Err(format!("vcpus {}: between 1 and 64", self.vcpus));
        }
        if !self.kernel.is_absolute() {
            return Err(format!(
                "kernel {}: an absolute path (on every host)",
                self.kernel.display()
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(format!("{} disks: at most {MAX_DISKS}", self.disks.len()));
        }
        if let Some((i, d)) = self
            .disks
            .iter()
            .enumerate()
            .find(|(_, d)| d.size_mib == 0 || d.size_mib > 1 << 20)
        {
            return Err(format!(
                "disks[{i}].size_mib {}: between 1 and 1048576 (1 TiB)",
                d.size_mib
            ));
        }
        if self.run.keys().any(|k| k == "disk") {
            return Err(
                "run option \"disk\": give disks as \"disks\" (each copy gets its own image)"
                    .into(),
            );
        }
        self.policy.validate().map_err(|e| e.to_string())?;
        self.run_args().map(|_| ())
    }
}

/// One spare of an assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedSpare {
    /// Its host.
    pub host: String,
    /// Its role.
    pub role: Role,
}

/// Which hosts run the VM's copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Bumped by every change.
    pub gen: u64,
    /// The primary's host.
    pub primary: String,
    /// The spares' hosts.
    pub spares: Vec<AssignedSpare>,
    /// Rules placement could not meet (the VM is degraded).
    pub unmet: Vec<Unmet>,
}

impl AssignedSpare {
    /// A plan's spares as assigned.
    pub fn from_plan(plan: &Plan) -> Vec<AssignedSpare> {
        plan.spares
            .iter()
            .map(|s| AssignedSpare {
                host: s.host.clone(),
                role: s.role,
            })
            .collect()
    }
}

/// What an operator wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Run and protect it.
    Running,
    /// Stop every copy.
    Stopped,
}

/// Where a VM is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Placed; the primary waits for its spares.
    Placed,
    /// The guest runs.
    Running,
    /// The guest ended on its own.
    Finished,
    /// No copy can run it (its primary died with no spare to take over).
    Lost {
        /// Why.
        why: String,
    },
}

/// A VM's document in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDoc {
    /// As created.
    pub spec: VmSpec,
    /// The token name that created it.
    pub owner: String,
    /// What the operator wants.
    pub desired: Desired,
    /// Where its copies run.
    pub assign: Assignment,
    /// Where it is.
    pub phase: Phase,
    /// Takeovers so far.
    #[serde(default)]
    pub failovers: u64,
    /// An operator asked for a failover (the primary's agent stops its VMM).
    #[serde(default)]
    pub failover_requested: bool,
    /// The last takeover, ms since the Unix epoch.
    #[serde(default)]
    pub last_takeover_ms: Option<u64>,
    /// Time from that takeover until every spare it lost was replaced and
    /// protecting, ms.
    #[serde(default)]
    pub last_reprotect_ms: Option<u64>,
}

/// What the agent running a VM's primary publishes about it (under its
/// host's lease, refreshed when it changes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The primary's host.
    pub host: String,
    /// Its term.
    pub term: u64,
    /// Epochs it captured.
    pub epochs: u64,
    /// Spares protecting it now.
    pub spares: Vec<String>,
    /// How many epochs the furthest asynchronous spare lags.
    pub async_lag: Option<u64>,
}

impl VmDoc {
    /// A stopped VM asked to run again: it starts afresh from its
    /// placement, once its stopping copies have ended.
    pub fn start_again(&mut self) {
        self.desired = Desired::Running;
        self.phase = Phase::Placed;
    }

    /// A new VM owned by `owner`, placed by `plan`, waiting to start.
    pub fn placed(spec: VmSpec, owner: &str, plan: &Plan) -> VmDoc {
        VmDoc {
            spec,
            owner: owner.to_string(),
            desired: Desired::Running,
            assign: Assignment {
                gen: 1,
                primary: plan.primary.clone(),
                spares: AssignedSpare::from_plan(plan),
                unmet: plan.unmet.clone(),
            },
            phase: Phase::Placed,
            failovers: 0,
            failover_requested: false,
            last_takeover_ms: None,
            last_reprotect_ms: None,
        }
    }
}

/// What a copy's agent publishes about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The VM.
    pub vm: String,
    /// The host.
    pub host: String,
    /// Where its standby listens (`IP:PORT`).
    pub addr: String,
}

/// Who a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessRole {
    /// Reads.
    Viewer,
    /// Manages its own VMs.
    Operator,
    /// Everything.
    Admin,
}

/// A token's record (the key is its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The name it acts as (the owner of what it creates).
    pub name: String,
    /// Its role.
    pub role: AccessRole,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        serde_json::from_str(
            r#"{"name":"web-1","kernel":"/g/memtest.elf","mem_mib":128,
                "policy":{"spares":2,"geo":true},
                "run":{"interval-ms":20,"pin":true,"verify-memory":false,"net":["tap=a","tap=b"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn run_options_become_arguments() {
        assert_eq!(
            spec().run_args().unwrap(),
            [
                "--interval-ms",
                "20",
                "--net",
                "tap=a",
                "--net",
                "tap=b",
                "--pin"
            ]
        );
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn bad_specs_are_named() {
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.name = "a b".into()), "name"),
            (Box::new(|s| s.mem_mib = 127), "mem_mib"),
            (Box::new(|s| s.vcpus = 0), "vcpus"),
            (Box::new(|s| s.kernel = "rel/x".into()), "absolute"),
            (Box::new(|s| s.policy.spares = 1), "geo"),
            (
                Box::new(|s| s.disks = vec![DiskSpec { size_mib: 0 }]),
                "disks[0].size_mib 0",
            ),
            (
                Box::new(|s| {
                    s.run.insert("disk".into(), serde_json::json!("/x.img"));
                }),
                "give disks as",
            ),
            (
                Box::new(|s| {
                    s.run.insert("--x".into(), serde_json::json!(1));
                }),
                "without dashes",
            ),
            (
                Box::new(|s| {
                    s.run.insert("x".into(), serde_json::json!({"a":1}));
                }),
                "not a flag",
            ),
        ];
        for (f, what) in cases {
            let mut s = spec();
            f(&mut s);
            let e = s.validate().unwrap_err();
            assert!(e.contains(what), "{e:?} lacks {what:?}");
        }
        assert!(serde_json::from_str::<VmSpec>(
            r#"{"name":"x","kernel":"/k","mem_mib":2,"policy":{"spares":0},"bogus":1}"#
        )
        .is_err());
    }
}
