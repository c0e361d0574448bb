#!/usr/bin/env bash
# Makes the images kubeadm's static pods run — kube-apiserver, kube-controller-manager, kube-scheduler and
# etcd — from the binaries build.sh built, tagged exactly as `kubeadm config images list` names them for the
# pinned release (registry.k8s.io/kube-apiserver:v1.37.1, registry.k8s.io/etcd:3.7.0-0, …), one OCI archive
# each. A node imports them into its containerd before kubeadm runs there, so kubeadm finds every image
# present and pulls nothing: no registry is involved, and kubeadm is not patched. (The pause image is the
# node runtime's, e2e/noderuntime/build.sh, at kubeadm's tag too.) Prints the directory of archives:
#   ${KUBEHA_CACHE:-~/.cache/kubeha}/controlplane-images/<sha256 of the binaries' key and this script>/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bins=$("$here/build.sh")
key=$( (echo "$bins"; cat "$0" "$here/component.Containerfile" "$here/../../scripts/oci-image.py") | sha256sum | cut -c1-16)
cache=${KUBEHA_CACHE:-$HOME/.cache/kubeha}/controlplane-images
out=$cache/$key
complete() { [ -f "$out/.complete" ]; }
if complete; then echo "$out"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if complete; then echo "$out"; exit 0; fi

start=$SECONDS
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
kv=$("$bins/kubeadm" version -o short)
# What kubeadm will ask the runtime for, one reference per line; the pause image is not ours to make here.
refs=$("$bins/kubeadm" config images list --kubernetes-version "$kv" | grep -Ev '/(pause|coredns/coredns|kube-proxy):')
for component in kube-apiserver kube-controller-manager kube-scheduler etcd; do
  ref=$(grep -E "/$component:" <<<"$refs") || { echo "images.sh: kubeadm $kv lists no $component image:" >&2; echo "$refs" >&2; exit 1; }
  mkdir "$tmp/ctx"
  cp "$bins/$component" "$tmp/ctx/$component"
  "$here/../../scripts/oci-image.py" --file "$here/component.Containerfile" --context "$tmp/ctx" --name "$ref" \
    --build-arg "COMPONENT=$component" --build-arg "VERSION=${ref##*:}" --output "$tmp/$component.oci.tar" >/dev/null
  echo "$ref" >"$tmp/$component.ref"
  rm -rf "$tmp/ctx"
done
echo "kubeadm $kv images made in $((SECONDS - start)) s" >"$tmp/.complete"
rm -rf "$out"
chmod 755 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "images.sh: $(echo "$refs" | tr '\n' ' ')made in $((SECONDS - start)) s" >&2
echo "$out"
