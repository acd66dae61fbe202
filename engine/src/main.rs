//! The `hotspare` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::boot::BootSpec;
use engine::vm::{Vm, VmConfig};

#[derive(Parser)]
#[command(name = "hotspare", version, about = "VM hot-standby replication engine on KVM")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a guest standalone until it halts or is stopped.
    Run(RunArgs),
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
    let cfg = VmConfig {
        mem_bytes: a.mem_mib << 20,
        vcpus: a.vcpus,
        log_dirty: false,
    };
    let mut vm = Vm::create(&cfg, open_console(&a.console)?, 0, None, None)?;
    let kind = vm.boot(&BootSpec {
        kernel: a.kernel,
        cmdline: a.cmdline,
        initrd: a.initrd,
    })?;
    tracing::info!(?kind, "booting");
    vm.start()?;
    let reason = engine::runner::supervise(&mut vm, None)?;
    tracing::info!(?reason, "guest stopped");
    if let engine::vcpu::StopReason::Error(e) = &reason {
        anyhow::bail!("guest stopped on an error: {e}");
    }
    if let engine::vcpu::StopReason::TripleFault { vcpu, rip } = &reason {
        eprintln!("hotspare: guest triple-faulted on vCPU {vcpu} at rip {rip:#x}");
    }
    Ok(reason.exit_code())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTSPARE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run(a),
    };
    match res {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("hotspare: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
