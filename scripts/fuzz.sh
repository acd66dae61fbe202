#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (whatever `cargo fuzz list` shows) for
# SECONDS_PER_TARGET seconds each (default 30), one after the other, and
# prints a table of executions per target. Exits non-zero if any target
# crashed, found a failing property or did not run.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Each target starts from its checked-in seeds (fuzz/corpus/<target>/, left
# untouched) and from what earlier runs on this machine found
# (fuzz/work/<target>/, not checked in). A crashing input is saved under
# fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run -a -s none --fuzz-dir fuzz <target> <file>
#
# Needs the nightly toolchain (cargo-fuzz builds with -Z flags); installs
# cargo-fuzz if it is missing. Environment:
#   FUZZ_SANITIZER  none (default: the decoders are safe Rust, and
#                   AddressSanitizer costs 4-10x the executions) or address
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# -a: debug assertions and overflow checks, so arithmetic overflow in a
# decoder is a finding.
opts=(--fuzz-dir fuzz -a -s "${FUZZ_SANITIZER:-none}")
start=$(date +%s)
cargo +nightly fuzz build "${opts[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s"

mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no targets in fuzz/Cargo.toml" >&2
    exit 1
fi

rows=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t" "fuzz/corpus/$t"
    log="fuzz/work/$t.log"
    echo "fuzz: $t for $secs s (log: $log)"
    rc=0
    cargo +nightly fuzz run "${opts[@]}" "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 >"$log" 2>&1 || rc=$?
    # libFuzzer's last line on success: "Done 123456 runs in 30 second(s)".
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
    if [ "$rc" -eq 0 ] && [ -n "$done_line" ]; then
        runs=$(awk '{print $2}' <<<"$done_line")
        took=$(awk '{print $5}' <<<"$done_line")
        rate=$((runs / (took > 0 ? took : 1)))
        rows+=("$(printf '%-24s %12s %8s %10s  %s' "$t" "$runs" "$took" "$rate" ok)")
    else
        failed=1
        runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
        rows+=("$(printf '%-24s %12s %8s %10s  %s' "$t" "${runs:-?}" - - "FAILED (exit $rc)")")
        echo "fuzz: $t FAILED (exit $rc); the end of its log:" >&2
        tail -n 40 "$log" >&2
    fi
done

echo
printf '%-24s %12s %8s %10s  %s\n' target executions seconds exec/s result
printf '%s\n' "${rows[@]}"
echo "fuzz: $(date -u +%Y-%m-%d), ${secs} s per target, sanitizer ${FUZZ_SANITIZER:-none}," \
    "$(($(date +%s) - start)) s in all"
exit "$failed"
