#!/usr/bin/env bash
# `cargo test` as a user who is not root: every test binary of the workspace runs as `nobody`. The tests that
# need root (the test world's network namespaces, kubelets and containerd) must say they are skipped, and
# nothing may fail or panic. Run as root after a build (make test builds everything it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t bins < <(cargo test --workspace --all-targets --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
failed=0 skipped=0
err=$(mktemp) std=$(mktemp)
trap 'rm -f "$err" "$std"' EXIT
for bin in "${bins[@]}"; do
  # From /tmp: nobody may not read the checkout's parent directories' listings, only the binaries. The
  # messages go to stderr on their own, so that the harness's stdout cannot break them up.
  if ! (cd /tmp && timeout 300 setpriv --reuid=nobody --regid=nogroup --clear-groups "$bin" >"$std" 2>"$err"); then
    echo "FAILED as nobody: $bin"
    tail -20 "$std" "$err"
    failed=1
  fi
  skipped=$((skipped + $(grep -c '^SKIPPED ' "$err" || true)))
done
expected=$(cat e2e/tests/*.rs | grep -c 'skip_unless_root!()' || true)
echo "${#bins[@]} test binaries ran as nobody; $skipped of the $expected root-only tests said they were skipped"
if ((skipped != expected)); then
  echo "every test marked skip_unless_root!() must say it is skipped, once" >&2
  exit 1
fi
exit "$failed"
