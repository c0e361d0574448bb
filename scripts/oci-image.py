#!/usr/bin/env python3
"""Builds an OCI image archive from a Containerfile, without a container engine, a daemon or a registry.

It understands the part of the Containerfile language that an image of static binaries needs — FROM
scratch, ARG, ENV, LABEL, COPY [--chmod=MODE] (files), USER, WORKDIR, ENTRYPOINT, CMD — and refuses
anything else with the line it stopped at, so the Containerfile stays buildable by docker and buildah too.
The output is reproducible: one layer whose tar lists entries sorted, owned by 0:0, dated
SOURCE_DATE_EPOCH; gzip without a name or a time; JSON with sorted keys. The same inputs give the same
digest on any machine (docs/adr/0007-image-built-by-a-small-oci-writer.md).

    scripts/oci-image.py --file Containerfile --context . --name ghcr.io/kubeha/kubeha:0.1.0 \\
        --build-arg VERSION=0.1.0 --output target/image/kubeha.oci.tar

prints `<name> <manifest digest>` on stdout and the sizes on stderr.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import sys
import tarfile
import time

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class BuildError(Exception):
    pass


def logical_lines(text):
    """Yields (line number, instruction text) with comments dropped and continuations joined."""
    buf, start = "", None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if start is None:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield start, buf + line
        buf, start = "", None
    if buf:
        yield start, buf


def expand(word, env, where):
    def sub(m):
        name = m.group(1) or m.group(2)
        if name not in env:
            raise BuildError(f"{where}: ${name} is not set: declare it with ARG or ENV above this line")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, word)


def key_values(words, env, where):
    out = []
    for w in words:
        if "=" not in w:
            raise BuildError(f"{where}: '{w}' is not KEY=VALUE")
        k, v = w.split("=", 1)
        out.append((k, expand(v, env, where)))
    return out


def parse(path, build_args):
    """The image the Containerfile describes: files to copy and the config."""
    text = open(path, encoding="utf-8").read()
    args, env_list, labels, files = {}, [], {}, []
    cfg = {}
    seen_from = False
    for n, line in logical_lines(text):
        where = f"{path}:{n}"
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = rest.strip()
        scope = {**args, **dict(env_list)}
        if op == "FROM":
            if rest != "scratch" or seen_from:
                raise BuildError(f"{where}: only one 'FROM scratch' is supported (static binaries need no base image)")
            seen_from = True
            continue
        if not seen_from and op != "ARG":
            raise BuildError(f"{where}: {op} before FROM")
        if op == "ARG":
            name, eq, default = rest.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise BuildError(f"{where}: ARG needs a name, got '{rest}'")
            args[name] = build_args.pop(name) if name in build_args else (shlex.split(default)[0] if eq and default else "")
        elif op == "ENV":
            env_list.extend(key_values(shlex.split(rest), scope, where))
        elif op == "LABEL":
            labels.update(key_values(shlex.split(rest), scope, where))
        elif op == "USER":
            cfg["User"] = expand(rest, scope, where)
        elif op == "WORKDIR":
            cfg["WorkingDir"] = expand(rest, scope, where)
        elif op in ("ENTRYPOINT", "CMD"):
            try:
                argv = json.loads(rest)
            except json.JSONDecodeError:
                argv = None
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise BuildError(f"{where}: {op} must be the JSON form [\"/path\", \"arg\"] (there is no shell in the image)")
            cfg["Entrypoint" if op == "ENTRYPOINT" else "Cmd"] = argv
        elif op == "COPY":
            words = [expand(w, scope, where) for w in shlex.split(rest)]
            mode = None
            while words and words[0].startswith("--"):
                flag = words.pop(0)
                if flag.startswith("--chmod="):
                    mode = int(flag.split("=", 1)[1], 8)
                else:
                    raise BuildError(f"{where}: COPY {flag} is not supported (only --chmod)")
            if len(words) < 2:
                raise BuildError(f"{where}: COPY needs a source and a destination")
            *sources, dest = words
            if len(sources) > 1 and not dest.endswith("/"):
                raise BuildError(f"{where}: COPY of several files needs a destination ending in '/'")
            for s in sources:
                target = dest + os.path.basename(s) if dest.endswith("/") else dest
                files.append((s, "/" + target.lstrip("/"), mode, where))
        else:
            raise BuildError(f"{where}: {op} is not supported by this writer (see scripts/oci-image.py)")
    if not seen_from:
        raise BuildError(f"{path}: no FROM line")
    if build_args:
        raise BuildError(f"--build-arg {', '.join(sorted(build_args))}: not declared by any ARG in {path}")
    if env_list:
        cfg["Env"] = [f"{k}={v}" for k, v in env_list]
    if labels:
        cfg["Labels"] = labels
    return files, cfg


def layer_tar(files, context, epoch):
    """The single layer: every copied file and its parent directories, deterministic."""
    entries = {}
    for source, target, mode, where in files:
        path = os.path.join(context, source)
        if not os.path.isfile(path):
            raise BuildError(f"{where}: {source} is not a file under {context} (build it first: make image does)")
        with open(path, "rb") as f:
            data = f.read()
        entries[target.lstrip("/")] = (data, mode if mode is not None else (os.stat(path).st_mode & 0o777))
    dirs = set()
    for name in entries:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | set(entries)):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = epoch, 0, 0, "", ""
            if name in entries:
                data, mode = entries[name]
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    return raw.getvalue()


def gz(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as f:
        f.write(data)
    return out.getvalue()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_archive(output, blobs, index, epoch):
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    members = [("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})), ("index.json", canonical(index))]
    members += [(f"blobs/sha256/{d.split(':', 1)[1]}", b) for d, b in sorted(blobs.items())]
    tmp = output + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, epoch
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, output)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", default="Containerfile")
    p.add_argument("--context", default=".")
    p.add_argument("--name", required=True, help="the reference, e.g. ghcr.io/kubeha/kubeha:0.1.0")
    p.add_argument("--output", required=True, help="the OCI archive to write (a tar of an OCI image layout)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--platform", default="linux/amd64", help="os/arch of the binaries copied in")
    p.add_argument("--source-date-epoch", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="the image's creation time and every file's time (default $SOURCE_DATE_EPOCH or 0)")
    a = p.parse_args()
    try:
        build_args = dict(kv.split("=", 1) for kv in a.build_arg)
    except ValueError:
        p.error("--build-arg takes KEY=VALUE")
    if ":" not in a.name.rsplit("/", 1)[-1]:
        p.error(f"--name {a.name}: give a tag (…:0.1.0)")
    os_, _, arch = a.platform.partition("/")
    try:
        files, cfg = parse(a.file, build_args)
        layer = layer_tar(files, a.context, a.source_date_epoch)
    except (BuildError, OSError) as e:
        print(f"oci-image: {e}", file=sys.stderr)
        return 1
    layer_gz = gz(layer)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.source_date_epoch))
    config = canonical({
        "created": created,
        "architecture": arch,
        "os": os_,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
        "history": [{"created": created, "created_by": f"scripts/oci-image.py --file {os.path.basename(a.file)}"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": sha(layer_gz), "size": len(layer_gz)}],
    })
    tag = a.name.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{
            "mediaType": MANIFEST,
            "digest": sha(manifest),
            "size": len(manifest),
            "platform": {"os": os_, "architecture": arch},
            # containerd (`ctr images import`) names the image by the first, skopeo and the OCI tools by the
            # second.
            "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag},
        }],
    }
    blobs = {sha(config): config, sha(manifest): manifest, sha(layer_gz): layer_gz}
    write_archive(a.output, blobs, index, a.source_date_epoch)
    mib = lambda n: f"{n / 1048576:.1f} MiB"
    print(f"oci-image: {a.output}: layer {mib(len(layer))} uncompressed, {mib(len(layer_gz))} compressed",
          file=sys.stderr)
    print(f"{a.name} {sha(manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
