//! `hotspare agent` and `hotspare ctl`: the command-line ends of the host
//! service (`engine::service`; docs/service.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use engine::service::agent::Agent;
use engine::service::api::VmView;
use engine::service::config::AgentConfig;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The agent's configuration (TOML; docs/service.md#config).
    #[arg(long, default_value = "/etc/hotspare/agent.toml")]
    config: PathBuf,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn agent(a: AgentArgs) -> anyhow::Result<i32> {
    // Before any thread: only the waiter below takes these signals.
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM and SIGINT")?;
    let cfg = AgentConfig::load(&a.config)?;
    let binary = match &cfg.paths.hotspare {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("the hotspare binary's path")?,
    };
    // A VM's `run` options are checked by the command line's own parser.
    let check: engine::service::api::RunCheck = Arc::new(|args: &[String]| {
        let argv = ["hotspare", "run", "--kernel", "/checked-by-the-host"]
            .into_iter()
            .map(String::from)
            .chain(args.iter().cloned());
        crate::Cli::try_parse_from(argv).map(|_| ()).map_err(|e| {
            e.render()
                .to_string()
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
    });
    let mut agent = Agent::start(cfg, binary, check)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::Builder::new()
        .name("hs-signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                s.store(true, Ordering::SeqCst);
            }
        })?;
    let mut usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    agent.run(
        &stop,
        || {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        },
        || {
            if watchdog {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        },
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(0)
}

#[derive(clap::Args)]
pub struct CtlArgs {
    /// Any agent's API.
    #[arg(long, env = "HOTSPARE_API", default_value = "http://127.0.0.1:7800")]
    api: String,
    /// A file holding the token (or HOTSPARE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// The VMs with their protection, spares and term.
    Status,
    /// The hosts in the registry.
    Hosts,
    /// Create a VM from a JSON spec file (docs/service.md).
    Create {
        /// The spec.
        spec: PathBuf,
    },
    /// Stop a VM (every copy, in order).
    Stop { name: String },
    /// Start a stopped VM again.
    Start { name: String },
    /// Fail a VM over to a spare now.
    Failover { name: String },
    /// Delete a VM.
    Delete { name: String },
    /// Create a token (admin): prints it once.
    Token { name: String, role: String },
    /// The agent's Prometheus metrics.
    Metrics,
}

/// Runs one `ctl` command.
pub fn ctl(a: CtlArgs) -> anyhow::Result<i32> {
    let token = match &a.token_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?
        }
        None => std::env::var("HOTSPARE_TOKEN")
            .context("no token: give --token-file FILE or set HOTSPARE_TOKEN")?,
    };
    let token = token.trim().to_string();
    let base = a.api.trim_end_matches('/').to_string();
    let call = |method: &str, path: &str, body: Option<String>| -> anyhow::Result<String> {
        let req = ureq::request(method, &format!("{base}{path}"))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(std::time::Duration::from_secs(10));
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_string()?),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let why = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                anyhow::bail!("HTTP {code}: {why}")
            }
            Err(e) => anyhow::bail!("{base}: {e}"),
        }
    };
    match a.cmd {
        CtlCmd::Status => {
            let vms: Vec<VmView> = serde_json::from_str(&call("GET", "/v1/vms", None)?)?;
            println!(
                "{:<16} {:<12} {:<10} {:>4} {:<10} {:<24} {:>9} {:>13} {:>7} {:>4}",
                "VM",
                "PROTECTION",
                "PHASE",
                "TERM",
                "PRIMARY",
                "SPARES",
                "FAILOVERS",
                "REPROTECT_MS",
                "EPOCHS",
                "LAG"
            );
            let dash = |x: Option<u64>| x.map_or("-".to_string(), |m| m.to_string());
            for v in vms {
                let spares: Vec<String> = v
                    .spares
                    .iter()
                    .map(|s| format!("{}({:?})", s.host, s.role).to_lowercase())
                    .collect();
                let phase = serde_json::to_value(&v.phase)?["phase"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                println!(
                    "{:<16} {:<12} {:<10} {:>4} {:<10} {:<24} {:>9} {:>13} {:>7} {:>4}",
                    v.name,
                    v.protection,
                    phase,
                    v.term,
                    v.primary,
                    spares.join(","),
                    v.failovers,
                    dash(v.last_reprotect_ms),
                    dash(v.epochs),
                    dash(v.async_lag)
                );
                for u in &v.unmet {
                    println!("    degraded: {u}");
                }
            }
        }
        CtlCmd::Hosts => println!("{}", call("GET", "/v1/hosts", None)?),
        CtlCmd::Create { spec } => {
            let body =
                std::fs::read_to_string(&spec).with_context(|| format!("{}", spec.display()))?;
            println!("{}", call("POST", "/v1/vms", Some(body))?);
        }
        CtlCmd::Stop { name } => println!(
            "{}",
            call("POST", &format!("/v1/vms/{name}/stop"), Some(String::new()))?
        ),
        CtlCmd::Start { name } => println!(
            "{}",
            call(
                "POST",
                &format!("/v1/vms/{name}/start"),
                Some(String::new())
            )?
        ),
        CtlCmd::Failover { name } => {
            println!(
                "{}",
                call(
                    "POST",
                    &format!("/v1/vms/{name}/failover"),
                    Some(String::new())
                )?
            )
        }
        CtlCmd::Delete { name } => {
            println!("{}", call("DELETE", &format!("/v1/vms/{name}"), None)?)
        }
        CtlCmd::Token { name, role } => {
            let body = serde_json::json!({ "name": name, "role": role }).to_string();
            println!("{}", call("POST", "/v1/tokens", Some(body))?);
        }
        CtlCmd::Metrics => print!("{}", call("GET", "/metrics", None)?),
    }
    Ok(0)
}
