#!/usr/bin/env bash
# Pins the Kubernetes release the test control plane is built from. A version bump is this one argument:
#   e2e/controlplane/pin.sh v1.37.1
# It rewrites go.mod/go.sum so that k8s.io/kubernetes is required at that tag and every staging module it
# maps to ./staging is replaced by the matching published v0.X.Y tag. The list of staging modules is read
# from the kubernetes go.mod of the tag itself, because it changes between minors (1.36 added two).
set -euo pipefail
cd "$(dirname "$0")"
kv=${1:?usage: pin.sh v1.X.Y}
[[ $kv =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { echo "pin.sh: version must look like v1.37.2, got '$kv'" >&2; exit 2; }
staging_tag="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod

rm -f go.mod go.sum
go mod init github.com/kubeha/kubeha/e2e/controlplane >/dev/null 2>&1
# The proxy serves .info/.mod even for a tag whose source zip it refuses (v1.37.2 was refused: 403), so
# fail here, naming the tag, rather than deep inside `go mod tidy`.
info=$(go mod download -json "k8s.io/kubernetes@$kv")
if grep -q '"Error"' <<<"$info"; then
  echo "pin.sh: the module proxy does not serve k8s.io/kubernetes@$kv; pick another patch release:" >&2
  grep '"Error"' <<<"$info" >&2; exit 1
fi
gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$info")
[ -f "$gomod" ] || { echo "pin.sh: could not download the go.mod of k8s.io/kubernetes@$kv" >&2; exit 1; }
staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*$#\1#p' "$gomod" | sort -u)
[ -n "$staging" ] || { echo "pin.sh: no staging replaces found in $gomod" >&2; exit 1; }
for m in $staging; do go mod edit -replace="$m=$m@$staging_tag"; done
go mod edit -require="k8s.io/kubernetes@$kv"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm; do go mod edit -tool="k8s.io/kubernetes/cmd/$c"; done
go mod tidy

# etcd is built from this same graph (cmd/etcd). That is only sound while it moves no module that Kubernetes
# pins: the API servers would then run with dependencies their release was never tested with.
moved=$(join <(go list -m -f '{{.Path}} {{.Version}}' all | sort) \
             <(sed -n 's/^[[:space:]]*\([a-z][^ ]*\) \(v[^ ]*\)\( \/\/ indirect\)\{0,1\}$/\1 \2/p' "$gomod" | sort) |
        awk '$1 !~ /^k8s.io\// && $2 != $3')
if [ -n "$moved" ]; then
  echo "pin.sh: building etcd here moves modules Kubernetes $kv pins (module ours theirs):" >&2
  echo "$moved" >&2
  echo "pin.sh: give cmd/etcd a module of its own instead." >&2
  exit 1
fi
echo "pinned k8s.io/kubernetes $kv with $(wc -w <<<"$staging") staging modules at $staging_tag"
