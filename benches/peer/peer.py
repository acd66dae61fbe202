#!/usr/bin/env python3
"""Helpers of benches/peer/run.sh (standard library only).

  peer.py report --out DIR --params JSON
      Merges DIR/qemu/colo.jsonl, DIR/qemu/migration.jsonl and
      DIR/hotspare/bench.json (+ its raw runs) into DIR/peer.json and
      DIR/peer.md, and prints the Markdown. Without --params it re-renders
      DIR/peer.json's run (its parameters, host and versions are kept).

  peer.py livesync --hotspare BIN --guest ELF --mem-mib M --cmdline C
                   --interval-ms T --reps N --dir DIR [--reserve] [--pin-ends]
      Times hotspare's live full sync of a running guest: the primary starts
      unprotected, a standby appears after --warmup s (DIR/livesync.json).
      --pin-ends puts the primary on CPU 0 and the standby on CPU 1.
"""
import argparse, glob, json, os, re, statistics, subprocess, sys, time


# ----------------------------------------------------------------- livesync

def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(2)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def livesync(a):
    """A live full sync of a running, populated guest: the primary starts with no
    standby (unprotected), and after --warmup seconds a standby appears at its
    --shadow address; the primary's reconnect does the live pre-copy. This is
    what QEMU's migration does too (migbench migrates after a 2 s warm-up)."""
    os.makedirs(a.dir, exist_ok=True)
    key = os.path.join(a.dir, "key")
    # hotspare refuses a key file others may read (docs/security.md).
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    reps = []
    for rep in range(a.reps):
        port = free_port()
        plog, slog = (os.path.join(a.dir, f"{n}-{rep}.log") for n in ("primary", "standby"))
        evlog = os.path.join(a.dir, f"primary-{rep}.events")
        # --pin-ends: the primary on CPU 0 and the standby on CPU 1, as if
        # each end had a host (of one core) to itself.
        pin = (lambda cpu: ["taskset", "-c", str(cpu)]) if a.pin_ends else (lambda cpu: [])
        pri = subprocess.Popen(pin(0) + [a.hotspare, "run", "--kernel", a.guest, "--mem-mib", str(a.mem_mib),
                                "--cmdline", a.cmdline, "--console", os.path.join(a.dir, f"console-{rep}.txt"),
                                "--shadow", f"127.0.0.1:{port}", "--key-file", key,
                                "--arbiter", f"file:{a.dir}/arbiter", "--vm-id", f"peer-{rep}",
                                "--interval-ms", str(a.interval_ms), "--wait-shadow-ms", "0",
                                "--events", evlog] + (["--prefill", a.prefill] if a.prefill else []),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(plog, "w"))
        sb = None
        r = {"rep": rep}
        try:
            # The warm-up counts from the guest's first instruction, not the
            # process start: a prefill of guest RAM takes seconds before it.
            start_by = time.monotonic() + 60
            while not any(e.get("event") == "running" for e in read_jsonl(evlog)):
                if pri.poll() is not None or time.monotonic() > start_by:
                    raise RuntimeError(f"the guest did not start within 60 s; see {plog}")
                time.sleep(0.05)
            time.sleep(a.warmup)
            if pri.poll() is not None:
                raise RuntimeError(f"the guest ended within the {a.warmup} s warm-up; see {plog}")
            sb = subprocess.Popen(pin(1) + [a.hotspare, "standby", "--listen", f"127.0.0.1:{port}", "--key-file", key,
                                   "--arbiter", f"file:{a.dir}/arbiter",
                                   "--console", os.path.join(a.dir, f"shadow-{rep}.txt")]
                                  + (["--reserve-mib", str(a.mem_mib)] if a.reserve else []),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(slog, "w"))
            end = time.monotonic() + 30
            done = None
            while time.monotonic() < end and done is None and pri.poll() is None:
                time.sleep(0.05)
                evs = read_jsonl(evlog)
                copied = next((e for e in evs if e.get("event") == "live_copied"), None)
                prot = next((e for e in evs if e.get("event") == "protected"), None)
                if copied and prot:
                    done = (copied, prot)
            if done is None:
                raise RuntimeError(f"no live_copied and protected events from the primary within 30 s; "
                                   f"see {evlog} and {plog}")
            copied, prot = done
            joined = next(e for e in read_jsonl(evlog) if e.get("event") == "spare_joining")
            mib = copied["units"] * 4096 / (1 << 20)
            secs = copied["seconds"]
            # One live pass beside running epochs, then a catch-up round of what the
            # guest wrote meanwhile (if it wrote anything): no final pause.
            r.update(rounds=1 + int(copied.get("catch_up_units", 0) > 0), copied_mib=mib, wire_mib=copied["wire_bytes"] / (1 << 20), seconds=secs,
                     final_pause_ms=None, final_pages=None,
                     to_protected_s=(prot["at_ms"] - joined["at_ms"]) / 1e3,
                     copied_mib_s=mib / secs, guest_mib_s=a.mem_mib / secs)
            # In sync means protected: the shadow applied the copy and committed an epoch after it.
            r["protected_guest_mib_s"] = a.mem_mib / r["to_protected_s"]
            # The share of the copy sent uncompressed (chunk by chunk, whichever keeps pace best).
            if "plain_units" in copied:
                r["plain_share"] = copied["plain_units"] / max(copied["units"], 1)
        except Exception as e:  # recorded, the report lists it
            r["error"] = str(e)
        finally:
            for p in (sb, pri):  # the standby first: no takeover
                if p is not None:
                    stop(p)
        print(f"  live sync rep {rep}: " + (r["error"] if "error" in r else
              f"{r['copied_mib']:.1f} MiB copied in {r['seconds']:.3f} s, {r['rounds']} rounds"), file=sys.stderr)
        reps.append(r)
    json.dump({"mem_mib": a.mem_mib, "warmup_s": a.warmup, "spare_reserves_memory": a.reserve,
               "ends_pinned": a.pin_ends, "cmdline": a.cmdline, "reps": reps},
              open(os.path.join(a.dir, "livesync.json"), "w"), indent=2)
    return 0 if any("error" not in r for r in reps) else 1


# ------------------------------------------------------------------- report

def med(vals):
    v = [x for x in vals if isinstance(x, (int, float))]
    return statistics.median(v) if v else None


def read_jsonl(path):
    """JSON lines (QEMU harness results, `hotspare run --events`); a line that
    does not parse (one still being written) becomes an {"error": ...} entry."""
    out = []
    if os.path.exists(path):
        for line in open(path, errors="replace"):
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append({"error": f"unparsable line: {line[:200]}"})
    return out


def colo_summary(runs):
    ok = [r for r in runs if "error" not in r and r.get("pause_ms_median") is not None]
    s = {"runs": len(runs), "ok": len(ok)}
    if not ok:
        s["errors"] = [colo_failure(r) for r in runs] or ["no COLO run produced a result"]
        return s
    dirty = [r["secondary_dirty_pages_per_checkpoint_median"] * r["checkpoints_per_s"]
             for r in ok if r.get("secondary_dirty_pages_per_checkpoint_median") is not None]
    s.update({
        "qemu": ok[0].get("qemu"),
        "pause_ms_median": med([r["pause_ms_median"] for r in ok]),
        "pause_ms_p90": med([r["pause_ms_p90"] for r in ok]),
        "pause_ms_max": max(r["pause_ms_max"] for r in ok),
        "checkpoints_per_s": med([r["checkpoints_per_s"] for r in ok]),
        "checkpoints_per_s_configured": 1000.0 / ok[0]["delay_ms"] if ok[0]["delay_ms"] else None,
        "paused_fraction": med([r.get("paused_fraction") for r in ok]),
        "dirty_pages_per_checkpoint": med([r.get("secondary_dirty_pages_per_checkpoint_median") for r in ok]),
        "dirty_pages_per_s": med(dirty),
        "guest_page_writes_per_s": med([r.get("guest_dirty_pages_per_s_under_colo") for r in ok]),
        "guest_page_writes_per_s_unprotected": med([r.get("guest_dirty_pages_per_s") for r in ok]),
        "initial_sync_s": med([r.get("initial_sync_s") for r in ok]),
        "primary_cpu_util": med([r.get("primary_cpu_util") for r in ok]),
        "secondary_cpu_util": med([r.get("secondary_cpu_util") for r in ok]),
        "pause_phase_medians_ms": {k: med([r.get("pause_phase_medians_ms", {}).get(k) for r in ok])
                                   for k in ("save_ms", "to_received_ms", "to_loaded_ms", "to_run_ms")},
    })
    fo = [r["failover"] for r in ok if isinstance(r.get("failover"), dict)]
    if fo:
        s["failover"] = {
            "kill_to_running_ms": med([f.get("kill_to_running_ms") for f in fo]),
            "kill_to_guest_progress_ms": med([f.get("kill_to_guest_progress_ms") for f in fo]),
            "lost_heartbeat_cmd_ms": med([f.get("lost_heartbeat_cmd_ms") for f in fo]),
            "secondary_running": sum(1 for f in fo if f.get("secondary_status") == "running"),
            "runs": len(fo),
        }
    if len(ok) < len(runs):
        s["errors"] = [colo_failure(r) for r in runs if r not in ok]
    return s


def colo_failure(r):
    """Why a COLO rep has no result: its error, or (a rep that ran) what it measured."""
    if r.get("error"):
        return r["error"]
    return (f"a rep took {r.get('checkpoints', 0)} checkpoints in its {r.get('window_s')} s window "
            f"(status after it: {r.get('status_after_window')}), so no pauses were measured")


def mig_summary(runs):
    ok = [r for r in runs if r.get("status") == "completed" and r.get("total_time_ms")]
    s = {"runs": len(runs), "ok": len(ok)}
    if not ok:
        s["errors"] = [r.get("error") or f"status {r.get('status')}" for r in runs] or ["no migration run produced a result"]
        return s
    mib = 1 << 20

    def processed(r):  # every page QEMU looked at and sent (normal + zero), re-sends included
        return ((r.get("normal_pages") or 0) + (r.get("zero_pages") or 0)) * 4096 / mib

    s.update({
        "total_time_ms": med([r["total_time_ms"] for r in ok]),
        "processed_mib_s": med([processed(r) / (r["total_time_ms"] / 1e3) for r in ok]),
        "guest_mib_s": med([r["mem_mb"] / (r["total_time_ms"] / 1e3) for r in ok]),
        "wire_mib_s": med([(r.get("ram_transferred_B") or 0) / mib / (r["total_time_ms"] / 1e3) for r in ok]),
        "processed_mib": med([processed(r) for r in ok]),
        "wire_mib": med([(r.get("ram_transferred_B") or 0) / mib for r in ok]),
        "qemu_downtime_ms": med([r.get("qemu_downtime_ms") for r in ok]),
        "blackout_ms": med([r.get("blackout_ms") for r in ok]),
        "dirty_sync_count": med([r.get("dirty_sync_count") for r in ok]),
        "guest_page_writes_per_s": med([r.get("guest_dirty_pages_per_s") for r in ok]),
        "dst_guest_progressing": sum(1 for r in ok if r.get("dst_guest_progressing")),
    })
    if len(ok) < len(runs):
        s["errors"] = [r.get("error") or f"status {r.get('status')}" for r in runs if r not in ok]
    return s


def number_after(text, key):
    m = re.search(re.escape(key) + r"([0-9.]+)", text)
    return float(m.group(1)) if m else None


def hotspare_summary(d):
    p = os.path.join(d, "bench.json")
    if not os.path.exists(p):
        return {"errors": [f"{p} missing (hotspare bench failed; see {d}/bench.log)"]}
    b = json.load(open(p))
    runs = os.path.join(d, "runs")
    dirty, paused, writes_rate = [], [], []
    c = b.get("config", {})
    for f in sorted(glob.glob(os.path.join(runs, "stats-r*.json"))):
        try:
            st = json.load(open(f))
        except (OSError, json.JSONDecodeError):
            continue
        sy = (st.get("syncs") or [{}])[0]
        prot = st.get("wall_s", 0) - sy.get("seconds", 0)
        inc = [e for e in st.get("epochs", []) if not e.get("full")]
        if prot > 0:
            dirty.append(sum(e.get("pages", 0) for e in inc) / prot)
            paused.append(sum(e.get("pause_us", 0) for e in inc) / 1e6 / prot)
        if st.get("wall_s"):
            writes_rate.append(c.get("rounds", 0) * c.get("writes", 0) / st["wall_s"])
    take = []
    for f in sorted(glob.glob(os.path.join(runs, "standby-t*.log"))):
        t = open(f, errors="replace").read()
        det, act = number_after(t, "detection "), number_after(t, "activation ")
        if det is not None and act is not None:
            take.append(det + act)
    b["derived"] = {
        "dirty_pages_per_s": med(dirty),
        "paused_fraction": med(paused),
        "takeover_total_ms": med(take) if take else (
            (b.get("takeover_ms", {}).get("detection_p50") or 0) + (b.get("takeover_ms", {}).get("activation_p50") or 0)),
        "takeovers_measured": len(take),
        "guest_page_writes_per_s_replicated": med(writes_rate),
        "guest_page_writes_per_s_unprotected": (c.get("rounds", 0) * c.get("writes", 0) / b["guest"]["baseline_s"])
        if b.get("guest", {}).get("baseline_s") else None,
    }
    return b


def livesync_summary(d):
    p = os.path.join(d, "livesync.json")
    if not os.path.exists(p):
        return {"errors": [f"{p} missing (the live-sync measurement did not run; see run.sh output)"]}
    j = json.load(open(p))
    ok = [r for r in j["reps"] if "error" not in r]
    s = {"runs": len(j["reps"]), "ok": len(ok), "warmup_s": j.get("warmup_s"), "cmdline": j.get("cmdline"),
         "spare_reserves_memory": j.get("spare_reserves_memory", False)}
    for k in ("seconds", "guest_mib_s", "copied_mib", "copied_mib_s", "wire_mib", "rounds", "final_pause_ms", "final_pages",
              "to_protected_s", "protected_guest_mib_s", "plain_share"):
        s[k] = med([r.get(k) for r in ok])
    errs = [r["error"] for r in j["reps"] if "error" in r]
    if errs:
        s["errors"] = errs
    return s


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def fmt(v, nd=2, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        s = f"{v:,.{nd}f}"
    else:
        s = f"{v:,}"
    return s + (f" {unit}" if unit else "")


def report(a):
    out = a.out
    old = {}
    if os.path.exists(os.path.join(out, "peer.json")):  # re-rendering keeps what run.sh recorded
        try:
            old = json.load(open(os.path.join(out, "peer.json")))
        except json.JSONDecodeError:
            pass
    params = json.loads(a.params) if a.params else old.get("params")
    if not params:
        raise SystemExit("peer.py report: --params is needed (no earlier peer.json in --out)")
    colo = colo_summary(read_jsonl(os.path.join(out, "qemu", "colo.jsonl")))
    mig = mig_summary(read_jsonl(os.path.join(out, "qemu", "migration.jsonl")))
    hs = hotspare_summary(os.path.join(out, "hotspare"))
    hs["live_sync"] = ls = livesync_summary(os.path.join(out, "hotspare-livesync"))
    if a.extra and os.path.exists(a.extra):
        extra = json.load(open(a.extra))
    else:
        extra = {k: old[k] for k in ("started", "command", "host", "versions", "hotspare_workload", "timings_s")
                 if k in old}

    def g(d, *ks):
        return _get(d, ks)

    hs_p50, hs_p99, hs_max = g(hs, "pause_ms", "p50"), g(hs, "pause_ms", "p99"), g(hs, "pause_ms", "max")
    hs_rate, hs_conf = g(hs, "epoch_rate_hz", "achieved"), g(hs, "epoch_rate_hz", "configured")
    hs_sync = g(hs, "full_sync_mib_s")
    hs_take = g(hs, "derived", "takeover_total_ms")
    ratios = {
        "pause_p50": ratio(hs_p50, colo.get("pause_ms_median")),
        "pause_p99_vs_colo_p90": ratio(hs_p99, colo.get("pause_ms_p90")),
        "pause_max": ratio(hs_max, colo.get("pause_ms_max")),
        "epoch_rate_achieved": ratio(hs_rate, colo.get("checkpoints_per_s")),
        # Until the spare is protected (the copy applied and an epoch committed after it), not only
        # until the primary has sent the copy: QEMU's total time also ends with the destination complete.
        "full_sync_guest_mib_s": ratio(ls.get("protected_guest_mib_s"), mig.get("guest_mib_s")),
        "full_sync_copied_mib_s": ratio(ls.get("copied_mib_s"), mig.get("processed_mib_s")),
        "full_sync_wire_mib": ratio(ls.get("wire_mib"), mig.get("wire_mib")),
        "takeover": ratio(hs_take, g(colo, "failover", "kill_to_running_ms")),
    }
    errors = []
    for name, s in (("QEMU COLO", colo), ("QEMU live migration", mig), ("hotspare bench", hs),
                    ("hotspare live sync", ls)):
        for e in s.get("errors", []) or []:
            errors.append(f"{name}: {e}")
    result = {"params": params, **extra, "ratios_hotspare_over_qemu": ratios,
              "qemu": {"colo": colo, "migration": mig}, "hotspare": hs, "errors": errors}
    json.dump(result, open(os.path.join(out, "peer.json"), "w"), indent=2, sort_keys=False)

    def r(x, better):
        if x is None:
            return "n/a"
        return f"{x:.3g}x"

    def target(x, op, lim):
        if x is None:
            return "n/a"
        ok = x <= lim if op == "<=" else (x >= lim if op == ">=" else x < lim)
        return ("met" if ok else "not met") + f" ({op} {lim:g})"

    fo = colo.get("failover", {})
    P = params
    lines = [
        f"hotspare vs QEMU, same run ({extra.get('started', '')}): {P['mem_mib']} MiB guests, "
        f"{P['delay_ms']} ms interval ({1000 / P['delay_ms']:.0f} Hz configured), guest dirty-rate setting "
        f"{P['rate_ppms']} pages/ms, working set {P['ws_mib']} MiB, {P['reps']} reps per side.",
        "",
        "| figure | hotspare | QEMU | hotspare / QEMU | better | issue target |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| checkpoint pause p50 (COLO: median) | {fmt(hs_p50, 2, 'ms')} | {fmt(colo.get('pause_ms_median'), 2, 'ms')} | "
        f"{r(ratios['pause_p50'], 'lower')} | lower | {target(ratios['pause_p50'], '<=', 0.125)} |",
        f"| pause p99 (hotspare) vs COLO p90 | {fmt(hs_p99, 2, 'ms')} | {fmt(colo.get('pause_ms_p90'), 2, 'ms')} | "
        f"{r(ratios['pause_p99_vs_colo_p90'], 'lower')} | lower | |",
        f"| pause max | {fmt(hs_max, 2, 'ms')} | {fmt(colo.get('pause_ms_max'), 2, 'ms')} | "
        f"{r(ratios['pause_max'], 'lower')} | lower | |",
        f"| checkpoints/s achieved / configured | {fmt(hs_rate, 1)} / {fmt(hs_conf, 0)} Hz | "
        f"{fmt(colo.get('checkpoints_per_s'), 1)} / {fmt(colo.get('checkpoints_per_s_configured'), 0)} Hz | "
        f"{r(ratios['epoch_rate_achieved'], 'higher')} | higher | "
        f"hotspare at {fmt(ratio(hs_rate, hs_conf), 3)} of configured: {target(ratio(hs_rate, hs_conf), '>=', 0.98)} |",
        f"| full sync of a running guest: guest RAM / time to in sync (QEMU 10: live migration total time) | "
        f"{fmt(ls.get('protected_guest_mib_s'), 0, 'MiB/s')} ({fmt(ls.get('to_protected_s'), 3, 's')} to protected; "
        f"copy sent in {fmt(ls.get('seconds'), 3, 's')}; spare memory "
        f"{'reserved before the copy' if ls.get('spare_reserves_memory') else 'allocated during the copy'}) | "
        f"{fmt(mig.get('guest_mib_s'), 0, 'MiB/s')} ({fmt((mig.get('total_time_ms') or 0) / 1e3 if mig.get('total_time_ms') else None, 3, 's')}) | "
        f"{r(ratios['full_sync_guest_mib_s'], 'higher')} | higher | {target(ratios['full_sync_guest_mib_s'], '>=', 3)} |",
        f"| full sync: MiB copied incl. re-sends / time (hotspare skips never-touched pages, QEMU counts the zero pages it scans) | "
        f"{fmt(ls.get('copied_mib_s'), 0, 'MiB/s')} ({fmt(ls.get('copied_mib'), 1, 'MiB')}) | "
        f"{fmt(mig.get('processed_mib_s'), 0, 'MiB/s')} ({fmt(mig.get('processed_mib'), 1, 'MiB')}) | "
        f"{r(ratios['full_sync_copied_mib_s'], 'higher')} | higher | |",
        f"| full sync: MiB on the wire | {fmt(ls.get('wire_mib'), 1, 'MiB')} | {fmt(mig.get('wire_mib'), 1, 'MiB')} | "
        f"{r(ratios['full_sync_wire_mib'], 'lower')} | lower | |",
        f"| full sync: final pause (QEMU: downtime / blackout); pre-copy rounds (QEMU: dirty syncs) | "
        f"{fmt(ls.get('final_pause_ms'), 2, 'ms')}; {fmt(ls.get('rounds'), 0)} | "
        f"{fmt(mig.get('qemu_downtime_ms'), 0, 'ms')} / {fmt(mig.get('blackout_ms'), 1, 'ms')}; {fmt(mig.get('dirty_sync_count'), 0)} | | context | |",
        f"| first protection (hotspare: parked guest at boot, full state to the ack; COLO: migration of the 2 s-old running guest into COLO state) | "
        f"{fmt(g(hs, 'protect_before_start_ms'), 1, 'ms')} | "
        f"{fmt((colo.get('initial_sync_s') or 0) * 1e3 if colo.get('initial_sync_s') is not None else None, 0, 'ms')} | | context | |",
        f"| takeover: primary killed to shadow running | {fmt(hs_take, 1, 'ms')} (detection + activation, automatic) | "
        f"{fmt(fo.get('kill_to_running_ms'), 1, 'ms')} (x-colo-lost-heartbeat sent at once by the harness) | "
        f"{r(ratios['takeover'], 'lower')} | lower | {target(ratios['takeover'], '<', 1)} |",
        f"| dirty pages per checkpoint (p50; COLO: secondary's median) | {fmt(g(hs, 'dirty_pages_per_epoch_p50'), 0)} | "
        f"{fmt(colo.get('dirty_pages_per_checkpoint'), 0)} | | context | |",
        f"| measured dirty pages/s under protection | {fmt(g(hs, 'derived', 'dirty_pages_per_s'), 0)} | "
        f"{fmt(colo.get('dirty_pages_per_s'), 0)} | | context | |",
        f"| guest page writes/s, unprotected / protected | "
        f"{fmt(g(hs, 'derived', 'guest_page_writes_per_s_unprotected'), 0)} / {fmt(g(hs, 'derived', 'guest_page_writes_per_s_replicated'), 0)} | "
        f"{fmt(colo.get('guest_page_writes_per_s_unprotected'), 0)} / {fmt(colo.get('guest_page_writes_per_s'), 0)} | | context | |",
        f"| paused fraction of wall time | {fmt(g(hs, 'derived', 'paused_fraction'), 3)} | {fmt(colo.get('paused_fraction'), 3)} | | context | |",
        "",
        f"Runs that worked: COLO {colo.get('ok', 0)}/{colo.get('runs', 0)}, migration {mig.get('ok', 0)}/{mig.get('runs', 0)}, "
        f"hotspare {'yes' if 'pause_ms' in hs else 'no'} "
        f"({fmt(g(hs, 'epochs_measured'), 0)} epochs, {g(hs, 'derived', 'takeovers_measured') or 0} takeovers), "
        f"hotspare live sync {ls.get('ok', 0)}/{ls.get('runs', 0)}. `hotspare bench` full_sync_mib_s = {fmt(hs_sync, 0)} "
        f"(0 when its guests start parked and get their whole state in one first epoch, so there is no live pre-copy to time).",
        f"QEMU: COLO {colo.get('qemu') or 'n/a'} with the TCP_NODELAY shim; migration {extra.get('versions', {}).get('qemu_migration', 'n/a')}. "
        f"hotspare {extra.get('versions', {}).get('hotspare', 'n/a')}; workload `{_hs_workload(hs)}`.",
    ]
    ratios_svg(ratios, os.path.join(out, "ratios.svg"),
               f"hotspare / QEMU, same run: {P['mem_mib']} MiB, {P['delay_ms']} ms, {P['rate_ppms']} pages/ms")
    plots = ["ratios.svg"] + [f"hotspare/{n}" for n in ("pause_over_time.svg", "pause_histogram.svg", "bytes_per_epoch.svg")
                              if os.path.exists(os.path.join(out, "hotspare", n))]
    lines += ["", "Plots: " + ", ".join(f"[{n}]({n})" for n in plots) + "."]
    if errors:
        lines += ["", "**Failures:**"] + [f"- {e}" for e in errors]
    md = "\n".join(lines) + "\n"
    open(os.path.join(out, "peer.md"), "w").write(md)
    print(md)
    return 0 if not errors else 3


def ratios_svg(ratios, path, title):
    """Horizontal bars of hotspare/QEMU ratios on a log scale, with the issue's
    targets as ticks; green when hotspare is on the better side of 1."""
    import math
    items = [  # (key, label, better, target)
        ("pause_p50", "pause p50 / COLO median", "lower", 0.125),
        ("pause_p99_vs_colo_p90", "pause p99 / COLO p90", "lower", 0.25),
        ("pause_max", "pause max / COLO max", "lower", None),
        ("epoch_rate_achieved", "checkpoints/s / COLO", "higher", None),
        ("full_sync_guest_mib_s", "full sync / QEMU 10 migration", "higher", 3.0),
        ("takeover", "kill to running / COLO", "lower", 1.0),
    ]
    W, row, left, top = 820, 34, 320, 50
    H = top + row * len(items) + 40
    lo, hi = math.log10(0.01), math.log10(100.0)
    def x(v):
        v = min(max(v, 10 ** lo), 10 ** hi)
        return left + (math.log10(v) - lo) / (hi - lo) * (W - left - 30)
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    for t in (0.01, 0.1, 1, 10, 100):
        s.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 8}" y2="{H - 34}" stroke="{"#333" if t == 1 else "#ddd"}"/>')
        s.append(f'<text x="{x(t):.1f}" y="{H - 20}" text-anchor="middle">{t:g}x</text>')
    for i, (k, label, better, tgt) in enumerate(items):
        y = top + i * row
        v = ratios.get(k)
        s.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{label} ({better} better)</text>')
        if v is None:
            s.append(f'<text x="{x(1) + 6:.1f}" y="{y + 15}">n/a</text>')
            continue
        good = v < 1 if better == "lower" else v > 1
        a, b = sorted((x(1), x(v)))
        s.append(f'<rect x="{a:.1f}" y="{y + 4}" width="{max(b - a, 1):.1f}" height="16" '
                 f'fill="{"#2ca02c" if good else "#d62728"}" fill-opacity="0.75"/>')
        s.append(f'<text x="{b + 4 if v >= 1 else a - 4:.1f}" y="{y + 16}" '
                 f'text-anchor="{"start" if v >= 1 else "end"}">{v:.3g}x</text>')
        if tgt is not None:
            s.append(f'<line x1="{x(tgt):.1f}" x2="{x(tgt):.1f}" y1="{y + 1}" y2="{y + 23}" stroke="black" stroke-width="2" '
                     f'stroke-dasharray="3,2"/>')
    s.append(f'<text x="{left}" y="{H - 4}" font-size="11">dashed: the issue\'s target; bars start at parity (1x)</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")


def _get(d, ks):
    for k in ks:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _hs_workload(hs):
    c = hs.get("config") or {}
    if not c:
        return "n/a"
    return (f"--profile {c.get('profile')} --pages {c.get('pages')} --writes {c.get('writes')} "
            f"--spin {c.get('spin')} --rate {c.get('rate')} --rounds {c.get('rounds')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("livesync")
    l.add_argument("--hotspare", required=True)
    l.add_argument("--guest", required=True)
    l.add_argument("--mem-mib", type=int, required=True)
    l.add_argument("--cmdline", required=True)
    l.add_argument("--interval-ms", type=int, required=True)
    l.add_argument("--warmup", type=float, default=2.0)
    l.add_argument("--reps", type=int, default=3)
    l.add_argument("--dir", required=True)
    l.add_argument("--prefill", default=None, help="fill the guest's RAM from this file before boot")
    l.add_argument("--reserve", action="store_true",
                   help="the standby reserves (creates and populates) the guest's memory before it listens")
    l.add_argument("--pin-ends", action="store_true",
                   help="the primary on CPU 0, the standby on CPU 1 (each end a one-core host of its own)")
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--params", default=None, help="run parameters as JSON (default: those of DIR/peer.json)")
    r.add_argument("--extra", default=None, help="JSON file merged into peer.json (host, versions, timings)")
    a = ap.parse_args()
    if a.cmd == "livesync":
        return livesync(a)
    return report(a)


if __name__ == "__main__":
    sys.exit(main())
