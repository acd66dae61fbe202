#!/usr/bin/env bash
# A hotspare cluster on one machine: five agents, each in its own network
# namespace (rack a1: two hosts, rack a2: two hosts, site b: one host), one
# etcd on the switch. A VM is created through the API with two spares (the
# neighbouring rack's and a geo one), its primary's VMM is killed, and the
# VM fails over and is re-protected with no operator action; then the new
# primary's whole rack is cut off. `hotspare ctl status` and /metrics show
# each step. Needs root (namespaces), iproute2 and etcd (scripts/setup.sh).
#
#   sudo ./scripts/cluster-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "cluster-demo: needs root (it builds network namespaces)" >&2
    exit 1
fi
for tool in ip etcd etcdctl; do
    command -v "$tool" >/dev/null || { echo "cluster-demo: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done

cargo build --release -q -p engine
HS=$PWD/target/release/hotspare
GUEST=$PWD/$(ls -t target/release/build/engine-*/out/guests/memtest.elf | head -1)
W=$(mktemp -d /tmp/hotspare-cluster.XXXXXX)
HOSTS=(a1-1:a1:a a1-2:a1:a a2-1:a2:a a2-2:a2:a b1-1:b1:b)
NET=10.219.$((RANDOM % 200 + 20))
BR=hsdemo$$
BR=${BR:0:15}

cleanup() {
    set +e
    for i in "${!HOSTS[@]}"; do
        for pid in $(ip netns pids "hsd$i-$$" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "hsd$i-$$" 2>/dev/null
    done
    [ -n "${ETCD:-}" ] && kill "$ETCD" 2>/dev/null
    ip link del "$BR" 2>/dev/null
    echo "cluster-demo: logs and consoles kept in $W"
}
trap cleanup EXIT

say() { printf '\n=== %s\n' "$*"; }

ip link add "$BR" type bridge && ip addr add "$NET.254/24" dev "$BR" && ip link set "$BR" up
etcd --name demo --data-dir "$W/etcd" \
    --listen-client-urls "http://$NET.254:2379" --advertise-client-urls "http://$NET.254:2379" \
    --listen-peer-urls "http://127.0.0.1:0" >"$W/etcd.log" 2>&1 &
ETCD=$!
disown
until ETCDCTL_API=3 etcdctl --endpoints "$NET.254:2379" endpoint health >/dev/null 2>&1; do sleep 0.2; done

"$HS" keygen "$W/psk" 2>/dev/null
TOKEN=hs_demo_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
umask 077; echo "$TOKEN" >"$W/admin.token"; umask 022
export HOTSPARE_TOKEN=$TOKEN HOTSPARE_API=http://$NET.1:7800

for i in "${!HOSTS[@]}"; do
    IFS=: read -r id rack site <<<"${HOSTS[$i]}"
    ns=hsd$i-$$ ip_=$NET.$((i + 1))
    ip netns add "$ns"
    out=hd${i}o$$ in=hd${i}i$$
    ip link add "$out" type veth peer name "$in"
    ip link set "$out" master "$BR" up
    ip link set "$in" netns "$ns"
    ip -n "$ns" addr add "$ip_/24" dev "$in"
    ip -n "$ns" link set "$in" up
    ip -n "$ns" link set lo up
    cat >"$W/$id.toml" <<EOF
[host]
id = "$id"
rack = "$rack"
site = "$site"
[capacity]
mem_mib = 2048
vcpus = 4
disk_mib = 8192
[etcd]
endpoints = ["$NET.254:2379"]
lease_ttl_s = 2
[api]
listen = "$ip_:7800"
admin_token_file = "$W/admin.token"
[replication]
address = "$ip_"
ports = "7100-7109"
key_file = "$W/psk"
[paths]
state_dir = "$W/$id"
EOF
    ip netns exec "$ns" "$HS" agent --config "$W/$id.toml" >"$W/agent-$id.log" 2>&1 &
    disown
done
until [ "$("$HS" ctl hosts 2>/dev/null | grep -o '"id"' | wc -l)" -eq 5 ]; do sleep 0.2; done
say "five agents registered (hotspare ctl hosts)"
"$HS" ctl hosts | tr '{' '\n' | grep -o '"id":"[^"]*","rack":"[^"]*","site":"[^"]*"' || true

cat >"$W/web.json" <<EOF
{"name": "web", "kernel": "$GUEST", "mem_mib": 128,
 "cmdline": "rounds=100000 writes=2000 pattern=mixed", "disks": [{"size_mib": 64}],
 "policy": {"spares": 2, "geo": true}, "run": {"interval-ms": 20}}
EOF
say "hotspare ctl create web.json  (spares: 2, geo: true)"
"$HS" ctl create "$W/web.json"

status_field() { "$HS" ctl status | awk -v c="$1" 'NR == 2 { print $c }'; }
wait_for() { # column value timeout
    local end=$((SECONDS + $3))
    until [ "$(status_field "$1")" = "$2" ]; do
        [ $SECONDS -lt $end ] || { echo "cluster-demo: timed out waiting for column $1 = $2" >&2; "$HS" ctl status; exit 1; }
        sleep 0.2
    done
}
wait_for 2 protected 30
say "protected (hotspare ctl status)"
"$HS" ctl status

sleep 2
primary=$(status_field 5)
say "SIGKILL of web's VMM on $primary"
pkill -KILL -f "$W/$primary/vms/web/"
wait_for 4 2 30
until [ "$(status_field 8)" != "-" ]; do sleep 0.2; done
say "failed over and re-protected automatically (REPROTECT_MS: takeover to every spare protecting)"
"$HS" ctl status

primary=$(status_field 5)
rack=${primary%-*}
say "rack $rack fails: every process on its hosts is killed (agents and VMMs)"
for i in "${!HOSTS[@]}"; do
    IFS=: read -r id r _ <<<"${HOSTS[$i]}"
    [ "$r" = "$rack" ] || continue
    for pid in $(ip netns pids "hsd$i-$$"); do kill -9 "$pid" 2>/dev/null || true; done
done
for i in "${!HOSTS[@]}"; do
    IFS=: read -r id r _ <<<"${HOSTS[$i]}"
    [ "$r" != "$rack" ] && { export HOTSPARE_API=http://$NET.$((i + 1)):7800; break; }
done
wait_for 4 3 30
until [ "$(status_field 8)" != "-" ]; do sleep 0.2; done
say "protected again after the rack's loss (degraded: one rack left in site a)"
"$HS" ctl status

say "/metrics on the new primary's host (excerpt)"
"$HS" ctl metrics | grep -E '^hotspare_(epochs_total|failovers_total|protected|spares|pause_seconds_(sum|count)|bytes_(raw|wire)_total|host_children)' || true
say "OK"
