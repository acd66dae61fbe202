#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test hotspare:
# a C toolchain and make (the test guests are built from source with GNU as/gcc/ld).
# Rust itself comes from rustup (https://rustup.rs); this script checks for it.
set -euo pipefail

need=()
for tool in gcc make as ld; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing build-essential (missing: ${need[*]})"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q build-essential
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
fi
if [ ! -e /dev/kvm ]; then
    echo "setup: WARNING: /dev/kvm is missing: hotspare cannot run guests on this machine" >&2
elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "setup: WARNING: no access to /dev/kvm: run as root or join the 'kvm' group" >&2
fi
echo "setup: ok"
