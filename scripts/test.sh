#!/usr/bin/env bash
# The test command: unit tests, format/property tests and the KVM hw-tests.
# Without /dev/kvm the hw-tests fail with a clear message; set
# HOTSPARE_SKIP_KVM_TESTS=1 to skip them (each skipped test says so loudly).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Tests that could not run (no KVM with HOTSPARE_SKIP_KVM_TESTS=1, no
# QEMU, not root) append a line here; the count is printed at the end.
export HOTSPARE_SKIP_LOG="${HOTSPARE_SKIP_LOG:-$(mktemp -t hotspare-skips.XXXXXX)}"
: > "$HOTSPARE_SKIP_LOG"
status=0
cargo test --workspace --locked -- --test-threads=2 "$@" || status=$?
skips=$(sort -u "$HOTSPARE_SKIP_LOG" | wc -l)
if [ "$skips" -gt 0 ]; then
    echo "################################################################"
    echo "## test: $skips test(s) SKIPPED (reported ok by cargo, but did NOT run):"
    sort -u "$HOTSPARE_SKIP_LOG" | sed 's/^/##   /'
    echo "################################################################"
else
    echo "test: 0 tests skipped"
fi
exit "$status"
