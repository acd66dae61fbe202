#!/usr/bin/env bash
# hotspare vs QEMU in one run: QEMU 7.2 COLO (checkpoint pause, rate, failover),
# QEMU 10 live migration (full-sync throughput) and `hotspare bench`, on the same
# memory size, interval and guest dirty-rate setting. Writes OUT/peer.json and
# OUT/peer.md and prints the table. See docs/performance.md, "Peer runs (QEMU)".
#
# The QEMU side is the shared harness in ../shared/peers (called in place, never
# copied): setup.sh installs QEMU 10 from bookworm-backports, unpacks QEMU 7.2
# into shared/peers/qemu72 and builds the harness's guest and tools (needs root).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: benches/peer/run.sh [options]
  --mem-mib N         guest memory of all three, MiB              (1024)
  --delay-ms N        checkpoint interval: COLO x-checkpoint-delay,
                      hotspare --interval-ms                       (20)
  --rate-ppms N       guest page writes per ms: QEMU guest's rate;
                      hotspare's guest is paced to it by the TSC     (25)
  --reps N            repetitions on each side (medians)            (3)
  --ws-mib N          dirtied working set of both guests, MiB       (64)
  --window S          seconds of COLO measured per rep              (8)
  --profile P         hotspare memtest pattern                      (mixed)
  --spin S            pace hotspare's guest by spin= instead
  --hs-seconds S      length of hotspare's unprotected guest run    (8)
  --mig-downtime-ms N QEMU migration downtime-limit (QEMU default)  (300)
  --prefill P         RAM of the migration source and of hotspare's
                      live-synced guest: zero|mixed               (zero)
  --spare-reserve     hotspare's live-sync standby reserves (creates
                      and populates) the guest's memory before it
                      listens (`hotspare standby --reserve-mib`)
  --out DIR           output directory                              (peer-out)
  --no-build          do not run `cargo build --release -p engine`
EOF
}

MEM=1024 DELAY=20 RATE=25 REPS=3 WS=64 WINDOW=8 PROFILE=mixed SPIN='' HS_SECONDS=8
DOWNTIME=300 PREFILL=zero OUT=peer-out BUILD=1 RESERVE=()
CMDLINE="benches/peer/run.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case "$1" in
    --mem-mib) MEM=$2; shift 2 ;;
    --delay-ms) DELAY=$2; shift 2 ;;
    --rate-ppms) RATE=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --ws-mib) WS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --spin) SPIN=$2; shift 2 ;;
    --hs-seconds) HS_SECONDS=$2; shift 2 ;;
    --mig-downtime-ms) DOWNTIME=$2; shift 2 ;;
    --prefill) PREFILL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --spare-reserve) RESERVE=(--reserve); shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in MEM DELAY RATE REPS WS HS_SECONDS DOWNTIME; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "run.sh: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
if [ "$DELAY" -eq 0 ] || [ "$REPS" -eq 0 ]; then echo "run.sh: --delay-ms and --reps must be > 0" >&2; exit 2; fi
# Both guests dirty [16 MiB, 16 MiB + ws); hotspare's memtest adds a 4-byte-per-page table after it.
if [ $((16 + WS + 1)) -gt "$MEM" ] || [ $((16 + WS + 1)) -gt 1024 ]; then
  echo "run.sh: the working set (16 + $WS MiB) must fit in --mem-mib $MEM and below 1 GiB" >&2; exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
peers="$repo/../shared/peers"
T0=$(date +%s)
log() { echo "[peer $(( $(date +%s) - T0 ))s] $*" >&2; }
declare -A took

# ---- 1. the shared harness ---------------------------------------------------------------
if [ ! -d "$peers" ] || [ ! -f "$peers/colobench.py" ] || [ ! -f "$peers/migbench.py" ]; then
  echo "run.sh: the shared QEMU harness is not at $peers (expected colobench.py, migbench.py, setup.sh)." >&2
  echo "        It lives in shared/peers beside the repository; without it there is nothing to compare with." >&2
  exit 1
fi
peers=$(cd "$peers" && pwd)
QEMU72="$peers/qemu72/root/usr/bin/qemu-system-x86_64"
QEMU10=$(command -v qemu-system-x86_64 || true)
qemu_ready() {
  [ -n "$QEMU10" ] && "$QEMU10" --version 2>/dev/null | grep -Eq 'version (1[0-9]|[2-9][0-9])\.' && [ -x "$QEMU72" ]
}
t=$(date +%s)
if ! qemu_ready; then
  [ "$(id -u)" = 0 ] || { echo "run.sh: QEMU is not set up and $peers/setup.sh installs Debian packages: run as root" >&2; exit 1; }
  log "QEMU is not set up: running $peers/setup.sh (apt-get, QEMU 7.2 unpack, builds)"
  if ! bash "$peers/setup.sh"; then
    echo "run.sh: $peers/setup.sh failed (see its output above)" >&2; exit 1
  fi
  QEMU10=$(command -v qemu-system-x86_64 || true)
  qemu_ready || { echo "run.sh: after setup.sh, QEMU 10 ($QEMU10) or QEMU 7.2 ($QEMU72) is still missing" >&2; exit 1; }
fi
# What the peer README says to build (setup.sh does it too; redone only if missing).
[ -f "$peers/guest/guest.bin" ] || { log "building the peer guest"; "$peers/guest/build.sh"; }
if [ ! -x "$peers/bench/pagegen" ] || [ ! -s "$peers/bench/corpus.txt" ]; then
  log "building the peer tools"; "$peers/bench/build.sh"
fi
if [ ! -f "$peers/nodelay/libnodelay.so" ]; then
  log "building the TCP_NODELAY shim"
  gcc -shared -fPIC -O2 -o "$peers/nodelay/libnodelay.so" "$peers/nodelay/nodelay.c" -ldl
fi
took[setup]=$(( $(date +%s) - t ))

# ---- hotspare ----------------------------------------------------------------------------
t=$(date +%s)
HS="$repo/target/release/hotspare"
build_note="not rebuilt (--no-build)"
if [ "$BUILD" = 1 ]; then
  log "cargo build --release -p engine"
  if (cd "$repo" && cargo build --release -p engine); then
    build_note="built by run.sh"
  elif [ -x "$HS" ]; then
    build_note="cargo build FAILED; used the existing binary"
    log "WARNING: cargo build failed; using the existing $HS ($(date -r "$HS" -u +%FT%TZ))"
  else
    echo "run.sh: cargo build --release -p engine failed and there is no $HS" >&2; exit 1
  fi
fi
[ -x "$HS" ] || { echo "run.sh: $HS is missing: build it with cargo build --release -p engine (or drop --no-build)" >&2; exit 1; }
# The memtest guest the binary embeds, as built next to it (for the live-sync runs).
GUEST=''
for g in "$repo"/target/release/build/engine-*/out/guests/memtest.elf; do
  [ -f "$g" ] && { [ -z "$GUEST" ] || [ "$g" -nt "$GUEST" ]; } && GUEST=$g
done
took[build]=$(( $(date +%s) - t ))

mkdir -p "$OUT/qemu"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/qemu/colo.jsonl" "$OUT/qemu/migration.jsonl" "$OUT/peer.json" "$OUT/peer.md"
rm -rf "$OUT/hotspare" "$OUT/hotspare-livesync"
: >"$OUT/qemu/colo.jsonl"; : >"$OUT/qemu/migration.jsonl"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "output: $OUT (load average now: $LOAD_START; other jobs on this 2-core host skew every figure)"

# ---- 2a. QEMU 7.2 COLO with the TCP_NODELAY shim -----------------------------------------
t=$(date +%s)
for r in $(seq 1 "$REPS"); do
  before=$(wc -l <"$OUT/qemu/colo.jsonl" 2>/dev/null || echo 0)
  log "QEMU COLO rep $r/$REPS: ${MEM} MiB, ${RATE} pages/ms over ${WS} MiB, x-checkpoint-delay ${DELAY} ms, ${WINDOW} s, nodelay, failover"
  if ! QEMU="$QEMU72" QEMU_MODULE_DIR="$peers/qemu72/root/usr/lib/x86_64-linux-gnu/qemu" \
      timeout 150 python3 "$peers/colobench.py" --mem-mb "$MEM" --ws-mb "$WS" --rate-ppms "$RATE" \
      --delay-ms "$DELAY" --window "$WINDOW" --nodelay --failover --label hotspare-peer \
      --out "$OUT/qemu/colo.jsonl" </dev/null >"$OUT/qemu/colo-r$r.log" 2>&1; then
    log "  COLO rep $r FAILED: $(tail -c 400 "$OUT/qemu/colo-r$r.log" | tr '\n' ' ')"
    # a run killed by the timeout writes no line: record why
    after=$(wc -l <"$OUT/qemu/colo.jsonl" 2>/dev/null || echo 0)
    if [ "$after" = "$before" ]; then
      echo "{\"error\": \"colobench.py exited without a result (timeout 150 s?); see qemu/colo-r$r.log\"}" >>"$OUT/qemu/colo.jsonl"
    fi
  fi
done
took[colo]=$(( $(date +%s) - t ))

# ---- 2b. QEMU 10 live migration ----------------------------------------------------------
t=$(date +%s)
for r in $(seq 1 "$REPS"); do
  log "QEMU 10 live migration rep $r/$REPS: ${MEM} MiB, ${RATE} pages/ms over ${WS} MiB, prefill $PREFILL, downtime-limit ${DOWNTIME} ms"
  before=$(wc -l <"$OUT/qemu/migration.jsonl" 2>/dev/null || echo 0)
  if ! QEMU="$QEMU10" timeout 180 python3 "$peers/migbench.py" --mem-mb "$MEM" --ws-mb "$WS" --rate-ppms "$RATE" \
      --prefill "$PREFILL" --downtime-limit "$DOWNTIME" --label hotspare-peer \
      --out "$OUT/qemu/migration.jsonl" </dev/null >"$OUT/qemu/migration-r$r.log" 2>&1; then
    log "  migration rep $r FAILED: $(tail -c 400 "$OUT/qemu/migration-r$r.log" | tr '\n' ' ')"
    after=$(wc -l <"$OUT/qemu/migration.jsonl" 2>/dev/null || echo 0)
    if [ "$after" = "$before" ]; then
      echo "{\"status\": \"failed\", \"error\": \"migbench.py exited without a result; see qemu/migration-r$r.log\"}" >>"$OUT/qemu/migration.jsonl"
    fi
  fi
done
took[migration]=$(( $(date +%s) - t ))

# ---- 2c. hotspare bench ------------------------------------------------------------------
# Matching the dirty rate: QEMU's guest writes RATE pages/ms, one word per page, sweeping a
# WS MiB working set, paced by the TSC and catching up after pauses. hotspare's memtest is
# paced the same way (rate= page writes/s against the TSC, catching up), over a working set
# of the same size. --spin S instead paces it by busy iterations (the old, uncalibrated way).
# Both sides' measured dirty pages/s are reported.
t=$(date +%s)
PAGES=$(( WS * 256 ))
HS_RATE=0
if [ "$RATE" -gt 0 ]; then
  WRITES=$(( RATE * 250 ))                                   # 0.25 s of writes per round
  ROUNDS=$(( HS_SECONDS * 4 ))                               # a multiple of 4: each mixed pattern alike
  [ "$ROUNDS" -ge 4 ] || ROUNDS=4
  [ -n "$SPIN" ] || HS_RATE=$(( RATE * 1000 ))
  SPIN=${SPIN:-0}
else
  WRITES=30000 ROUNDS=40 SPIN=${SPIN:-0}                     # as fast as it goes, like the QEMU guest
fi
PACE=""
[ "$HS_RATE" -gt 0 ] && PACE=" rate=$HS_RATE tsc_khz=$("$HS" tsc-khz)"
took[calibration]=$(( $(date +%s) - t ))
t=$(date +%s)
log "hotspare bench: --mem-mib $MEM --interval-ms $DELAY --profile $PROFILE --pages $PAGES --writes $WRITES --spin $SPIN --rate $HS_RATE --rounds $ROUNDS --reps $REPS"
mkdir -p "$OUT/hotspare"
if ! "$HS" bench --reps "$REPS" --mem-mib "$MEM" --interval-ms "$DELAY" --profile "$PROFILE" --pages "$PAGES" \
    --writes "$WRITES" --spin "$SPIN" --rate "$HS_RATE" --rounds "$ROUNDS" --out "$OUT/hotspare" </dev/null \
    >"$OUT/hotspare/bench.log" 2>&1; then
  log "  hotspare bench FAILED: $(tail -c 600 "$OUT/hotspare/bench.log" | tr '\n' ' ')"
fi
took[hotspare]=$(( $(date +%s) - t ))

# hotspare's full sync of a running guest. `hotspare bench` starts its guests parked and ships
# their whole (still empty) state in the first epoch, so it has no live pre-copy to time. Here a
# primary runs the same guest unprotected (--wait-shadow-ms 0) and a standby appears at its
# --shadow address after a 2 s warm-up, as migbench migrates after 2 s: the reconnect does the
# live copy, timed by the primary (its typed `live_copied` and `protected` events).
t=$(date +%s)
LS_GUEST="$OUT/hotspare/runs/memtest.elf"
[ -f "$LS_GUEST" ] || LS_GUEST=$GUEST
# With --prefill mixed, hotspare's guest RAM is filled before boot from a file the same page
# generator writes (bench/pagegen, its default mix), as QEMU's migration source RAM is.
LS_PREFILL=() LS_ROUNDS=$ROUNDS
if [ "$PREFILL" = mixed ]; then
  # A guest RAM full of data takes seconds to copy: run the guest four times longer.
  LS_ROUNDS=$(( ROUNDS * 4 ))
  prefill_file="/dev/shm/hotspare-prefill-$$.ram"
  trap 'rm -f "$prefill_file"' EXIT
  "$peers/bench/pagegen" "$prefill_file" "$MEM" "$peers/bench/corpus.txt" 2>/dev/null
  LS_PREFILL=(--prefill "$prefill_file")
fi
log "hotspare live full sync of the running guest, $REPS reps, prefill $PREFILL"
if [ -z "$LS_GUEST" ] || ! python3 "$here/peer.py" livesync --hotspare "$HS" --guest "$LS_GUEST" --mem-mib "$MEM" \
    --cmdline "rounds=$LS_ROUNDS pages=$PAGES writes=$WRITES spin=$SPIN pattern=$PROFILE$PACE" --interval-ms "$DELAY" \
    --warmup 2 --reps "$REPS" --dir "$OUT/hotspare-livesync" "${LS_PREFILL[@]}" "${RESERVE[@]}"; then
  log "  hotspare live sync FAILED (see $OUT/hotspare-livesync/)"
fi
took[livesync]=$(( $(date +%s) - t ))

# ---- 3. merge ----------------------------------------------------------------------------
total=$(( $(date +%s) - T0 ))
hs_rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git -C "$repo" status --porcelain -- engine checkpoint transport 2>/dev/null)" ] || hs_rev="$hs_rev+local changes"
kvm_mod=''
for m in /sys/module/kvm*; do [ -e "$m" ] && kvm_mod="$kvm_mod ${m##*/}"; done
US_PER_WRITE=null
[ "$RATE" -gt 0 ] && US_PER_WRITE=$(python3 -c "print(1000/$RATE)")
T0="$T0" LOAD_START="$LOAD_START" CMDLINE="$CMDLINE" KVM_MOD="$kvm_mod" QV72="$("$QEMU72" --version | head -1)" \
QV10="$("$QEMU10" --version | head -1)" HS_REV="$hs_rev ($build_note)" \
WORKLOAD="{\"profile\": \"$PROFILE\", \"pages\": $PAGES, \"writes\": $WRITES, \"spin\": $SPIN, \"rate_writes_per_s\": $HS_RATE, \"rounds\": $ROUNDS, \"us_per_write_target\": $US_PER_WRITE}" \
TIMINGS="{\"setup\": ${took[setup]}, \"build\": ${took[build]}, \"colo\": ${took[colo]}, \"migration\": ${took[migration]}, \"calibration\": ${took[calibration]}, \"hotspare\": ${took[hotspare]}, \"livesync\": ${took[livesync]}, \"total\": $total}" \
python3 - "$OUT/extra.json" <<'EOF'
import json, os, sys, time
e = os.environ
json.dump({
    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(e["T0"]))),
    "command": e["CMDLINE"],
    "host": {"kernel": os.uname().release, "cpus": os.cpu_count(),
             "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
             "kvm_modules": e["KVM_MOD"].split(), "loadavg_at_start": e["LOAD_START"].split(),
             "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
             "network": "loopback (127.0.0.1) for all three"},
    "versions": {"qemu_colo": e["QV72"], "qemu_migration": e["QV10"], "hotspare": e["HS_REV"]},
    "hotspare_workload": json.loads(e["WORKLOAD"]),
    "timings_s": json.loads(e["TIMINGS"]),
}, open(sys.argv[1], "w"), indent=2)
EOF
params="{\"mem_mib\": $MEM, \"delay_ms\": $DELAY, \"rate_ppms\": $RATE, \"reps\": $REPS, \"ws_mib\": $WS, \"colo_window_s\": $WINDOW, \"prefill\": \"$PREFILL\", \"mig_downtime_ms\": $DOWNTIME}"
rc=0
python3 "$here/peer.py" report --out "$OUT" --params "$params" --extra "$OUT/extra.json" || rc=$?
rm -f "$OUT/extra.json"
log "done in ${total} s (setup ${took[setup]}, build ${took[build]}, COLO ${took[colo]}, migration ${took[migration]}, calibration ${took[calibration]}, hotspare ${took[hotspare]}, live sync ${took[livesync]}); written $OUT/peer.json, $OUT/peer.md"
if [ "$rc" != 0 ]; then
  echo "run.sh: some runs failed (listed under Failures above, details in $OUT/qemu/*.log, $OUT/hotspare/bench.log)" >&2
  exit 1
fi
