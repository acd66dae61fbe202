#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test hotspare:
# a C toolchain and make (the test guests are built from source with GNU as/gcc/ld),
# QEMU (the disk tests cross-check the test guest against QEMU's virtio-blk),
# and etcd, etcdctl and iptables (the fencing tests' arbiter and faults).
# Rust itself comes from rustup (https://rustup.rs); this script checks for it.
# The fuzzing tools (cargo-fuzz, on the nightly toolchain) are installed by
# scripts/fuzz.sh when it first runs, not here: this script runs before every
# test run.
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
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    # The disk tests run the diskcheck guest against QEMU's own virtio-blk
    # (microvm) too, so the guest and hotspare's device each follow the
    # virtio standard, not each other. On Debian bookworm QEMU comes from
    # bookworm-backports (10.x; bookworm's 7.2 conflicts with the newer
    # qemu-utils some images carry), with the machine's own Debian mirror.
    echo "setup: installing QEMU (qemu-system-x86)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    target=()
    src=/etc/apt/sources.list.d/debian.sources
    if grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null && [ -f "$src" ]; then
        bp=/etc/apt/sources.list.d/peers-backports.sources
        if [ ! -f "$bp" ]; then
            awk 'BEGIN{RS=""} NR==1' "$src" | grep -v '^#' \
                | sed 's/^Suites: .*/Suites: bookworm-backports/' | $SUDO tee "$bp" >/dev/null
        fi
        target=(-t bookworm-backports)
    fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        "${target[@]}" qemu-system-x86
fi
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
# The host service's tests check the shipped systemd unit with
# systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
    # The fencing tests run a real etcd (the arbiter) on loopback and on a
    # bridge between network namespaces, and inject partitions and TCP
    # resets with iptables inside those namespaces.
    echo "setup: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
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
