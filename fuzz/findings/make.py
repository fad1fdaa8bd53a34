#!/usr/bin/env python3
"""Writes the reproducers described in README.md (deterministic: mtime 0, ustar).

    python3 make.py nested-index N OUT   # index.json -> 3 nested indexes -> 1 manifest, N children each
    python3 make.py long-path N OUT      # manifest.json whose Config path has N components
    python3 make.py ws-config OUT        # OCI archive whose config blob starts with 100 spaces
"""
import hashlib
import io
import json
import sys
import tarfile

IDX = "application/vnd.oci.image.index.v1+json"
MAN = "application/vnd.oci.image.manifest.v1+json"
CFG = "application/vnd.oci.image.config.v1+json"
LAYOUT = ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def tar_of(members):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def desc(mt, blob, **extra):
    return dict(mediaType=mt, digest="sha256:" + sha(blob), size=len(blob), **extra)


def config(prefix=b""):
    return prefix + json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()


def manifest(cfg):
    return json.dumps(
        {"schemaVersion": 2, "mediaType": MAN, "config": desc(CFG, cfg), "layers": []}
    ).encode()


def nested_index(n, levels=4):
    cfg = config()
    man = manifest(cfg)
    members = [("blobs/sha256/" + sha(cfg), cfg), ("blobs/sha256/" + sha(man), man)]
    child, child_mt = man, MAN
    for lvl in range(levels):
        idx = json.dumps(
            {"schemaVersion": 2, "mediaType": IDX, "manifests": [desc(child_mt, child)] * n}
        ).encode()
        name = "index.json" if lvl == levels - 1 else "blobs/sha256/" + sha(idx)
        members.append((name, idx))
        child, child_mt = idx, IDX
    return tar_of(members + [LAYOUT])


def long_path(n):
    m = json.dumps([{"Config": "a/" * n + "x.json", "RepoTags": ["t:1"], "Layers": []}])
    return tar_of([("manifest.json", m.encode())])


def ws_config():
    cfg = config(b" " * 100)
    man = manifest(cfg)
    ann = {"org.opencontainers.image.ref.name": "ws:1"}
    idx = json.dumps({"schemaVersion": 2, "manifests": [desc(MAN, man, annotations=ann)]}).encode()
    return tar_of(
        [LAYOUT, ("blobs/sha256/" + sha(cfg), cfg), ("blobs/sha256/" + sha(man), man), ("index.json", idx)]
    )


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "nested-index":
        data, out = nested_index(int(sys.argv[2])), sys.argv[3]
    elif kind == "long-path":
        data, out = long_path(int(sys.argv[2])), sys.argv[3]
    elif kind == "ws-config":
        data, out = ws_config(), sys.argv[2]
    else:
        sys.exit(__doc__)
    with open(out, "wb") as f:
        f.write(data)
    print(out, len(data), "bytes")
