//! The standby's takeover: claiming the VM from the arbiter (a synchronous
//! spare at once, an asynchronous one after its grace period) and resuming
//! the guest as the new primary, which takes the old primary's other
//! spares as its own. A child module of `standby`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::super::arbiter::Arbiter;
use super::super::arbitration::mark_stopped;
use super::super::commit::Kind;
use super::super::fencing::{self, Outcome};
use super::super::liveness::StandbyInput;
use super::super::primary::{PrimaryConfig, Replicator, ShadowSpec};
use super::super::wire::{self, FenceInfo};
use super::{lock, Shadow};
use crate::error::{EngineError, Result};
use crate::runner;
use crate::vcpu::StopReason;

/// Everything a takeover needs besides the shadow.
pub(super) struct Takeover {
    pub(super) term: u64,
    pub(super) console: Box<dyn std::io::Write + Send>,
    /// Last sign of life from the primary to the claim.
    pub(super) detection: Duration,
    /// The claim to the arbiter's grant.
    pub(super) arbiter_time: Duration,
    /// When the grant arrived.
    pub(super) decided: Instant,
    /// The next primary's configuration (its spares: `--reprotect`; the
    /// record's other spares are added at the takeover).
    pub(super) reprotect: PrimaryConfig,
    pub(super) arbiter: Option<Box<dyn Arbiter>>,
    pub(super) stats_json: Option<std::path::PathBuf>,
    pub(super) took_over: Arc<AtomicU64>,
    /// When the primary was last heard.
    pub(super) last_heard: Arc<Mutex<Instant>>,
}

/// Asks the arbiter for the VM in `term` (the primary of `term - 1` looks
/// gone). Without an arbiter every claim is granted.
/// An asynchronous spare asks only once `grace` has passed since the
/// claim began (`since`), so a live synchronous spare always wins first.
pub(super) fn claim(
    shadow: &Arc<Mutex<Shadow>>,
    arbiter: &mut Option<Box<dyn Arbiter>>,
    term: u64,
    seq: u64,
    since: Instant,
    grace: Duration,
) -> StandbyInput {
    if shadow.is_poisoned() {
        // Never claim a VM this standby cannot resume (the decision loop
        // ends the process).
        eprintln!(
            "hotspare: {}: not claiming the VM",
            EngineError::ShadowPoisoned
        );
        return StandbyInput::ClaimRefused;
    }
    let Some(arb) = arbiter.as_deref_mut() else {
        return StandbyInput::ClaimGranted;
    };
    let f = {
        let Ok(sh) = lock(shadow) else {
            return StandbyInput::ClaimRefused;
        };
        let Some(f) = sh.fence.clone() else {
            eprintln!(
                "hotspare: no fencing information with the committed epoch {seq}: not taking over"
            );
            return StandbyInput::ClaimRefused;
        };
        // Never win the record without a state to resume: the old primary
        // would stop and nobody would run the VM.
        if sh.state.is_none() || sh.vm.is_none() || sh.diverged.is_some() {
            eprintln!("hotspare: this standby has no usable committed state: not claiming the VM");
            return StandbyInput::ClaimRefused;
        }
        f
    };
    let Some(followed) = term.checked_sub(1) else {
        return StandbyInput::ClaimRefused;
    };
    if f.async_spare && since.elapsed() < grace {
        // Not yet: a synchronous spare may still claim the VM.
        return StandbyInput::ClaimUnanswered;
    }
    let res = if f.async_spare {
        fencing::transact(arb, &f.vm, |c| {
            fencing::promote_async(c, followed, &f.spare)
        })
    } else {
        fencing::transact(arb, &f.vm, |c| {
            fencing::promote(c, followed, f.sync, &f.spare)
        })
    };
    match res {
        Ok(Outcome::Won(_)) => {
            eprintln!(
                "hotspare: the arbiter granted VM {:?} to this standby ({:?}) in term {term}",
                f.vm, f.spare
            );
            StandbyInput::ClaimGranted
        }
        Ok(Outcome::Refused(r)) => {
            eprintln!(
                "hotspare: the arbiter refused the takeover of VM {:?}: {r}",
                f.vm
            );
            StandbyInput::ClaimRefused
        }
        Err(e) => {
            eprintln!("hotspare: primary silent but {e}: staying a shadow, asking again");
            StandbyInput::ClaimUnanswered
        }
    }
}

/// Locks the shadow for a takeover in `term` and marks it taken over, so
/// no epoch is applied any more and frames of older terms are answered as
/// superseded. Poisoned (a commit panicked): refused before anything
/// changes.
pub(super) fn seize<'a>(
    shadow: &'a Mutex<Shadow>,
    term: u64,
    took_over: &AtomicU64,
) -> Result<MutexGuard<'a, Shadow>> {
    let mut sh = lock(shadow)?;
    sh.taken_over = true;
    sh.term = term;
    took_over.store(term, Ordering::SeqCst);
    Ok(sh)
}

pub(super) fn take_over(shadow: &Arc<Mutex<Shadow>>, t: Takeover) -> Result<i32> {
    let Takeover {
        term,
        console,
        detection,
        arbiter_time,
        decided,
        reprotect,
        mut arbiter,
        stats_json,
        took_over,
        last_heard,
    } = t;
    let mut sh = seize(shadow, term, &took_over)?;
    let fence = sh.fence.clone();
    let state = sh
        .state
        .take()
        .ok_or_else(|| EngineError::Config("takeover without a committed epoch".into()))?;
    let seq = sh.seq;
    let sh_committed_age = sh.committed_at.map_or(Duration::ZERO, |c| {
        // A plain time stamp: a panic cannot leave it half-written.
        let heard = *last_heard.lock().unwrap_or_else(|e| e.into_inner());
        heard.saturating_duration_since(c)
    });
    let (out_start, out) = sh.output.take();
    let net_frames = sh.frames.take();
    let reports = std::mem::take(&mut sh.reports);
    sh.report_verified();
    if let Some(s) = sh.diverged {
        return Err(EngineError::Config(format!(
            "refusing to take over: shadow memory diverged at epoch {s}"
        )));
    }
    let mut vm = sh
        .vm
        .take()
        .ok_or_else(|| EngineError::Config("takeover without a prepared VM".into()))?;
    drop(sh);
    vm.restore_state(&state.vcpus, &state.vm)?;
    // The committed frames the primary may not have sent go out first: the
    // restored NIC may send the guest's next frames as soon as it is
    // restored (its TX ring can hold chains the old device had not taken).
    for (g, frames) in vm.nets.iter().zip(net_frames) {
        device(g, "a NIC's output gate")?.send_committed(&frames);
    }
    vm.restore_devices(&state.devices)?;
    vm.set_console(console, out_start);
    let out_end = out_start.checked_add(out.len() as u64);
    if out_end != Some(state.console_pos) {
        return Err(EngineError::Config(format!(
            "epoch {seq}: output ends at {out_end:?} but the checkpoint's console is at {}",
            state.console_pos
        )));
    }
    // Release the committed output the primary may not have released yet.
    device(&vm.console_gate(), "the console")?.emit(&out);
    // Then the announcement of the guest's MACs (restored with the
    // devices) from their new port.
    for g in &vm.nets {
        let announcer = {
            let mut g = device(g, "a NIC's output gate")?;
            g.announce();
            g.guest_announcer()
        };
        // And the guest itself, if its driver negotiated GUEST_ANNOUNCE (it
        // then sends gratuitous ARPs for every address it has).
        if let Some(a) = announcer {
            a();
        }
    }
    if fence.as_ref().is_some_and(|f| f.async_spare) {
        eprintln!(
            "hotspare: ASYNCHRONOUS spare takes over from epoch {seq}, committed {:.1} ms before it last heard the primary: \
             the guest loses what it did after that; console output the primary released after byte {} may be repeated differently",
            sh_committed_age.as_secs_f64() * 1e3,
            out_start + out.len() as u64
        );
    }
    let mut rep =
        next_primary(reprotect, fence.as_ref(), term, seq).map(|cfg| Replicator::new(&vm, cfg));
    vm.start()?;
    let activation = decided.elapsed();
    if !vm.nets.is_empty() {
        // Announce twice more (at 50 and 150 ms, as QEMU's announce-self
        // does): a switch may miss the first while the port comes up.
        let gates = vm.nets.clone();
        std::thread::spawn(move || {
            for wait in [50, 100] {
                std::thread::sleep(Duration::from_millis(wait));
                for g in &gates {
                    // The guest runs: announcing again is harmless, and a
                    // device that panicked is the running VM's to report.
                    g.lock().unwrap_or_else(|e| e.into_inner()).announce();
                }
            }
        });
    }
    let running_at = std::time::SystemTime::now();
    eprintln!(
        "hotspare: standby TAKING OVER as primary of term {term} from epoch {seq}; console resumes at byte {out_start}; \
         detection {:.1} ms, arbiter {:.2} ms, activation {:.2} ms",
        detection.as_secs_f64() * 1e3,
        arbiter_time.as_secs_f64() * 1e3,
        activation.as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    crate::events::emit(crate::events::Event::TookOver {
        term,
        epoch: seq,
        console_at: out_start,
        from_async: fence.as_ref().is_some_and(|f| f.async_spare),
        detection_ms: ms(detection),
        arbiter_ms: ms(arbiter_time),
        activation_ms: ms(activation),
    });
    crate::events::emit(crate::events::Event::Running { term });
    if let Some(path) = &stats_json {
        let us = |d: Duration| d.as_micros() as u64;
        let json = serde_json::json!({ "takeover": {
            "term": term,
            "seq": seq,
            "console_resumes_at": out_start,
            "detection_us": us(detection),
            "arbiter_us": us(arbiter_time),
            "activation_us": us(activation),
            "running_at_unix_ns": running_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }});
        if let Err(e) = std::fs::write(path, json.to_string()) {
            eprintln!("hotspare: writing {}: {e}", path.display());
        }
    }
    eprintln!("hotspare: {}", report(&reports));
    let reason = match rep.as_mut() {
        Some(r) => {
            eprintln!(
                "hotspare: the new primary re-protects itself (term {term}) with {}",
                r.spare_names()
            );
            let res = runner::supervise(&mut vm, Some(r as &mut dyn runner::Periodic));
            if let Err(e @ (EngineError::Superseded(_) | EngineError::HandOver(_))) = res {
                // Superseded: another copy owns the VM; a failed disk: the
                // spare takes over. Either way no goodbye and no release of
                // held output (the caller exits 76 or 75).
                return Err(e);
            }
            r.finish();
            res?
        }
        None => {
            tracing::warn!("the new primary runs UNPROTECTED (no spare configured)");
            let reason = runner::supervise(&mut vm, None)?;
            if let (Some(arb), Some(f)) = (arbiter.as_deref_mut(), &fence) {
                // The guest ended here: the VM may be started again.
                mark_stopped(arb, &f.vm, term, &f.spare, Duration::ZERO);
            }
            reason
        }
    };
    if let StopReason::Error(e) = &reason {
        return Err(EngineError::Vcpu(format!(
            "guest stopped on an error after takeover: {e}"
        )));
    }
    Ok(reason.exit_code())
}

/// Locks a device of the VM being taken over, before its vCPUs run.
/// Poisoned: a device thread panicked while holding it, so its state may
/// be half-written, and the takeover is refused rather than resume it.
fn device<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
    m.lock().map_err(|_| {
        EngineError::Config(format!(
            "refusing to take over: {what} is poisoned (a thread panicked while holding it)"
        ))
    })
}

/// The replication summary as the shadow saw it.
pub(super) fn report(r: &[(wire::EpochReport, u64)]) -> String {
    let us = |v: u64| Duration::from_micros(v);
    let mut pauses: Vec<Duration> = r
        .iter()
        .filter(|e| !e.0.full)
        .map(|e| us(e.0.pause_us))
        .collect();
    let mut acks: Vec<Duration> = r
        .iter()
        .filter(|e| e.0.last_ack_us > 0)
        .map(|e| us(e.0.last_ack_us))
        .collect();
    let pct = super::super::primary::percentile;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // The primary's figures come from the network: summed saturating.
    let sum =
        |f: fn(&(wire::EpochReport, u64)) -> u64| r.iter().map(f).fold(0, u64::saturating_add);
    let pages = sum(|e| e.0.pages);
    let raw = sum(|e| e.0.raw_bytes);
    let wire = sum(|e| e.1);
    format!(
        "replication summary: {} epochs committed ({} full); incremental pause p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
         {} dirty pages; {} bytes raw, {} bytes on the wire; ack latency p50 {:.2} ms, p99 {:.2} ms",
        r.len(),
        r.iter().filter(|e| e.0.full).count(),
        ms(pct(&mut pauses, 0.5)),
        ms(pct(&mut pauses, 0.99)),
        ms(pauses.iter().copied().max().unwrap_or_default()),
        pages,
        raw,
        wire,
        ms(pct(&mut acks, 0.5)),
        ms(pct(&mut acks, 0.99)),
    )
}

/// The new primary's configuration: `--reprotect`'s spares and the old
/// record's other spares (synchronous ones stay synchronous), fenced in the
/// won `term` under the name the old primary gave this standby. The old
/// record's spares may hold exactly the resumed epoch `seq` and then
/// continue from it without a copy. `None` without any spare.
fn next_primary(
    mut cfg: PrimaryConfig,
    fence: Option<&FenceInfo>,
    term: u64,
    seq: u64,
) -> Option<PrimaryConfig> {
    cfg.term = term;
    let me = fence.map(|f| f.spare.clone()).unwrap_or_default();
    let peers: Vec<String> = fence
        .map(|f| f.peers.iter().chain(&f.async_peers).cloned().collect())
        .unwrap_or_default();
    cfg.resumed = Some((seq, peers));
    if let Some(f) = fence {
        let others = f
            .peers
            .iter()
            .map(|p| (p, Kind::Sync))
            .chain(f.async_peers.iter().map(|p| (p, Kind::Async)));
        for (addr, kind) in others {
            if *addr != me && !cfg.shadows.iter().any(|s| &s.addr == addr) {
                cfg.shadows.push(ShadowSpec {
                    addr: addr.clone(),
                    kind,
                });
            }
        }
    }
    cfg.shadows.retain(|s| s.addr != me);
    match (&mut cfg.fencing, fence) {
        (Some(fc), Some(f)) => {
            // The record now names this standby (by the name its primary
            // gave it) as the primary of `term`: it won it.
            fc.vm = f.vm.clone();
            fc.name = f.spare.clone();
            fc.owned = true;
        }
        _ => cfg.fencing = None,
    }
    // With a control socket the agent adds spares later: keep a replicator.
    (!cfg.shadows.is_empty() || cfg.control.is_some()).then_some(cfg)
}
