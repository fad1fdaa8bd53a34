#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (an OCI layout in a tar, as `podman save --format
oci-archive` writes it) from files of this machine, with no container engine or daemon.

The output is reproducible: members sorted, mtime 0, owner root unless given, gzip without a
timestamp. hack/build-image.sh (the operator image) and hack/cluster.sh (pause, busybox) use it.

  oci-image.py --out IMG.tar --name REF [--entrypoint JSON] [--cmd JSON] [--user U:G]
      [--env K=V]... [--workdir DIR]
      [--file SRC:DEST[:MODE]]... [--dir DEST[:MODE[:UID:GID]]]... [--symlink DEST:TARGET]...
      [--text DEST:MODE:CONTENT]...

REF is written as the `io.containerd.image.name` and `org.opencontainers.image.ref.name`
annotations, so `ctr images import` names the image and `imageimport push` finds its tag.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--entrypoint", type=json.loads)
    p.add_argument("--cmd", type=json.loads)
    p.add_argument("--user")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir")
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--symlink", action="append", default=[])
    p.add_argument("--text", action="append", default=[])
    return p.parse_args()


def member(path, kind, mode, uid=0, gid=0):
    info = tarfile.TarInfo(path.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def parent_dirs(path):
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def build_layer(args):
    entries = {}  # path -> (TarInfo, bytes or None)
    for spec in args.dir:
        dest, *rest = spec.split(":")
        mode = int(rest[0], 8) if rest else 0o755
        uid, gid = (int(rest[1]), int(rest[2])) if len(rest) >= 3 else (0, 0)
        entries[dest] = (member(dest, tarfile.DIRTYPE, mode, uid, gid), None)
    for spec in args.file:
        src, dest, *rest = spec.split(":")
        with open(src, "rb") as f:
            data = f.read()
        mode = int(rest[0], 8) if rest else os.stat(src).st_mode & 0o7777
        info = member(dest, tarfile.REGTYPE, mode)
        info.size = len(data)
        entries[dest] = (info, data)
    for spec in args.text:
        dest, mode, content = spec.split(":", 2)
        data = content.encode()
        info = member(dest, tarfile.REGTYPE, int(mode, 8))
        info.size = len(data)
        entries[dest] = (info, data)
    for spec in args.symlink:
        dest, target = spec.split(":", 1)
        info = member(dest, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        entries[dest] = (info, None)
    for path in list(entries):
        for d in parent_dirs(path):
            entries.setdefault(d, (member(d, tarfile.DIRTYPE, 0o755), None))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            info, data = entries[path]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def blob(blobs, media_type, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    args = parse_args()
    layer = build_layer(args)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as f:
        f.write(layer)

    config = {"Env": args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if args.entrypoint is not None:
        config["Entrypoint"] = args.entrypoint
    if args.cmd is not None:
        config["Cmd"] = args.cmd
    if args.user:
        config["User"] = args.user
    if args.workdir:
        config["WorkingDir"] = args.workdir
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/oci-image.py"}],
    }
    blobs = {}
    layer_desc = blob(blobs, "application/vnd.oci.image.layer.v1.tar+gzip", gz.getvalue())
    config_desc = blob(
        blobs, "application/vnd.oci.image.config.v1+json", json.dumps(image_config, sort_keys=True).encode()
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = blob(
        blobs, "application/vnd.oci.image.manifest.v1+json", json.dumps(manifest, sort_keys=True).encode()
    )
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    manifest_desc["annotations"] = {
        "io.containerd.image.name": args.name,
        "org.opencontainers.image.ref.name": tag,
    }
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}

    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(member(d, tarfile.DIRTYPE, 0o755))
        for name in sorted(files):
            info = member(name, tarfile.REGTYPE, 0o644)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, args.out)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
