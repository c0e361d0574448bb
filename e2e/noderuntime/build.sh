#!/usr/bin/env bash
# Builds what runs pods on the test world's nodes, besides the kubelet (e2e/controlplane/build.sh builds that
# with the control plane): containerd, its runc shim and ctr, runc, the bridge/host-local/loopback CNI
# plugins, and the pause image (from the pause.c of the pinned Kubernetes release) as an OCI archive. Prints
# the directory that holds them:
#   ${KUBEHA_CACHE:-~/.cache/kubeha}/noderuntime/<sha256 of this script and the pins>/
# Debian 12's containerd (1.6) is older than Kubernetes 1.37 supports, so each is built from the Go module
# proxy at the version pinned here, each as its own module (their dependencies differ from Kubernetes').
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CONTAINERD=v2.4.2
RUNC=v1.5.3
CNI_PLUGINS=v1.10.0

kv=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/../controlplane/go.mod")
# The pause tag is the one kubeadm of this release expects of the runtime (it warns when containerd's
# sandbox image differs): read from kubeadm's constants, not kept by hand.
src=$(cd "$here/../controlplane" && GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$kv" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
PAUSE_TAG=$(sed -n 's/^[[:space:]]*PauseVersion = "\([^"]*\)"$/\1/p' "$src/cmd/kubeadm/app/constants/constants.go")
[ -n "$PAUSE_TAG" ] || { echo "noderuntime/build.sh: no PauseVersion in kubeadm's constants of $kv" >&2; exit 1; }
key=$(cat "$0" "$here/pause.Containerfile" "$here/../../scripts/oci-image.py" <(echo "$kv $PAUSE_TAG") | sha256sum | cut -c1-16)
cache=${KUBEHA_CACHE:-$HOME/.cache/kubeha}/noderuntime
out=$cache/$key
complete() { [ -f "$out/.complete" ]; }
if complete; then echo "$out"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if complete; then echo "$out"; exit 0; fi

for tool in gcc pkg-config; do command -v $tool >/dev/null || { echo "noderuntime/build.sh: $tool is missing: run make deps" >&2; exit 1; }; done
pkg-config --exists libseccomp || { echo "noderuntime/build.sh: libseccomp-dev is missing (runc's seccomp support): run make deps" >&2; exit 1; }

echo "noderuntime/build.sh: building containerd $CONTAINERD, runc $RUNC, CNI plugins $CNI_PLUGINS and pause into $out (cold: about 1.5 minutes on 2 cores with the Go modules downloaded, 3 without)" >&2
start=$SECONDS
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod GOBIN=$tmp GOCACHE=$tmp/.gocache
cd "$tmp"

# containerd without the btrfs snapshotter (a C library; the nodes use overlayfs); the shim without gRPC, as
# containerd's own release builds it.
cv=github.com/containerd/containerd/v2/version
cflags="-s -w -X $cv.Version=$CONTAINERD -X $cv.Package=github.com/containerd/containerd/v2"
CGO_ENABLED=0 go install -trimpath -tags no_btrfs -ldflags "$cflags" \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD" "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD"
CGO_ENABLED=0 go install -trimpath -tags no_btrfs,no_grpc -ldflags "$cflags" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD"
# runc needs cgo for libseccomp: seccomp RuntimeDefault is one of the things the tests must see enforced.
CGO_ENABLED=1 go install -trimpath -tags seccomp -ldflags "-s -w -X main.version=${RUNC#v}" "github.com/opencontainers/runc@$RUNC"
mkdir -p "$tmp/cni"
GOBIN=$tmp/cni CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
  "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS" \
  "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS" \
  "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS"

# pause from the pinned Kubernetes source, static: the image has no libc.
mkdir -p "$tmp/pause-ctx"
gcc -Os -static -DVERSION="\"$PAUSE_TAG-kubeha\"" -o "$tmp/pause-ctx/pause" "$src/build/pause/linux/pause.c"
strip "$tmp/pause-ctx/pause"
"$here/../../scripts/oci-image.py" --file "$here/pause.Containerfile" --context "$tmp/pause-ctx" \
  --name "registry.k8s.io/pause:$PAUSE_TAG" --build-arg "KUBERNETES=$kv" --output "$tmp/pause.oci.tar" >"$tmp/pause.ref"
rm -rf "$tmp/pause-ctx"

"$tmp/containerd" --version | grep -q " $CONTAINERD " || { echo "noderuntime/build.sh: containerd --version: $("$tmp/containerd" --version)" >&2; exit 1; }
"$tmp/runc" --version | grep -q "seccomp" || { echo "noderuntime/build.sh: runc was built without seccomp" >&2; exit 1; }
for b in containerd ctr containerd-shim-runc-v2 runc cni/bridge cni/host-local cni/loopback pause.oci.tar; do
  [ -e "$tmp/$b" ] || { echo "noderuntime/build.sh: $b missing after the build" >&2; exit 1; }
done
rm -rf "$GOCACHE"
echo "containerd $CONTAINERD runc $RUNC cni $CNI_PLUGINS pause $PAUSE_TAG built in $((SECONDS - start)) s" >"$tmp/.complete"
rm -rf "$out"
chmod 755 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "noderuntime/build.sh: done in $((SECONDS - start)) s" >&2
echo "$out"
