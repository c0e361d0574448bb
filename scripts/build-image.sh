#!/usr/bin/env bash
# make image: the kubeha image as an OCI archive under target/image, built without a container engine or a
# registry. Compiles both binaries statically linked and stripped, writes the image that Containerfile
# describes (scripts/oci-image.py) and prints `<reference> <digest>`; the same commit gives the same digest.
#   scripts/build-image.sh [--arch amd64|arm64] [--check-reproducible]
# --check-reproducible builds it a second time after `cargo clean` of this workspace's crates (so they are
# compiled and linked again; the dependencies are not), and fails unless both digests are the same.
# arm64 needs `rustup target add aarch64-unknown-linux-gnu`, an aarch64 linker and an aarch64 glibc
# (Debian: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross); see docs/image.md. Only amd64 is tested here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
arch=amd64 check=false
while [ $# -gt 0 ]; do
  case $1 in
    --arch) arch=${2:?--arch needs amd64 or arm64}; shift 2 ;;
    --check-reproducible) check=true; shift ;;
    *) echo "build-image.sh: unknown argument '$1' (usage: build-image.sh [--arch amd64|arm64] [--check-reproducible])" >&2; exit 2 ;;
  esac
done
case $arch in
  amd64) target=x86_64-unknown-linux-gnu ;;
  arm64) target=aarch64-unknown-linux-gnu
         export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc} ;;
  *) echo "build-image.sh: --arch must be amd64 or arm64, got '$arch'" >&2; exit 2 ;;
esac

version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/kubeha/Chart.yaml)
crate=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
[ "$version" = "$crate" ] || { echo "build-image.sh: the chart's appVersion ($version) differs from the crates' version ($crate): set both" >&2; exit 1; }
repository=${KUBEHA_IMAGE_REPOSITORY:-ghcr.io/kubeha/kubeha}
if git rev-parse --git-dir >/dev/null 2>&1; then
  revision=$(git rev-parse HEAD)
  [ -z "$(git status --porcelain --untracked-files=no)" ] || revision+="-dirty"
  epoch=$(git log -1 --format=%ct)
else
  revision=unknown epoch=0
fi

out=target/image/kubeha-$version-$arch.oci.tar
build() {
  # Static (static-pie on glibc): the image has no libc. Paths are remapped so that the binaries, and with
  # them the digest, do not depend on where the checkout or the cargo home is.
  export RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/kubeha --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
  cargo build --profile image --target "$target" --locked --bin kubeha-agent --bin kubeha-operator >&2
  for b in kubeha-agent kubeha-operator; do
    if readelf -lW "target/$target/image/$b" | grep -q 'Requesting program interpreter'; then
      echo "build-image.sh: target/$target/image/$b is dynamically linked; the image has no libc" >&2; exit 1
    fi
  done

  scripts/oci-image.py --file Containerfile --context . --name "$repository:$version" --output "$out" \
    --platform "linux/$arch" --source-date-epoch "$epoch" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "TARGET=$target" >"$out.ref"
  cat "$out.ref"
}

start=$SECONDS
first=$(build)
echo "build-image.sh: built in $((SECONDS - start)) s" >&2
if $check; then
  cargo clean --profile image --target "$target" -p kubeha-agent -p kubeha-operator -p kubeha-common \
    -p kubeha-crds -p kubeha-vrrp >&2
  rm -f "$out"
  second=$(build)
  [ "$first" = "$second" ] || { echo "build-image.sh: not reproducible: '$first' then '$second'" >&2; exit 1; }
  echo "build-image.sh: rebuilt kubeha's crates from scratch with the same digest" >&2
fi
echo "$first"
