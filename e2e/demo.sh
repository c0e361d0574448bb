#!/usr/bin/env bash
# `make demo`: the three-master control plane kubeha is built for, and its own active/standby failover.
# Brings the cluster up, shows it, kills the master that runs the active kube-controller-manager, shows
# how long the standby took to take over, and tears everything down on exit (Ctrl-C included).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=e2e/cluster
kubectl="$(e2e/kubetools.py)/kubectl"

cleanup() { echo; echo "== tearing down"; $cluster down; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== bringing up three masters (etcd, kube-apiserver, kube-controller-manager, kube-scheduler on each)"
export KUBECONFIG=$($cluster up)
echo "admin kubeconfig: $KUBECONFIG (contexts n1, n2, n3)"
echo
for ctx in n1 n2 n3; do echo "== kubectl --context $ctx get nodes"; $kubectl --context "$ctx" get nodes -o wide; done
echo
echo "== kubectl -n kube-system get leases"
$kubectl -n kube-system get leases
echo
holder() { $kubectl --context "$1" -n kube-system get lease kube-controller-manager -o jsonpath='{.spec.holderIdentity}' | cut -d_ -f1; }
victim=$(holder n1)
survivor=n1; [ "$victim" = n1 ] && survivor=n2
echo "== killing every process of $victim, which runs the active kube-controller-manager"
$cluster kill-node "$victim"
t0=$(date +%s.%N)
while now=$(holder "$survivor" 2>/dev/null) && { [ -z "$now" ] || [ "$now" = "$victim" ]; }; do
  sleep 0.2
  if (( $(date +%s) - ${t0%.*} > 90 )); then echo "no takeover within 90 s" >&2; exit 1; fi
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
echo "== kube-controller-manager taken over by $now after $elapsed s (its lease lasts 8 s)"
echo
$cluster status
