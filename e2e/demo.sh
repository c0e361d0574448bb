#!/usr/bin/env bash
# `make demo`: kubeha's main job on the three-master test cluster. Brings the cluster up, installs kubeha with
# helm, applies the example cluster, shows `kubectl get hac,ham`, powers the active master off while a client
# probes the VIP, prints how long the VIP was unreachable and who took over, and the timeline picture's path.
# Tears everything down on exit (Ctrl-C included).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=e2e/cluster

cleanup() { echo; echo "== tearing down"; $cluster down; }
trap cleanup EXIT
trap 'exit 130' INT TERM

$cluster demo
