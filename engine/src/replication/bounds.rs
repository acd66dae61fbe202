//! What a standby accepts from a primary, decided before it allocates
//! anything for it (`docs/protocol.md`, "Bounds").
//!
//! - **The VM shape.** A primary announces its VM in the `Config` section
//!   of its first full epoch. The memory and vCPUs must fit this standby's
//!   caps (`--max-mem-mib`, `--max-vcpus`), and the disks must be exactly
//!   the size of its replicas (`--disk`). The shape is checked as soon as
//!   those bytes arrive, before the rest of the epoch is staged
//!   ([`Admission::data`]), and again before the shadow's memory is
//!   created ([`Policy::check_shape`]).
//! - **Staging.** One epoch may stage at most the announced VM plus
//!   headroom. Before the VM is known, the limit is the caps plus headroom
//!   ([`Policy::staging_limit`]).
//! - **Arithmetic.** Every size taken from the network is added and
//!   multiplied with checks. An overflow is a refusal, never a wrap or a
//!   panic.
//!
//! No sockets, no VM: the stream thread and the commit call it, and the
//! tests run it in memory (like `liveness.rs`).

use std::fmt;
use std::path::PathBuf;

use checkpoint::fingerprint::MachineConfig;
use checkpoint::format::{CheckpointKind, CheckpointReader, Limits, SectionId, HEADER_LEN};
use checkpoint::CheckpointError;

use crate::vm::MAX_VCPUS;

const MIB: u64 = 1 << 20;

/// The largest `Config` section a standby reads ahead of the rest of an
/// epoch. A machine configuration is a few KiB (regions, CPUID, disks).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The headroom of an epoch over the VM's memory and disks: record
/// headers, and vCPU, VM and device state.
const HEADROOM: u64 = 64 << 20;

/// A cap, and whether the operator set it (a refusal names the option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap<T> {
    /// The largest value accepted.
    pub value: T,
    /// Given on the command line (else the default).
    pub set: bool,
}

/// The largest VM this standby shadows (the default accepts none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShapeCaps {
    /// Guest memory in bytes (`--max-mem-mib`; default: this host's RAM).
    pub mem_bytes: Cap<u64>,
    /// vCPUs (`--max-vcpus`; default: the engine's limit, 64).
    pub vcpus: Cap<u32>,
}

impl ShapeCaps {
    /// The caps given on the command line, with the defaults for the
    /// others: this host's physical RAM (a shadow larger than its host's
    /// RAM could not run the guest after a takeover), and every vCPU count
    /// the engine builds.
    pub fn new(max_mem_mib: Option<u64>, max_vcpus: Option<u32>) -> Result<ShapeCaps, BoundsError> {
        let mem_bytes = match max_mem_mib {
            Some(mib) => Cap {
                value: mib.checked_mul(MIB).filter(|_| mib > 0).ok_or_else(|| {
                    BoundsError::BadOption {
                        option: "--max-mem-mib",
                        expected: format!("between 1 and {}", u64::MAX / MIB),
                        got: mib.to_string(),
                    }
                })?,
                set: true,
            },
            None => Cap {
                value: host_ram_bytes().ok_or(BoundsError::HostRamUnknown)?,
                set: false,
            },
        };
        let vcpus = match max_vcpus {
            Some(n) if (1..=MAX_VCPUS).contains(&n) => Cap {
                value: n,
                set: true,
            },
            Some(n) => {
                return Err(BoundsError::BadOption {
                    option: "--max-vcpus",
                    expected: format!("between 1 and {MAX_VCPUS}"),
                    got: n.to_string(),
                })
            }
            None => Cap {
                value: MAX_VCPUS,
                set: false,
            },
        };
        Ok(ShapeCaps { mem_bytes, vcpus })
    }

    /// The bytes `--reserve-mib mib` reserves: a positive multiple of 2 MiB
    /// within the memory cap (checked before anything is reserved).
    pub fn reserve_bytes(&self, mib: u64) -> Result<u64, BoundsError> {
        let bytes = mib
            .checked_mul(MIB)
            .filter(|&b| b > 0 && b.is_multiple_of(2 * MIB))
            .ok_or_else(|| BoundsError::BadOption {
                option: "--reserve-mib",
                expected: "a positive multiple of 2".into(),
                got: mib.to_string(),
            })?;
        if bytes > self.mem_bytes.value {
            return Err(BoundsError::Reserve {
                reserve: bytes,
                cap: self.mem_bytes,
            });
        }
        Ok(bytes)
    }
}

/// This host's physical RAM in bytes (`None` if the system does not say).
pub fn host_ram_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads a system setting; it has no memory
    // arguments and no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let (pages, size) = (u64::try_from(pages).ok()?, u64::try_from(size).ok()?);
    pages.checked_mul(size).filter(|&b| b > 0)
}

/// A replica image the primary's disk of the same position must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaShape {
    /// The image (named in refusals).
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Everything a standby checks a primary's announcements against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The largest VM it shadows.
    pub caps: ShapeCaps,
    /// Its replicas, in the primary's disk order.
    pub replicas: Vec<ReplicaShape>,
    /// The operator's cap on one epoch's staging (`--max-epoch-mib`).
    pub max_epoch: Option<u64>,
}

/// Why a primary's announcement is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// A command-line cap is out of range.
    #[error("{option} must be {expected}, got {got}")]
    BadOption {
        /// The option.
        option: &'static str,
        /// The accepted range.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Memory to reserve (`--reserve-mib`) beyond the memory cap.
    #[error(
        "--reserve-mib {} is more than the largest VM this standby shadows ({} MiB: {})",
        .reserve >> 20,
        .cap.value >> 20,
        if .cap.set { "--max-mem-mib" } else { "this host's RAM; see --max-mem-mib" }
    )]
    Reserve {
        /// The memory to reserve, in bytes.
        reserve: u64,
        /// The memory cap.
        cap: Cap<u64>,
    },
    /// The default memory cap cannot be found.
    #[error("this host's RAM size is unknown (sysconf): give --max-mem-mib")]
    HostRamUnknown,
    /// More guest memory than the cap.
    #[error(
        "guest memory: the primary announces {} but this standby's cap is {} ({})",
        Bytes(*announced),
        Bytes(cap.value),
        CapSource(cap.set, "--max-mem-mib", "this host's RAM")
    )]
    Memory {
        /// The announced memory in bytes.
        announced: u64,
        /// The cap.
        cap: Cap<u64>,
    },
    /// Memory regions whose sizes add up past 2^64 bytes.
    #[error("guest memory: the primary announces regions whose sizes add up past 2^64 bytes")]
    MemoryOverflow,
    /// A memory layout this engine does not build.
    #[error(
        "guest memory: the primary announces {} in a layout this engine does not build \
         ({regions} regions)",
        Bytes(*bytes)
    )]
    Layout {
        /// The announced memory in bytes.
        bytes: u64,
        /// The number of announced regions.
        regions: usize,
    },
    /// More vCPUs than the cap, or none.
    #[error(
        "vCPUs: the primary announces {announced} but this standby takes 1 to {} ({})",
        cap.value,
        CapSource(cap.set, "--max-vcpus", "the engine's limit")
    )]
    Vcpus {
        /// The announced count.
        announced: u32,
        /// The cap.
        cap: Cap<u32>,
    },
    /// Not one replica per disk.
    #[error(
        "disks: the primary's VM has {announced} disks but this standby was given \
         {replicas} replicas (--disk)"
    )]
    DiskCount {
        /// The announced number of disks.
        announced: usize,
        /// The standby's replicas.
        replicas: usize,
    },
    /// A disk of another size than its replica.
    #[error(
        "disk {index}: the primary announces {announced} bytes but replica {} has {replica} \
         (a replica is exactly the size of the primary's disk)",
        path.display()
    )]
    DiskSize {
        /// The disk's position.
        index: usize,
        /// Its announced size in bytes.
        announced: u64,
        /// The replica's size in bytes.
        replica: u64,
        /// The replica.
        path: PathBuf,
    },
    /// Not one TAP per NIC.
    #[error(
        "NICs: the primary's VM has {announced} NICs but this standby was given {given} (--net)"
    )]
    Nics {
        /// The NICs in the epoch.
        announced: usize,
        /// The standby's TAPs.
        given: usize,
    },
    #[error(
        "fencing: the epoch's record names {names} spares, more than the {max} a standby accepts"
    )]
    RecordSpares {
        /// Synchronous and asynchronous spares named, together.
        names: usize,
        /// [`MAX_RECORD_SPARES`].
        max: usize,
    },
    #[error("fencing: a name in the epoch's record is {len} bytes long, more than {max}")]
    RecordName {
        /// The longest name's length.
        len: usize,
        /// [`MAX_RECORD_NAME`].
        max: usize,
    },
    /// An epoch larger than its staging limit.
    #[error("epoch {seq} claims {len} bytes, more than the {limit} allowed ({why})")]
    Staging {
        /// The epoch.
        seq: u64,
        /// Its announced container length.
        len: u64,
        /// The limit.
        limit: u64,
        /// Where the limit comes from.
        why: &'static str,
    },
    /// More bytes than the epoch announced.
    #[error("epoch {seq} overflows its announced {len} bytes")]
    Overflow {
        /// The epoch.
        seq: u64,
        /// Its announced container length.
        len: u64,
    },
    /// A position or size past 2^64.
    #[error("{0} overflows 64 bits")]
    Arithmetic(&'static str),
    /// A `Config` section larger than any machine configuration.
    #[error("a Config section of {len} bytes: more than the {MAX_CONFIG_BYTES} a machine configuration may take")]
    ConfigTooLarge {
        /// Its announced length.
        len: u64,
    },
    /// The first bytes of the container are already wrong.
    #[error("{0}")]
    Container(String),
    /// Console output that does not end where the checkpoint's console is.
    #[error(
        "console output: the epoch's output ends at byte {end} but its checkpoint's console \
         is at {state}"
    )]
    Console {
        /// Where the epoch's output ends.
        end: u64,
        /// The checkpoint's console position.
        state: u64,
    },
}

/// Bytes, with MiB beside them.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes ({} MiB)", self.0, self.0 / MIB)
    }
}

/// Where a cap comes from: its option, or its default and the option.
struct CapSource(bool, &'static str, &'static str);

impl fmt::Display for CapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapSource(true, option, _) => write!(f, "set by {option}"),
            CapSource(false, option, default) => write!(f, "{default}; {option} sets it"),
        }
    }
}

/// `x` plus a tenth and [`HEADROOM`], saturating (a limit, not a size).
fn with_headroom(x: u64) -> u64 {
    x.saturating_add(x / 10).saturating_add(HEADROOM)
}

/// A sum of sizes, saturating (a limit, not a size).
fn sum(sizes: impl Iterator<Item = u64>) -> u64 {
    sizes.fold(0, u64::saturating_add)
}

impl Policy {
    /// Checks a primary's machine configuration against the caps and the
    /// replicas; returns its memory size. Call it before creating anything
    /// of that size.
    pub fn check_shape(&self, m: &MachineConfig) -> Result<u64, BoundsError> {
        let vcpus = self.caps.vcpus;
        if m.vcpus == 0 || m.vcpus > vcpus.value {
            return Err(BoundsError::Vcpus {
                announced: m.vcpus,
                cap: vcpus,
            });
        }
        let bytes = m
            .mem_regions
            .iter()
            .try_fold(0u64, |sum, r| sum.checked_add(r.size))
            .ok_or(BoundsError::MemoryOverflow)?;
        let cap = self.caps.mem_bytes;
        if bytes > cap.value {
            return Err(BoundsError::Memory {
                announced: bytes,
                cap,
            });
        }
        if crate::memory::layout(bytes) != m.mem_regions {
            return Err(BoundsError::Layout {
                bytes,
                regions: m.mem_regions.len(),
            });
        }
        if m.disks.len() != self.replicas.len() {
            return Err(BoundsError::DiskCount {
                announced: m.disks.len(),
                replicas: self.replicas.len(),
            });
        }
        for (index, (d, r)) in m.disks.iter().zip(&self.replicas).enumerate() {
            if d.bytes != r.bytes {
                return Err(BoundsError::DiskSize {
                    index,
                    announced: d.bytes,
                    replica: r.bytes,
                    path: r.path.clone(),
                });
            }
        }
        Ok(bytes)
    }

    /// The most bytes one epoch may stage (its container, and separately
    /// its decoded pages), and where that limit comes from. `machine` is
    /// the VM the shadow holds (`None`: none yet, the caps bound it).
    pub fn staging_limit(&self, machine: Option<&MachineConfig>) -> (u64, &'static str) {
        let (derived, why) = match machine {
            // A full epoch is at most the memory and the disks plus record
            // headers and state.
            Some(m) => (
                with_headroom(sum(m
                    .mem_regions
                    .iter()
                    .map(|r| r.size)
                    .chain(m.disks.iter().map(|d| d.bytes)))),
                "the guest's memory and disks plus headroom",
            ),
            None => (
                with_headroom(sum(std::iter::once(self.caps.mem_bytes.value)
                    .chain(self.replicas.iter().map(|r| r.bytes)))),
                "before the VM is known: this standby's memory cap (--max-mem-mib) and replicas plus headroom",
            ),
        };
        match self.max_epoch {
            Some(cap) if cap < derived => (cap, "set by --max-epoch-mib"),
            _ => (derived, why),
        }
    }

    /// Admits an epoch of `len` container bytes (`EpochBegin`), before any
    /// byte is staged. With no VM known yet, its configuration is checked
    /// against the caps as soon as it arrives.
    pub fn admit(
        &self,
        machine: Option<&MachineConfig>,
        seq: u64,
        len: u64,
    ) -> Result<Admission, BoundsError> {
        let (limit, why) = self.staging_limit(machine);
        if len > limit {
            return Err(BoundsError::Staging {
                seq,
                len,
                limit,
                why,
            });
        }
        Ok(Admission {
            seq,
            len,
            ahead: machine.is_none().then(|| self.clone()),
        })
    }
}

/// One epoch being staged: its announced length and, while the shadow
/// knows no VM, the policy its configuration must pass when it arrives.
#[derive(Debug)]
pub struct Admission {
    seq: u64,
    len: u64,
    ahead: Option<Policy>,
}

impl Admission {
    /// Stages `chunk` (an `EpochData` payload) after `staged`: refused past
    /// the announced length, or once the first bytes announce a VM this
    /// standby does not take, or an epoch too large for that VM.
    pub fn data(&mut self, staged: &mut Vec<u8>, chunk: &[u8]) -> Result<(), BoundsError> {
        if !u64::try_from(chunk.len()).is_ok_and(|n| n <= self.room(staged.len())) {
            return Err(BoundsError::Overflow {
                seq: self.seq,
                len: self.len,
            });
        }
        staged.extend_from_slice(chunk);
        self.appended(staged)
    }

    /// How many more bytes the epoch may stage on top of `staged` bytes: a
    /// receiver that appends a payload straight to the staging buffer asks
    /// this before any of it is stored, and calls [`Admission::appended`]
    /// after.
    pub fn room(&self, staged: usize) -> u64 {
        u64::try_from(staged).map_or(0, |s| self.len.saturating_sub(s))
    }

    /// Checks `staged` after bytes were appended to it within
    /// [`Admission::room`]: once its first bytes announce a VM, that VM
    /// must be one this standby takes, and the epoch not too large for it.
    pub fn appended(&mut self, staged: &[u8]) -> Result<(), BoundsError> {
        if staged.len() as u64 > self.len {
            return Err(BoundsError::Overflow {
                seq: self.seq,
                len: self.len,
            });
        }
        let Some(policy) = &self.ahead else {
            return Ok(());
        };
        match peek_config(staged)? {
            Peek::NeedMore => return Ok(()),
            Peek::Nothing => {}
            Peek::Config(m) => {
                policy.check_shape(&m)?;
                let (limit, why) = policy.staging_limit(Some(&m));
                if self.len > limit {
                    return Err(BoundsError::Staging {
                        seq: self.seq,
                        len: self.len,
                        limit,
                        why,
                    });
                }
            }
        }
        self.ahead = None;
        Ok(())
    }
}

/// What the first bytes of a container say about the VM.
#[derive(Debug, PartialEq, Eq)]
pub enum Peek {
    /// Not enough bytes yet.
    NeedMore,
    /// A full container announcing this VM (its fingerprint checked).
    Config(MachineConfig),
    /// Nothing to check ahead: an incremental container, or one whose
    /// first section is not `Config` (its full verification decides).
    Nothing,
}

/// Reads the configuration at the start of a full container, from as many
/// of its first bytes as have arrived.
pub fn peek_config(prefix: &[u8]) -> Result<Peek, BoundsError> {
    let limits = Limits {
        max_section_len: MAX_CONFIG_BYTES,
        ..Limits::default()
    };
    let refused = |e: CheckpointError| match e {
        CheckpointError::Truncated { .. } => Ok(Peek::NeedMore),
        CheckpointError::SectionTooLarge { len, .. } => Err(BoundsError::ConfigTooLarge { len }),
        e => Err(BoundsError::Container(e.to_string())),
    };
    let mut reader = match CheckpointReader::new(prefix, &limits, None) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    if reader.header().kind != CheckpointKind::Full {
        return Ok(Peek::Nothing);
    }
    // The first section's id, before its payload is read.
    let Some(id) = prefix.get(HEADER_LEN..HEADER_LEN + 4) else {
        return Ok(Peek::NeedMore);
    };
    if id != SectionId::Config.as_u32().to_le_bytes() {
        return Ok(Peek::Nothing);
    }
    let payload = match reader.next_section() {
        Ok(Some((SectionId::Config, payload))) => payload,
        Ok(_) => return Ok(Peek::Nothing),
        Err(e) => return refused(e),
    };
    let m = MachineConfig::decode(&payload).map_err(|e| BoundsError::Container(e.to_string()))?;
    if m.fingerprint() != reader.header().fingerprint {
        return Err(BoundsError::Container(
            "the Config section does not hash to the fingerprint in the header".into(),
        ));
    }
    Ok(Peek::Config(m))
}

/// Checks an epoch's console output before its ack: it starts at
/// `start`, and must end where its checkpoint's console is.
pub fn check_output(start: u64, output: &[u8], console_pos: u64) -> Result<(), BoundsError> {
    let end = u64::try_from(output.len())
        .ok()
        .and_then(|n| start.checked_add(n))
        .ok_or(BoundsError::Arithmetic(
            "the epoch's console output position",
        ))?;
    if end != console_pos {
        return Err(BoundsError::Console {
            end,
            state: console_pos,
        });
    }
    Ok(())
}

/// Checks a committed epoch carries one output list per NIC of this
/// standby (`given` TAPs, `--net`).
pub fn check_nics(announced: usize, given: usize) -> Result<(), BoundsError> {
    if announced != given {
        return Err(BoundsError::Nics { announced, given });
    }
    Ok(())
}

/// The most spares an epoch's fencing record may name, synchronous and
/// asynchronous together: far above any configuration (the service places
/// at most 8), so that no epoch can make a standby open thousands of links
/// when it takes over and re-protects with them.
pub const MAX_RECORD_SPARES: usize = 64;

/// The longest VM id, arbiter identity or spare name an epoch's fencing
/// record may carry.
pub const MAX_RECORD_NAME: usize = 1024;

/// Checks the lists and names of an epoch's fencing record (`FenceInfo`)
/// before the standby keeps it: `spares` are the names it lists, `names`
/// every string in it (those names, the VM id, the arbiter, the receiver).
pub fn check_fence_record<'a>(
    spares: usize,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), BoundsError> {
    if spares > MAX_RECORD_SPARES {
        return Err(BoundsError::RecordSpares {
            names: spares,
            max: MAX_RECORD_SPARES,
        });
    }
    match names.into_iter().map(str::len).max() {
        Some(len) if len > MAX_RECORD_NAME => Err(BoundsError::RecordName {
            len,
            max: MAX_RECORD_NAME,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod tests;
