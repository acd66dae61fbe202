#!/usr/bin/env bash
# Wake-ups and CPU per epoch, by engine thread, in the steady state of a
# replicated run (docs/performance.md, "Where the CPU per page goes").
#
# Runs `hotspare bench` at the issue's conditions (1 GiB, 20 ms epochs,
# mixed profile, 25k page writes/s) and, in a window of its protected run,
# reads every thread's voluntary context switches (each one a sleep and a
# wake-up) and CPU time from /proc.
#
# usage: benches/wakes.sh [HOTSPARE] [START_S] [LEN_S]
#   HOTSPARE  the binary (default target/release/hotspare)
#   START_S   when the window starts, in seconds from the bench's start
#             (default 17: the 48-round baseline run takes about 12 s)
#   LEN_S     the window's length (default 5)
set -euo pipefail
bin=${1:-target/release/hotspare}
start=${2:-17}
len=${3:-5}
interval_ms=20
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$bin" bench --mem-mib 1024 --interval-ms $interval_ms --profile mixed --rate 25000 \
    --pages 16384 --writes 6250 --rounds 48 --reps 1 --no-takeover --out "$out/bench" \
    >/dev/null 2>&1 </dev/null &
bench=$!
name=$(basename "$bin")
# role:thread voluntary-switches cpu-ticks, summed by name.
snap() {
    for p in $(pgrep -f "$name (run|standby)"); do
        role=$(tr '\0' ' ' </proc/$p/cmdline | awk '{print $2}')
        for t in /proc/$p/task/*; do
            comm=$(cat $t/comm 2>/dev/null || true)
            # The main thread carries the binary's name.
            [ "$comm" = "${name:0:15}" ] && comm=main
            echo "$role:$comm \
$(awk '/^voluntary_ctxt_switches/{print $2}' $t/status 2>/dev/null) \
$(awk '{print $14 + $15}' $t/stat 2>/dev/null)"
        done
    done | awk 'NF == 3 {w[$1] += $2; c[$1] += $3} END {for (k in w) print k, w[k], c[k]}' | sort
}
sleep "$start"
snap >"$out/a"
sleep "$len"
snap >"$out/b"
wait $bench
hz=$(getconf CLK_TCK)
epochs=$(echo "$len * 1000 / $interval_ms" | bc)
echo "thread | wake-ups per epoch | CPU per epoch (ms)"
echo "--- | --- | ---"
join "$out/a" "$out/b" | awk -v e="$epochs" -v hz="$hz" \
    '{w = ($4 - $2) / e; c = ($5 - $3) * 1000 / hz / e; if (w > 0.05 || c > 0) printf "%s | %.1f | %.3f\n", $1, w, c}'
