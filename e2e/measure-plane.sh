#!/usr/bin/env bash
# Measures the test control plane for docs/test-cluster.md:
#   e2e/measure-plane.sh          warm build, `up` timeline, memory of every process after it settles
#   e2e/measure-plane.sh --cold   also a cold build of the control plane (with the kubelet) and of the nodes'
#                                 runtime (containerd, runc, CNI, pause): empty Go module cache, build cache
#                                 and binary cache (downloads everything again; about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
settle=${SETTLE_SECONDS:-60}

if [ "${1:-}" = "--cold" ]; then
  scratch=$(mktemp -d /var/tmp/kubeha-cold.XXXXXX)
  trap 'GOMODCACHE=$scratch/mod go clean -modcache 2>/dev/null; rm -rf "$scratch"' EXIT
  echo "== cold build (empty GOMODCACHE, GOCACHE, KUBEHA_CACHE under $scratch)"
  /usr/bin/time -f "cold build: %e s wall, %M KiB peak RSS of the largest process" \
    env GOMODCACHE="$scratch/mod" GOCACHE="$scratch/build" KUBEHA_CACHE="$scratch/kubeha" \
    e2e/controlplane/build.sh >/dev/null
  /usr/bin/time -f "cold build of the node runtime: %e s wall, %M KiB peak RSS of the largest process" \
    env GOMODCACHE="$scratch/mod" GOCACHE="$scratch/build" KUBEHA_CACHE="$scratch/kubeha" \
    e2e/noderuntime/build.sh >/dev/null
  echo "module cache: $(du -sh "$scratch/mod" | cut -f1), build cache: $(du -sh "$scratch/build" | cut -f1), binaries: $(du -sh "$scratch/kubeha" | cut -f1)"
fi

echo "== warm build (binaries cached)"
/usr/bin/time -f "warm build: %e s wall" e2e/controlplane/build.sh >/dev/null

echo "== e2e/cluster up"
e2e/cluster up >/dev/null
trap 'e2e/cluster down' EXIT
echo "== memory after $settle s settling (RSS, MiB)"
sleep "$settle"
bins=$(e2e/controlplane/build.sh)
runtime=$(e2e/noderuntime/build.sh)
for pid in $(pgrep -f "^$bins/") $(pgrep -f "^$runtime/"); do
  printf '%s %s %s\n' "$(ps -o rss= -p "$pid")" "$(cat /proc/"$pid"/comm)" "$(nsenter -t "$pid" -u hostname)"
done | sort -k2,2 -k3,3 | awk '{printf "  %-24s %s %6.0f\n", $2, $3, $1/1024; total += $1} END {printf "  %-27s %6.0f\n", "whole control plane and nodes", total/1024}'
