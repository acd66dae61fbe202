//! Figures of a replication run: per epoch and in total, as text and JSON.

use std::time::Duration;

use crate::capture;

/// Per-epoch figures.
#[derive(Clone, Debug, Default)]
pub struct EpochFigures {
    /// Epoch.
    pub seq: u64,
    /// Full or incremental.
    pub full: bool,
    /// Pause (stop to resume).
    pub pause: Duration,
    /// Dirty pages.
    pub pages: u64,
    /// Raw page bytes.
    pub raw_bytes: u64,
    /// Bytes on the wire (the container).
    pub wire_bytes: u64,
    /// Pause phases: stop vCPUs, capture state, harvest dirty log, copy pages.
    pub phases: capture::PauseTimes,
    /// Resuming the vCPUs (the last pause phase).
    pub resume: Duration,
    /// From the pause's start until the last vCPU thread took its `Resume`
    /// and went back to the guest: the pause the guest saw (filled in at
    /// the next epoch; `None` until then, and for good when another pause,
    /// such as the runner's halt probe, came in between).
    pub guest_pause: Option<Duration>,
    /// Encoding the container after the resume (not part of the pause).
    pub encode: Duration,
    /// When the pause began, from the replicator's creation.
    pub at: Duration,
    /// Pages sent as XOR deltas.
    pub delta_pages: u64,
    /// The epoch interval in force when this epoch was taken.
    pub interval: Duration,
    /// Disk blocks (4 KiB) the epoch carries.
    pub disk_blocks: u64,
}

/// Figures of the whole run.
#[derive(Clone, Debug, Default)]
pub struct ReplicationStats {
    /// Every epoch sent.
    pub epochs: Vec<EpochFigures>,
    /// Ack latencies (send to ack).
    pub ack_latency: Vec<Duration>,
    /// Stalls: times an epoch fell due while the in-flight limit was reached
    /// (it then waits for an ack).
    pub stalled_ticks: u64,
    /// Epochs ended early because a NIC held frames (output-triggered).
    pub output_epochs: u64,
    /// Per NIC at the end: the gate's bounds and what it saw.
    pub nets: Vec<(
        crate::devices::virtio::net::GateLimits,
        crate::devices::virtio::net::GateStats,
    )>,
    /// Times the shadow was lost.
    pub shadow_losses: u64,
    /// The asynchronous spare's lag when last seen: (epochs, age of its
    /// oldest unacknowledged epoch).
    pub async_lag: Option<(u64, Duration)>,
    /// Live copies to joining spares: (rounds, bytes copied while running, seconds).
    pub syncs: Vec<(u32, u64, f64)>,
    /// Protection before the guest started: (time to the ack, page bytes sent).
    pub protected_before_start: Option<(Duration, u64)>,
    /// The engine's CPU by thread every [`crate::cpu::MARK_EVERY`] epochs,
    /// each taken right after the next epoch's pause.
    pub cpu_marks: Vec<crate::cpu::CpuMark>,
}

/// The value at quantile `p` (0..=1) of `v` (sorted in place).
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A one-line summary of a run's figures.
pub fn summary(s: &ReplicationStats) -> String {
    let mut pauses: Vec<Duration> = s
        .epochs
        .iter()
        .filter(|e| !e.full)
        .map(|e| e.pause)
        .collect();
    let mut acks = s.ack_latency.clone();
    let pages: u64 = s.epochs.iter().map(|e| e.pages).sum();
    let raw: u64 = s.epochs.iter().map(|e| e.raw_bytes).sum();
    let wire: u64 = s.epochs.iter().map(|e| e.wire_bytes).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "replication summary: {} epochs ({} full), incremental pause p50 {:.3} ms p99 {:.3} ms max {:.3} ms, \
         {} dirty pages, {} bytes raw -> {} on the wire, ack latency p50 {:.2} ms p99 {:.2} ms, \
         {} ticks stalled, shadow lost {} times{}",
        s.epochs.len(),
        s.epochs.iter().filter(|e| e.full).count(),
        ms(percentile(&mut pauses, 0.5)),
        ms(percentile(&mut pauses, 0.99)),
        ms(pauses.iter().copied().max().unwrap_or_default()),
        pages,
        raw,
        wire,
        ms(percentile(&mut acks, 0.5)),
        ms(percentile(&mut acks, 0.99)),
        s.stalled_ticks,
        s.shadow_losses,
        s.async_lag
            .map(|(n, d)| format!(", asynchronous spare {n} epochs ({:.1} ms) behind", ms(d)))
            .unwrap_or_default()
    )
}

/// The run's figures as JSON (for `--stats-json` and `hotspare bench`).
pub fn stats_json(
    s: &ReplicationStats,
    interval: Duration,
    wall: Duration,
    vcpu_cpu: Duration,
) -> serde_json::Value {
    let us = |d: Duration| d.as_micros() as u64;
    let process = crate::cpu::process_cpu_time();
    serde_json::json!({
        "interval_ms": interval.as_secs_f64() * 1e3,
        "wall_s": wall.as_secs_f64(),
        "process_cpu_s": process.as_secs_f64(),
        "vcpu_cpu_s": vcpu_cpu.as_secs_f64(),
        "engine_cpu_s": process.saturating_sub(vcpu_cpu).as_secs_f64(),
        // CPU by thread name; the caller (the thread that paused, captured
        // and copied every epoch) as `hs-main`.
        "threads_cpu_s": crate::cpu::cpu_seconds_by_thread(Some("hs-main")),
        "stalled_ticks": s.stalled_ticks,
        "output_epochs": s.output_epochs,
        "nets": s.nets.iter().map(|(l, g)| serde_json::json!({
            "limit_bytes": l.bytes, "limit_frames": l.frames,
            "frames_sent": g.sent, "write_errors": g.write_errors,
            "times_full": g.full, "max_held_bytes": g.max_held_bytes,
            "max_held_frames": g.max_held_frames,
        })).collect::<Vec<_>>(),
        "shadow_losses": s.shadow_losses,
        "async_lag": s.async_lag.map(|(n, d)| serde_json::json!({
            "epochs": n, "ms": d.as_secs_f64() * 1e3
        })),
        "protected_before_start": s.protected_before_start.map(|(d, bytes)| serde_json::json!({
            "ms": d.as_secs_f64() * 1e3, "bytes": bytes
        })),
        "syncs": s.syncs.iter().map(|&(rounds, bytes, secs)| serde_json::json!({
            "rounds": rounds, "bytes": bytes, "seconds": secs
        })).collect::<Vec<_>>(),
        "cpu_marks": s.cpu_marks,
        "ack_latency_us": s.ack_latency.iter().map(|d| us(*d)).collect::<Vec<_>>(),
        "epochs": s.epochs.iter().map(|e| serde_json::json!({
            "seq": e.seq,
            "full": e.full,
            "t_ms": e.at.as_secs_f64() * 1e3,
            "pause_us": us(e.pause),
            "stop_us": us(e.phases.stop),
            "quiesce_us": us(e.phases.quiesce),
            "disk_blocks": e.disk_blocks,
            "state_us": us(e.phases.state),
            "harvest_us": us(e.phases.harvest),
            "copy_us": us(e.phases.copy),
            "resume_us": us(e.resume),
            "guest_pause_us": e.guest_pause.map(us),
            "encode_us": us(e.encode),
            "pages": e.pages,
            "raw_bytes": e.raw_bytes,
            "wire_bytes": e.wire_bytes,
            "delta_pages": e.delta_pages,
            "interval_ms": e.interval.as_secs_f64() * 1e3,
        })).collect::<Vec<_>>(),
    })
}
