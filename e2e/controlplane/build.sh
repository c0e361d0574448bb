#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet and kubeadm for the pinned Kubernetes release
# (go.mod, see pin.sh) and prints the directory that holds them. Binaries live outside the repo, in
#   ${KUBEHA_CACHE:-~/.cache/kubeha}/controlplane/<version>-<sha256(go.sum, command list)>/
# so a warm run costs a hash and a stat, and neither a go.sum change nor a new command can reuse a stale set.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod

kv=$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)
[[ $kv =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { echo "build.sh: k8s.io/kubernetes not pinned in go.mod; run pin.sh" >&2; exit 1; }
minor=${BASH_REMATCH[1]}
k8s_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm)
cmds=(etcd "${k8s_cmds[@]}")
sum=$( (cat go.sum; echo "${cmds[*]}") | sha256sum | cut -c1-16)
cache=${KUBEHA_CACHE:-$HOME/.cache/kubeha}/controlplane
out=$cache/$kv-$sum

complete() { [ -f "$out/.complete" ]; }
if complete; then echo "$out"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # a parallel caller waits for this build instead of running a second one
if complete; then echo "$out"; exit 0; fi

echo "build.sh: building Kubernetes $kv control plane into $out (cold: about 8 minutes on 2 cores, 2.5 GiB peak)" >&2
info=$(go mod download -json "k8s.io/kubernetes@$kv")
commit=$(sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p' <<<"$info" | head -1)
stamp=$(sed -n 's/^[[:space:]]*"Time": "\([^"]*\)".*/\1/p' <<<"$info" | head -1)
ldflags="-s -w"
# Both packages carry a copy of the version; clients (helm, kubectl) and /version read them.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kv -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.gitTreeState=clean -X $pkg.buildDate=${stamp:-1970-01-01T00:00:00Z}"
done

tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The compiler's cache (about 3.5 GiB) is worth nothing once the binaries are cached by go.sum: it lives
# and dies with this build.
export GOCACHE=$tmp/.gocache
start=$SECONDS
go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" -o "$tmp/" \
  "${k8s_cmds[@]/#/k8s.io/kubernetes/cmd/}" ./cmd/etcd

for c in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  got=$("$tmp/$c" --version)
  [ "$got" = "Kubernetes $kv" ] || { echo "build.sh: $c --version says '$got', want 'Kubernetes $kv'" >&2; exit 1; }
done
# kubeadm has no --version; the tags it pulls images by come from this version.
got=$("$tmp/kubeadm" version -o short)
[ "$got" = "$kv" ] || { echo "build.sh: kubeadm version says '$got', want '$kv'" >&2; exit 1; }
"$tmp/etcd" --version | grep -q '^etcd Version: 3\.' || { echo "build.sh: etcd --version is not an etcd 3.x" >&2; exit 1; }
for c in "${cmds[@]}"; do [ -x "$tmp/$c" ] || { echo "build.sh: $c missing after build" >&2; exit 1; }; done

rm -rf "$GOCACHE"
echo "$kv built in $((SECONDS - start)) s" >"$tmp/.complete"
rm -rf "$out"
chmod 755 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "build.sh: done in $((SECONDS - start)) s" >&2
echo "$out"
