#!/usr/bin/env bash
# The test command: unit tests, format/property tests and the KVM hw-tests.
# Without /dev/kvm the hw-tests fail with a clear message; set
# HOTSPARE_SKIP_KVM_TESTS=1 to skip them (each skipped test says so loudly).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo test --workspace --locked -- --test-threads=2 "$@"
