//! The `hotspare` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use checkpoint::pages::Compression;
use clap::{Parser, Subcommand};
use engine::boot::BootSpec;
use engine::checkpointer::LocalCheckpointer;
use engine::replication::primary::{Kind, PrimaryConfig, Replicator, ShadowSpec};
use engine::replication::standby::StandbyConfig;
use engine::replication::Timing;
use engine::runner::Periodic;
use engine::store::DirStore;
use engine::vm::{Vm, VmConfig};
use std::time::Duration;

/// Exit status of a primary that handed its VM over to the shadow because
/// its own disk failed (EX_TEMPFAIL).
const HANDOVER_EXIT: i32 = 75;

/// Exit status of a primary that another copy superseded (the arbiter or
/// the new primary said so): its guest stopped, held output unreleased.
const SUPERSEDED_EXIT: i32 = 76;

/// Says why a primary stops as superseded; returns its exit status.
fn superseded(why: &str) -> i32 {
    eprintln!("hotspare: SUPERSEDED: {why}; the guest stopped without releasing held output");
    engine::events::emit(engine::events::Event::Superseded { why: why.into() });
    SUPERSEDED_EXIT
}

/// Default size of the primary's XOR-delta cache, MiB.
const DEFAULT_DELTA_CACHE_MIB: u64 = 64;

mod bench;
mod bench_cpu;
mod bench_disk;
mod bench_failover;
mod bench_limits;
mod bench_net;
mod bench_sizes;
mod cli_config;
mod cli_service;
mod demo;
mod demo_disk;
mod demo_net;
mod plot;

/// What every VMM process (`run`, `standby`) takes for the host service.
#[derive(clap::Args)]
struct ProcessArgs {
    /// Write typed events (role changes, protection, takeovers, per-epoch
    /// figures) to this file, one JSON object per line
    /// (`engine::events`; docs/service.md).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Serve a control socket here (mode 0600): an agent adds and drops
    /// spares of the running primary and reads its state through it
    /// (`engine::control`; docs/service.md).
    #[arg(long, value_name = "SOCKET")]
    control: Option<PathBuf>,
    /// Read options from this TOML file first: its keys are this
    /// command's long options (`interval-ms = 20`, `shadow = ["b:7000"]`,
    /// `verify-memory = true`); an option on the command line wins. An
    /// error names the file's line.
    /// (Expanded before parsing: `cli_config.rs`.)
    #[arg(long = "config", value_name = "FILE")]
    _config: Option<PathBuf>,
}

#[derive(Parser)]
#[command(
    name = "hotspare",
    version,
    about = "VM hot-standby replication engine on KVM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a guest standalone until it halts or is stopped.
    Run(Box<RunArgs>),
    /// Rebuild a VM from the newest complete checkpoint in a directory and resume it.
    Restore(RestoreArgs),
    /// Demonstrate local checkpointing: run a bundled guest, kill it, restore it.
    Demo(demo::DemoArgs),
    /// Wait for a primary, shadow its VM, and take over when it dies.
    Standby(StandbyArgs),
    /// Measure replication: pause, epoch rate, bytes per page, CPU, takeover.
    Bench(bench::BenchArgs),
    /// Measure guest disk throughput unprotected vs protected, disk bytes
    /// per epoch and pause phases (device quiesce included).
    BenchDisk(bench_disk::BenchDiskArgs),
    /// Measure what network output commit costs a client: ping RTT and
    /// UDP request/response latency and rate to the bundled network guest,
    /// unprotected vs protected (with and without output-triggered epochs),
    /// in a lab of network namespaces (needs root).
    BenchNet(bench_net::BenchNetArgs),
    /// Measure failover: SIGKILL of the primary to the guest running on the
    /// standby, with no arbiter, the file arbiter and etcd on loopback.
    BenchFailover(bench_failover::BenchFailoverArgs),
    /// The host service: register this host, run the VMMs it is assigned,
    /// serve the management API and /metrics (docs/service.md).
    Agent(cli_service::AgentArgs),
    /// The management API's command line: status, create, stop, start,
    /// failover, delete, tokens, metrics.
    Ctl(cli_service::CtlArgs),
    /// Write a new pre-shared key file: 32 random bytes, mode 0600 (an
    /// existing file is never overwritten).
    Keygen {
        /// Where to write it.
        file: PathBuf,
    },
    /// Print this host's TSC frequency in kHz (what a guest paced by the
    /// TSC, like the memory tester's `rate=`, needs as `tsc_khz=`).
    TscKhz,
}

#[derive(clap::Args)]
struct ReplicaArgs {
    /// Protect the VM with the synchronous spare (a `hotspare standby`) at
    /// HOST:PORT. Repeatable: an epoch's output is released once every
    /// synchronous spare acknowledged it; a lost one leaves the commit set
    /// through the arbiter and the others go on.
    #[arg(long = "shadow", value_name = "HOST:PORT")]
    shadow: Vec<String>,
    /// An asynchronous (distant) spare at HOST:PORT: it receives every epoch
    /// but never holds output back, reports its lag, and takes over only
    /// when no synchronous spare did (it may then lose the last moments).
    /// Repeatable.
    #[arg(long = "async-shadow", value_name = "HOST:PORT")]
    async_shadow: Vec<String>,
    /// Pre-shared key file (at least 32 bytes, e.g. `head -c 32 /dev/urandom > key`).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Epoch interval in milliseconds.
    #[arg(long, default_value_t = 25)]
    interval_ms: u64,
    /// Longest epoch interval, in milliseconds, the primary may stretch to
    /// while the shadow falls behind (opt-in epoch-length policy; default:
    /// --interval-ms, i.e. off: a due epoch waits for an ack instead, which
    /// measured better, see docs/performance.md). Held output waits at most
    /// about this long plus the ack.
    #[arg(long)]
    max_interval_ms: Option<u64>,
    /// Output-triggered epochs: when a NIC holds frames and every epoch is
    /// acknowledged, end the running epoch early, but not sooner than this
    /// many milliseconds after the last capture (0: off; epochs keep to
    /// --interval-ms). A request/response then waits about pause +
    /// transfer + ack instead of up to a whole interval.
    #[arg(long, default_value_t = 2)]
    min_interval_ms: u64,
    #[command(flatten)]
    timing: TimingArgs,
    /// Page compression: zstd or none.
    #[arg(long, default_value = "zstd")]
    compress: String,
    /// XOR-delta cache in MiB: pages sent before are kept (direct-mapped by
    /// frame) so a page that changes again travels as a compressed XOR
    /// delta. 0 turns deltas off; they also need --compress zstd.
    #[arg(long, default_value_t = DEFAULT_DELTA_CACHE_MIB)]
    delta_cache_mib: u64,
    /// Wait this long for the shadow before starting the guest unprotected.
    #[arg(long, default_value_t = 10_000)]
    wait_shadow_ms: u64,
    /// Test mode: hash all guest memory at every epoch; the standby checks
    /// its memory equals the primary's at each commit (slow: the hash is
    /// taken while paused).
    #[arg(long)]
    verify_memory: bool,
    #[command(flatten)]
    arbiter: ArbiterArgs,
    /// The VM's id: the key of its record in the arbiter (unique per VM
    /// sharing an arbiter).
    #[arg(long, default_value = "vm")]
    vm_id: String,
    /// This primary's name in the arbiter's record (default: HOSTNAME/PID).
    #[arg(long)]
    node_name: Option<String>,
    /// Start even though the arbiter's record names a running primary for
    /// this VM id (only when that primary is gone for good: it is fenced).
    #[arg(long)]
    supersede: bool,
}

#[derive(clap::Args)]
struct ArbiterArgs {
    /// Who decides which copy is the VM's primary (required with --shadow
    /// and for a standby): `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`
    /// (etcd v3; hosts that do not share a machine), `file:PATH` (an
    /// flock-protected file: primary and standby on ONE host only), or
    /// `none` (no fencing: a network partition can leave two live copies).
    #[arg(long)]
    arbiter: Option<String>,
    /// After the shadow is lost, how long output stays held waiting for the
    /// arbiter before the guest is paused, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    arbiter_hold_ms: u64,
}

impl ArbiterArgs {
    /// Opens the arbiter; `None` for `none` (with a loud warning).
    fn open(&self) -> anyhow::Result<Option<Box<dyn engine::replication::arbiter::Arbiter>>> {
        let Some(spec) = &self.arbiter else {
            anyhow::bail!(
                "--arbiter is required with replication: etcd://HOST:PORT[,HOST:PORT...] \
                 (see README), file:PATH when primary and standby share one host, \
                 or none to accept that a network partition can fork the VM"
            );
        };
        let a = engine::replication::arbiter::open(spec)?;
        // Once per process, however many arbiters it opens (a standby with
        // --reprotect opens one for itself and one for its next primary).
        static WARNED: std::sync::Once = std::sync::Once::new();
        if a.is_none() {
            WARNED.call_once(|| {
                eprintln!(
                    "hotspare: WARNING: --arbiter none: no fencing; a network partition can leave \
                     two live copies of the VM releasing output"
                )
            });
        }
        Ok(a)
    }

    fn fencing(
        &self,
        vm: &str,
        name: &str,
        supersede: bool,
    ) -> anyhow::Result<Option<engine::replication::arbitration::FenceConfig>> {
        Ok(self
            .open()?
            .map(|arbiter| engine::replication::arbitration::FenceConfig {
                arbiter,
                vm: vm.to_string(),
                name: name.to_string(),
                hold: Duration::from_millis(self.arbiter_hold_ms.max(1)),
                supersede,
                owned: false,
            }))
    }
}

/// HOSTNAME/PID: a primary's default name in the arbiter's record.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/{}", host.trim(), std::process::id())
}

#[derive(clap::Args)]
struct TimingArgs {
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 10)]
    heartbeat_ms: u64,
    /// Declare the peer dead after this much silence, in milliseconds.
    #[arg(long, default_value_t = 300)]
    timeout_ms: u64,
}

impl TimingArgs {
    fn timing(&self) -> anyhow::Result<Timing> {
        if self.heartbeat_ms == 0 || self.timeout_ms < 2 * self.heartbeat_ms {
            anyhow::bail!(
                "--timeout-ms ({}) must be at least twice --heartbeat-ms ({}), and both positive",
                self.timeout_ms,
                self.heartbeat_ms
            );
        }
        Ok(Timing {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

#[derive(clap::Args)]
struct StandbyArgs {
    /// Address to listen on (HOST:PORT).
    #[arg(long)]
    listen: String,
    /// Pre-shared key file (the same as the primary's): 32 random bytes,
    /// mode 0600 (`hotspare keygen FILE` makes one).
    #[arg(long)]
    key_file: PathBuf,
    /// Serve only primaries connecting from this address (repeatable; by
    /// default any address that completes the handshake).
    #[arg(long = "allow-from", value_name = "IP")]
    allow_from: Vec<std::net::IpAddr>,
    /// Most handshakes in flight; at the bound the oldest is cut.
    #[arg(long, default_value_t = 64)]
    max_handshakes: usize,
    /// Most handshakes in flight from one address; at the bound that
    /// address's oldest is cut.
    #[arg(long, default_value_t = 8)]
    max_handshakes_per_source: usize,
    /// Console output after a takeover ('-' for stdout).
    #[arg(long, default_value = "-")]
    console: String,
    #[command(flatten)]
    timing: TimingArgs,
    /// After a takeover, protect the VM again with the standby at HOST:PORT
    /// (besides the other spares the old primary's record named, which the
    /// new primary always takes over as its own). Repeatable.
    #[arg(long = "reprotect", value_name = "HOST:PORT")]
    reprotect: Vec<String>,
    /// As an asynchronous spare, how long to let the synchronous spares
    /// claim the VM after the primary is lost before claiming it, in ms.
    #[arg(long, default_value_t = 1000)]
    async_grace_ms: u64,
    /// Test mode, after a takeover: the new primary hashes all guest memory
    /// at every epoch and its spares check theirs at each commit (as `run
    /// --verify-memory`).
    #[arg(long)]
    verify_memory: bool,
    /// Epoch interval after a takeover, in milliseconds.
    #[arg(long, default_value_t = 25)]
    interval_ms: u64,
    /// Cap, in MiB, on one epoch's staging: the received container and,
    /// separately, its decoded pages. Larger epochs are refused with a
    /// message naming this option (the primary then runs unprotected and
    /// says why). Default: the guest's memory and disks plus 10% and 64 MiB.
    #[arg(long)]
    max_epoch_mib: Option<u64>,
    /// The most guest memory, in MiB, this standby shadows: a primary
    /// announcing more is refused (it runs unprotected and says why)
    /// before anything of that size is staged or created. Default: this
    /// host's physical RAM.
    #[arg(long, value_name = "MIB")]
    max_mem_mib: Option<u64>,
    /// The most vCPUs this standby shadows (1 to 64): a primary announcing
    /// more is refused. Default: 64, the engine's limit.
    #[arg(long, value_name = "N")]
    max_vcpus: Option<u32>,
    /// Reserve this much guest memory, in MiB, before listening: created
    /// and populated now, it serves the first VM of exactly this size, so
    /// a live copy does not wait for the host to provide pages (a primary
    /// of another size still gets memory, allocated during its copy).
    /// Must fit --max-mem-mib.
    #[arg(long, value_name = "MIB")]
    reserve_mib: Option<u64>,
    /// A replica image for the primary's disk of the same position
    /// (repeatable, in the primary's --disk order): the same size as the
    /// primary's disk. After a takeover it is the VM's disk.
    #[arg(long = "disk", value_name = "PATH")]
    disks: Vec<PathBuf>,
    /// The TAP for the primary's NIC of the same position (repeatable, in
    /// the primary's --net order): `tap=NAME`. The MAC comes with the
    /// checkpoint. After a takeover the guest's frames leave through it,
    /// and its MAC is announced there.
    #[arg(long = "net", value_name = "tap=NAME")]
    nets: Vec<engine::devices::virtio::net::NetSpec>,
    /// When an epoch that writes the disks is acknowledged: `memory` (once
    /// staged; blocks reach the replicas right after: Remus, DRBD protocol
    /// B) or `durable` (once written and fdatasynced: DRBD protocol C).
    #[arg(long, default_value = "memory")]
    disk_ack: engine::replication::standby::DiskAck,
    #[command(flatten)]
    arbiter: ArbiterArgs,
    /// At a takeover, write its figures here as JSON (term, epoch,
    /// detection, arbiter and activation times, the wall-clock moment the
    /// guest ran again).
    #[arg(long)]
    stats_json: Option<PathBuf>,
    #[command(flatten)]
    process: ProcessArgs,
}

#[derive(clap::Args)]
struct CheckpointArgs {
    /// Write checkpoints (a full one, then incremental ones) into this directory.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Interval between checkpoints in milliseconds.
    #[arg(long, default_value_t = 100)]
    checkpoint_interval_ms: u64,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// The checkpoint directory to restore from (and to continue checkpointing into).
    #[arg(long)]
    checkpoint_dir: PathBuf,
    /// Interval between checkpoints after the restore, in milliseconds (0 = stop checkpointing).
    #[arg(long, default_value_t = 100)]
    checkpoint_interval_ms: u64,
    /// Console output file ('-' for stdout).
    #[arg(long, default_value = "-")]
    console: String,
    /// The TAP for each NIC the checkpoint's VM had, in order:
    /// `tap=NAME` (the MAC comes from the checkpoint). Frames the guest
    /// sent in the last epoch before the checkpoint are not re-sent: the
    /// peers see a lost packet and retransmit.
    #[arg(long = "net", value_name = "tap=NAME")]
    nets: Vec<engine::devices::virtio::net::NetSpec>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel image: PVH ELF, Linux vmlinux ELF or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Console output file ('-' for stdout).
    #[arg(long, default_value = "-")]
    console: String,
    /// A raw disk image as a virtio-blk device (virtio-mmio, announced on
    /// the command line as `virtio_mmio.device=`): `PATH[,readonly]`.
    /// Repeatable; the first is `virtio-blk.0`.
    #[arg(long = "disk", value_name = "PATH[,readonly]")]
    disks: Vec<engine::devices::virtio::block::DiskSpec>,
    /// A virtio-net NIC (virtio-mmio) on a TAP: `tap=NAME[,mac=MAC]`. The
    /// TAP is opened with a vnet header (and created, if absent and this
    /// user may). The default MAC is derived from --vm-id and the NIC's
    /// index. While protected, frames the guest sends wait for their epoch
    /// to commit. Repeatable; the first is `virtio-net.0`.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<engine::devices::virtio::net::NetSpec>,
    #[command(flatten)]
    ckpt: CheckpointArgs,
    #[command(flatten)]
    replica: ReplicaArgs,
    /// Pin threads: with 2+ CPUs, the engine's threads run on the first CPU
    /// and the vCPU threads on the others (shorter pauses; see docs/performance.md).
    #[arg(long)]
    pin: bool,
    /// Write per-epoch replication figures as JSON to this file at exit.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// For benchmarks: fill guest RAM from this file before boot, page by
    /// page from address 0, as a file backing QEMU's RAM does (the peer
    /// harness's `--prefill mixed`); all-zero pages stay unallocated. The
    /// kernel is loaded over it, and the guest writes on top.
    #[arg(long, value_name = "FILE")]
    prefill: Option<PathBuf>,
    #[command(flatten)]
    process: ProcessArgs,
}

/// Pins the calling (main) thread, and so every engine thread it spawns, to
/// the engine CPU; returns the CPUs for the vCPU threads.
fn pin_engine(no_pin: bool) -> Option<Vec<usize>> {
    if no_pin {
        return None;
    }
    let (engine, vcpus) = engine::cpu::placement()?;
    engine::cpu::pin_current_thread(&engine).then_some(vcpus)
}

/// Replaces whatever is at `path` with a new random key (mode 0600), for
/// the demos and benches that start their own processes.
fn fresh_key(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    transport::Psk::generate()?.write_new_file(path)?;
    Ok(())
}

fn load_key(path: &std::path::Path) -> anyhow::Result<transport::Psk> {
    Ok(transport::Psk::from_file(path)?)
}

fn compression(s: &str) -> anyhow::Result<Compression> {
    match s {
        "zstd" => Ok(Compression::Zstd { level: 1 }),
        "none" => Ok(Compression::None),
        other => anyhow::bail!("--compress must be zstd or none, got {other:?}"),
    }
}

fn open_console(path: &str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    if path == "-" {
        Ok(Box::new(std::io::stdout()))
    } else {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening console file {path}"))?;
        Ok(Box::new(f))
    }
}

fn run(a: RunArgs) -> anyhow::Result<i32> {
    // Before any thread exists, so every thread inherits the mask and
    // only the waiter (`stop_on_term`) takes SIGTERM and SIGINT.
    let term_signals = block_term_signals()?;
    open_events(
        &a.process.events,
        engine::events::Role::Primary,
        Some(&a.replica.vm_id),
    )?;
    if a.mem_mib == 0 || !a.mem_mib.is_multiple_of(2) {
        anyhow::bail!(
            "--mem-mib must be a positive multiple of 2, got {}",
            a.mem_mib
        );
    }
    let mut shadows: Vec<ShadowSpec> = a
        .replica
        .shadow
        .iter()
        .map(|addr| ShadowSpec {
            addr: addr.clone(),
            kind: Kind::Sync,
        })
        .chain(a.replica.async_shadow.iter().map(|addr| ShadowSpec {
            addr: addr.clone(),
            kind: Kind::Async,
        }))
        .collect();
    for (i, s) in shadows.iter().enumerate() {
        if shadows[..i].iter().any(|o| o.addr == s.addr) {
            anyhow::bail!("spare {} is named twice (--shadow, --async-shadow)", s.addr);
        }
    }
    if a.ckpt.checkpoint_dir.is_some() && !shadows.is_empty() {
        anyhow::bail!("--checkpoint-dir and --shadow cannot be combined (yet)");
    }
    let replica = match (shadows.is_empty(), &a.replica.key_file) {
        (false, Some(key)) => {
            if a.replica.interval_ms == 0 {
                anyhow::bail!("--interval-ms must be positive");
            }
            engine::replication::arbiter::check_vm_id(&a.replica.vm_id)
                .map_err(anyhow::Error::msg)?;
            let name = a
                .replica
                .node_name
                .clone()
                .unwrap_or_else(default_node_name);
            let fencing =
                a.replica
                    .arbiter
                    .fencing(&a.replica.vm_id, &name, a.replica.supersede)?;
            if fencing.is_none() && shadows.len() > 1 {
                anyhow::bail!(
                    "--arbiter none allows one spare only: with several, every spare would take the VM over \
                     when the primary dies; give them an arbiter (etcd://..., or file:PATH on one host)"
                );
            }
            Some(PrimaryConfig {
                shadows: std::mem::take(&mut shadows),
                psk: std::sync::Arc::new(load_key(key)?),
                interval: Duration::from_millis(a.replica.interval_ms),
                min_interval: Duration::from_millis(a.replica.min_interval_ms),
                max_interval: Duration::from_millis(
                    a.replica.max_interval_ms.unwrap_or(a.replica.interval_ms),
                ),
                timing: a.replica.timing.timing()?,
                compression: compression(&a.replica.compress)?,
                delta_cache_bytes: a.replica.delta_cache_mib << 20,
                max_outstanding: engine::replication::primary::MAX_OUTSTANDING,
                retry: Duration::from_millis(200),
                term: 1,
                verify_memory: a.replica.verify_memory,
                wait_shadow: Duration::from_millis(a.replica.wait_shadow_ms),
                fencing,
                async_max_queued: engine::replication::primary::ASYNC_MAX_QUEUED,
                resumed: None,
                control: control_inbox(&a.process.control)?,
            })
        }
        (false, None) => anyhow::bail!("--shadow and --async-shadow need --key-file"),
        (true, Some(_)) => anyhow::bail!("--key-file is only used with --shadow or --async-shadow"),
        (true, None) => None,
    };
    let cfg = VmConfig {
        mem_bytes: a.mem_mib << 20,
        vcpus: a.vcpus,
        log_dirty: a.ckpt.checkpoint_dir.is_some() || replica.is_some(),
        vcpu_cpus: pin_engine(!a.pin),
        disks: a.disks.clone(),
        nets: a
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| engine::devices::virtio::net::NetSpec {
                tap: n.tap.clone(),
                mac: Some(n.mac.unwrap_or_else(|| {
                    engine::devices::virtio::net::derive_mac(&a.replica.vm_id, i)
                })),
            })
            .collect(),
    };
    let mut vm = Vm::create(&cfg, open_console(&a.console)?, None)?;
    if let Some(path) = &a.prefill {
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("opening the prefill file {}", path.display()))?;
        let pages = vm
            .ram
            .prefill_from(&mut f, &format!("file {}", path.display()))?;
        tracing::info!(pages, "guest RAM prefilled from {}", path.display());
    }
    stop_on_term(term_signals, vm.shared.clone())?;
    let kind = vm.boot(&BootSpec {
        kernel: a.kernel,
        cmdline: a.cmdline,
        initrd: a.initrd,
    })?;
    tracing::info!(?kind, "booting");
    let mut ckpt = match &a.ckpt.checkpoint_dir {
        Some(dir) => {
            let store = DirStore::open(dir, &vm.machine, None, &a.disks)?;
            Some(LocalCheckpointer::new(
                &vm,
                store,
                Duration::from_millis(a.ckpt.checkpoint_interval_ms.max(1)),
            ))
        }
        None => None,
    };
    if let Some(rcfg) = replica {
        let interval = rcfg.interval;
        let mut rep = Replicator::new(&vm, rcfg);
        let started = std::time::Instant::now();
        let wait = a.replica.wait_shadow_ms;
        vm.start_parked()?;
        let res = match rep.protect_before_start(&vm, Duration::from_millis(wait)) {
            Ok(_) => {
                engine::events::emit(engine::events::Event::Running { term: rep.term() });
                engine::runner::supervise(&mut vm, Some(&mut rep as &mut dyn Periodic))
            }
            Err(e) => Err(e),
        };
        if let Err(engine::error::EngineError::Superseded(why)) = &res {
            // No goodbye, no release of held output: another copy owns the VM.
            std::process::exit(superseded(why));
        }
        if let Some(why) = vm.io_failover.failure() {
            // No goodbye, no release of held output: the shadow, whose disk
            // is healthy, takes over from its last commit as from a crash.
            eprintln!(
                "hotspare: the primary's disk failed ({why}); handing the VM over to the shadow at {} \
                 (this process ends without releasing uncommitted output)",
                a.replica.shadow.join(", ")
            );
            std::process::exit(HANDOVER_EXIT);
        }
        rep.finish();
        eprintln!(
            "hotspare: {}",
            engine::replication::primary::summary(&rep.stats)
        );
        if let Some(path) = &a.stats_json {
            let vcpu_cpu = vm
                .shared
                .vcpu_cpu
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .sum();
            let mut json = engine::replication::primary::stats_json(
                &rep.stats,
                interval,
                started.elapsed(),
                vcpu_cpu,
            );
            json["memory_caps"] = serde_json::json!({
                "delta_cache_bytes": a.replica.delta_cache_mib << 20,
                // Page buffers recycled between captures and the sender (the
                // pool's bound) and epochs in flight, each holding one.
                "page_buffers_pooled_max": engine::replication::primary::PAGE_POOL,
                "epochs_in_flight_max": engine::replication::primary::MAX_OUTSTANDING,
            });
            std::fs::write(path, serde_json::to_vec_pretty(&json)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return exit_status(res?);
    }
    vm.start()?;
    finish(&mut vm, ckpt.as_mut())
}

fn standby(a: StandbyArgs) -> anyhow::Result<i32> {
    open_events(&a.process.events, engine::events::Role::Standby, None)?;
    no_mac(&a.nets, "standby")?;
    let caps = engine::replication::bounds::ShapeCaps::new(a.max_mem_mib, a.max_vcpus)?;
    // Checked before the key is read, the memory reserved after it: a
    // standby that cannot start does not populate memory first.
    let reserve = a
        .reserve_mib
        .map(|mib| caps.reserve_bytes(mib).map(|bytes| (mib, bytes)))
        .transpose()?;
    let max_epoch_bytes = match a.max_epoch_mib {
        Some(0) => anyhow::bail!("--max-epoch-mib must be at least 1"),
        Some(m) => Some(m.checked_mul(1 << 20).ok_or_else(|| {
            anyhow::anyhow!(
                "--max-epoch-mib {m} is too large (at most {})",
                u64::MAX >> 20
            )
        })?),
        None => None,
    };
    let timing = a.timing.timing()?;
    // Read once: the standby and the primary it may become share the key.
    let psk = std::sync::Arc::new(load_key(&a.key_file)?);
    // The next primary's configuration: this standby becomes it at a
    // takeover, with the --reprotect spares and the record's other spares.
    let reprotect = PrimaryConfig {
        shadows: a
            .reprotect
            .iter()
            .map(|addr| ShadowSpec {
                addr: addr.clone(),
                kind: Kind::Sync,
            })
            .collect(),
        psk: psk.clone(),
        interval: Duration::from_millis(a.interval_ms.max(1)),
        min_interval: engine::replication::primary::MIN_INTERVAL,
        max_interval: Duration::from_millis(a.interval_ms.max(1)),
        timing,
        compression: Compression::Zstd { level: 1 },
        delta_cache_bytes: DEFAULT_DELTA_CACHE_MIB << 20,
        max_outstanding: engine::replication::primary::MAX_OUTSTANDING,
        retry: Duration::from_millis(200),
        term: 0,
        verify_memory: a.verify_memory,
        wait_shadow: Duration::ZERO,
        // The VM id and this standby's name come from the primary's
        // epochs at the takeover.
        fencing: a.arbiter.fencing("", "", false)?,
        async_max_queued: engine::replication::primary::ASYNC_MAX_QUEUED,
        resumed: None,
        control: control_inbox(&a.process.control)?,
    };
    if a.arbiter.arbiter.as_deref() == Some("none") && a.reprotect.len() > 1 {
        anyhow::bail!(
            "--arbiter none allows one --reprotect spare only: with several, every spare would take the VM over"
        );
    }
    let reserved = match reserve {
        None => None,
        Some((mib, bytes)) => {
            let t = std::time::Instant::now();
            let ram = engine::memory::Ram::new(bytes)
                .and_then(|ram| ram.populate().map(|()| ram))
                .map_err(|e| anyhow::anyhow!("--reserve-mib {mib}: {e}"))?;
            eprintln!(
                "hotspare: reserved {mib} MiB of guest memory in {:.2} s",
                t.elapsed().as_secs_f64()
            );
            Some(ram)
        }
    };
    let cfg = StandbyConfig {
        listen: a.listen,
        psk,
        allow: (!a.allow_from.is_empty()).then_some(a.allow_from),
        max_handshakes: match (a.max_handshakes, a.max_handshakes_per_source) {
            (0, _) | (_, 0) => {
                anyhow::bail!("--max-handshakes and --max-handshakes-per-source must be at least 1")
            }
            bounds => bounds,
        },
        timing,
        console: open_console(&a.console)?,
        reprotect,
        async_grace: Duration::from_millis(a.async_grace_ms),
        max_epoch_bytes,
        caps,
        disks: a.disks,
        nets: a.nets,
        disk_ack: a.disk_ack,
        arbiter: a.arbiter.open()?,
        stats_json: a.stats_json,
        reserved,
    };
    match engine::replication::standby::run(cfg) {
        Err(engine::error::EngineError::Superseded(why)) => Ok(superseded(&why)),
        Err(engine::error::EngineError::HandOver(why)) => {
            eprintln!("hotspare: the disk failed ({why}); handing the VM over to the spare");
            Ok(HANDOVER_EXIT)
        }
        res => Ok(res?),
    }
}

fn finish(vm: &mut Vm, mut ckpt: Option<&mut LocalCheckpointer>) -> anyhow::Result<i32> {
    let reason =
        engine::runner::supervise(vm, ckpt.as_deref_mut().map(|c| c as &mut dyn Periodic))?;
    if let (Some(c), false) = (ckpt, matches!(reason, engine::vcpu::StopReason::Error(_))) {
        c.finish(vm, reason.exit_code()).map_err(|e| {
            anyhow::anyhow!(
                "the guest ended, but its last output could not be recorded with the checkpoints, so it stays unshown: {e}"
            )
        })?;
    }
    exit_status(reason)
}

fn exit_status(reason: engine::vcpu::StopReason) -> anyhow::Result<i32> {
    tracing::info!(?reason, "guest stopped");
    if let engine::vcpu::StopReason::Error(e) = &reason {
        anyhow::bail!("guest stopped on an error: {e}");
    }
    if let engine::vcpu::StopReason::TripleFault { vcpu, rip } = &reason {
        eprintln!("hotspare: guest triple-faulted on vCPU {vcpu} at rip {rip:#x}");
    }
    Ok(reason.exit_code())
}

/// A NIC given to a standby or a restore takes its MAC from the
/// checkpoint: a `mac=` there would be silently replaced, so it is refused.
fn no_mac(nets: &[engine::devices::virtio::net::NetSpec], cmd: &str) -> anyhow::Result<()> {
    if let Some(n) = nets.iter().find(|n| n.mac.is_some()) {
        anyhow::bail!(
            "hotspare {cmd} --net tap={},mac=...: the MAC comes from the checkpoint; give tap=NAME only",
            n.tap
        );
    }
    Ok(())
}

fn restore(a: RestoreArgs) -> anyhow::Result<i32> {
    no_mac(&a.nets, "restore")?;
    if let Some(end) = engine::restore::ended(&a.checkpoint_dir)? {
        // The guest ended on its own: show its last output again (it may
        // not have been shown before the run died) and report its exit.
        let mut console = open_console(&a.console)?;
        console
            .write_all(&end.output)
            .and_then(|()| console.flush())
            .map_err(|e| anyhow::anyhow!("writing the console: {e}"))?;
        eprintln!(
            "hotspare: the guest in {} ended after checkpoint {} with exit code {}; console resumes at byte {} with its last output; nothing to run",
            a.checkpoint_dir.display(),
            end.after_seq,
            end.exit_code,
            end.start
        );
        return Ok(end.exit_code);
    }
    let restored = engine::restore::restore(
        &a.checkpoint_dir,
        open_console(&a.console)?,
        a.checkpoint_interval_ms > 0,
        &a.nets,
    )?;
    eprintln!(
        "hotspare: restored checkpoint {} from {}; console resumes at byte {}",
        restored.seq,
        a.checkpoint_dir.display(),
        restored.console_pos
    );
    let mut ckpt = if a.checkpoint_interval_ms > 0 {
        let store = engine::restore::continue_store(&a.checkpoint_dir, &restored)?;
        Some(LocalCheckpointer::new(
            &restored.vm,
            store,
            Duration::from_millis(a.checkpoint_interval_ms),
        ))
    } else {
        None
    };
    let mut vm = restored.vm;
    vm.start()?;
    finish(&mut vm, ckpt.as_mut())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTSPARE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let argv = match cli_config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hotspare: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    engine::faults::check_env();
    let res = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Restore(a) => restore(a),
        Cmd::Demo(a) => demo::demo(a),
        Cmd::Standby(a) => standby(a),
        Cmd::BenchDisk(a) => bench_disk::bench_disk(a),
        Cmd::BenchNet(a) => bench_net::bench_net(a),
        Cmd::BenchFailover(a) => bench_failover::bench_failover(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Agent(a) => cli_service::agent(a),
        Cmd::Ctl(a) => cli_service::ctl(a),
        Cmd::Keygen { file } => transport::Psk::generate()
            .and_then(|k| k.write_new_file(&file))
            .map(|()| {
                eprintln!(
                    "hotspare: wrote a new key to {} (mode 0600)",
                    file.display()
                );
                0
            })
            .map_err(Into::into),
        Cmd::TscKhz => {
            println!("{}", engine::cpu::tsc_khz());
            Ok(0)
        }
    };
    match res {
        Ok(code) => {
            engine::events::emit(engine::events::Event::Exiting {
                code,
                why: String::new(),
            });
            ExitCode::from(code as u8)
        }
        Err(e) => {
            eprintln!("hotspare: error: {e:#}");
            engine::events::emit(engine::events::Event::Exiting {
                code: 1,
                why: format!("{e:#}"),
            });
            ExitCode::from(1)
        }
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and the threads it spawns).
fn block_term_signals() -> anyhow::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM and SIGINT")?;
    Ok(set)
}

/// The first SIGTERM or SIGINT stops the guest in order, as if it had
/// halted: held output is released once committed, the spares are told
/// the guest ended (none takes over) and the arbiter records it stopped.
/// A second one exits at once.
fn stop_on_term(
    set: nix::sys::signal::SigSet,
    shared: std::sync::Arc<engine::vcpu::Shared>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("hs-signals".into())
        .spawn(move || {
            let mut seen = false;
            while let Ok(sig) = set.wait() {
                if seen {
                    std::process::exit(128 + sig as i32);
                }
                seen = true;
                eprintln!("hotspare: {sig}: stopping the guest in order (again: exit at once)");
                shared.request_stop(engine::vcpu::StopReason::Requested);
            }
        })
        .context("the signal thread")?;
    Ok(())
}

/// Serves the `--control` socket, if asked.
fn control_inbox(path: &Option<PathBuf>) -> anyhow::Result<Option<engine::control::Inbox>> {
    path.as_ref()
        .map(|p| engine::control::serve(p).with_context(|| format!("--control {}", p.display())))
        .transpose()
}

/// Opens the `--events` file and says what this process is.
fn open_events(
    path: &Option<PathBuf>,
    role: engine::events::Role,
    vm: Option<&str>,
) -> anyhow::Result<()> {
    if let Some(p) = path {
        engine::events::open(p).with_context(|| format!("--events {}", p.display()))?;
        engine::events::emit(engine::events::Event::Started {
            role,
            vm: vm.map(str::to_string),
        });
    }
    Ok(())
}
