#!/usr/bin/env bash
# The fleet's coordination at scale (docs/benchmarks.md §7): starts a three-member etcd on
# loopback ports (data in a temporary directory, removed afterwards) and runs the fleet-scale
# simulation against it; arguments are passed on (--nodes, --slots, --reboot-seconds,
# --poll-seconds, --soak-seconds). Needs etcd and etcdctl (Debian: etcd-server, etcd-client).
#
#   benches/harness/fleet-scale.sh --nodes 1000 --slots 50 --reboot-seconds 10
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p osdeploy-benches --bin fleet-scale
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2> /dev/null || true; wait 2> /dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
base=$((20000 + RANDOM % 20000))
cluster=""; endpoints=""
for i in 1 2 3; do
  cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 10 * i + 1))"
  endpoints+="${endpoints:+,}http://127.0.0.1:$((base + 10 * i))"
done
for i in 1 2 3; do
  etcd --name "m$i" --data-dir "$dir/m$i" \
    --listen-client-urls "http://127.0.0.1:$((base + 10 * i))" --advertise-client-urls "http://127.0.0.1:$((base + 10 * i))" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 * i + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 * i + 1))" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token fleet-scale \
    > "$dir/m$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health > /dev/null 2>&1 && break
  sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health
time target/release/fleet-scale --etcd "$endpoints" "$@"
