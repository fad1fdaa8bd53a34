#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

Subcommands:
  make-archive DIR        build (once) a ~1 GB legacy `docker save` archive from real files
  make-archive-v2 ARCHIVE the next version: the same layers plus a new ~0.4 MB one
  free-port               print a free 127.0.0.1 TCP port
  wait-http URL [SECS]    wait until URL answers (any HTTP status)
  registry-config DIR PORT  write DIR/config.yml for `docker-registry serve`
  sample OUT PID          sample CPU use until SIGTERM (whole machine, per core, PID's tree)
  record ...              turn one run's /usr/bin/time -v output (+ sampler, manifest) into a JSON line
  report RUNS META OUT    medians, ratios, targets; print a table and write OUT (JSON)
"""

import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

# Three layers of real files, shaped like a real image: a big "base" of shared libraries,
# a toolchain, and an application layer (interpreter + scripts + binaries).
# The first existing paths of each list are used (relative to /).
LAYERS = [
    {
        "name": "base: shared libraries",
        "paths": ["usr/lib/x86_64-linux-gnu"],
        # Mesa's DRI drivers are one 25 MB file hard-linked ~14 times: dereferenced, they
        # would add 335 MB of duplicates no real image layer has.
        "exclude": ["usr/lib/x86_64-linux-gnu/dri"],
        "created_by": "COPY base /",
    },
    {
        "name": "toolchain: Go distribution",
        "paths": ["usr/local/go"],
        "created_by": "COPY go /usr/local/go",
    },
    {
        "name": "app: python stdlib, git, perl",
        "paths": ["usr/lib/python3.11", "usr/lib/git-core", "usr/share/perl"],
        "created_by": "COPY app /",
    },
]
# BENCH_SIZE=small: a ~230 MB archive of the same shape, for checking the bench itself on a
# busy machine (its figures are not the 1 GB bench's).
if os.environ.get("BENCH_SIZE") == "small":
    LAYERS = [
        {"name": "base: Go sources", "paths": ["usr/local/go/src"], "created_by": "COPY base /"},
        {"name": "toolchain: Go packages", "paths": ["usr/local/go/pkg"], "created_by": "COPY go /usr/local/go/pkg"},
        {"name": "app: python stdlib", "paths": ["usr/lib/python3.11"], "created_by": "COPY app /"},
    ]
IMAGE_TAG = "bench/polyglot:1"
ARCHIVE_NAME = "polyglot-small-docker-save.tar" if os.environ.get("BENCH_SIZE") == "small" else "polyglot-docker-save.tar"
TAR_OPTS = [
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--hard-dereference",
    "--format=gnu",
    "--no-xattrs",
    "--no-acls",
    "--no-selinux",
]


def sha256_file(path, bufsize=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def make_layer(paths, excludes, out):
    """GNU tar of real files, deterministic; returns (sha256 hex, size)."""
    cmd = ["tar", "-C", "/", "-cf", "-", *TAR_OPTS, *[f"--exclude={e}" for e in excludes], *paths]
    h = hashlib.sha256()
    size = 0
    with open(out, "wb") as f:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while True:
            b = p.stdout.read(1 << 20)
            if not b:
                break
            h.update(b)
            f.write(b)
            size += len(b)
        err = p.stderr.read().decode(errors="replace")
        rc = p.wait()
    # tar exits 1 when a file changed while read: the layer would not be reproducible.
    if rc != 0:
        raise SystemExit(f"tar failed ({rc}) for {paths}: {err}")
    return h.hexdigest(), size


def add_bytes(t, name, data, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 0
    import io

    t.addfile(ti, io.BytesIO(data))


def add_dir(t, name):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    ti.mtime = 0
    t.addfile(ti)


def cmd_make_archive(args):
    d = args[0]
    os.makedirs(d, exist_ok=True)
    archive = os.path.join(d, ARCHIVE_NAME)
    meta_path = archive + ".meta.json"
    if os.path.exists(archive) and os.path.exists(meta_path):
        print(archive)
        return
    t0 = time.time()
    layers = []
    for i, spec in enumerate(LAYERS):
        paths = [p for p in spec["paths"] if os.path.exists("/" + p)]
        if not paths:
            raise SystemExit(f"no source paths for layer {spec['name']}")
        out = os.path.join(d, f"layer{i}.tar")
        print(f"  layer {i}: tar {' '.join(paths)} ...", file=sys.stderr, flush=True)
        hexd, size = make_layer(paths, spec.get("exclude", []), out)
        layers.append({"file": out, "diff_id": "sha256:" + hexd, "size": size, "paths": paths, **spec})
        print(f"  layer {i}: {size / 1e6:.1f} MB sha256:{hexd[:12]}", file=sys.stderr, flush=True)

    created = "1970-01-01T00:00:00Z"
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "history": [{"created": created, "created_by": l["created_by"]} for l in layers],
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
    }
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()

    # v1 ids: a chain over the diff_ids, as old engines derived them.
    parent = ""
    for l in layers:
        l["v1id"] = hashlib.sha256(f"{parent} {l['diff_id']}".encode()).hexdigest()
        l["v1json"] = json.dumps(
            {
                "id": l["v1id"],
                **({"parent": parent} if parent else {}),
                "created": created,
                "container_config": {"Cmd": [l["created_by"]]},
                "os": "linux",
            },
            separators=(",", ":"),
        ).encode()
        parent = l["v1id"]
    manifest = [
        {
            "Config": f"{config_hex}.json",
            "RepoTags": [IMAGE_TAG],
            "Layers": [f"{l['v1id']}/layer.tar" for l in layers],
        }
    ]
    repo, tag = IMAGE_TAG.rsplit(":", 1)
    repositories = {repo: {tag: layers[-1]["v1id"]}}

    # Members in name order, as `docker save` (before Docker 25) wrote them.
    entries = [(f"{config_hex}.json", "config", None)]
    for l in layers:
        entries.append((l["v1id"], "layerdir", l))
    entries.sort(key=lambda e: e[0])
    tmp = archive + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, kind, l in entries:
            if kind == "config":
                add_bytes(t, name, config_bytes)
                continue
            add_dir(t, name + "/")
            add_bytes(t, name + "/VERSION", b"1.0")
            add_bytes(t, name + "/json", l["v1json"])
            ti = tarfile.TarInfo(name + "/layer.tar")
            ti.size = l["size"]
            ti.mode = 0o644
            ti.mtime = 0
            with open(l["file"], "rb") as f:
                t.addfile(ti, f)
        add_bytes(t, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        add_bytes(t, "repositories", json.dumps(repositories, separators=(",", ":")).encode())
    os.replace(tmp, archive)
    for l in layers:
        os.remove(l["file"])
    meta = {
        "archive": archive,
        "archive_bytes": os.path.getsize(archive),
        "image_tag": IMAGE_TAG,
        "image_id": "sha256:" + config_hex,
        "tar_options": TAR_OPTS,
        "layers": [
            {
                "name": l["name"],
                "paths": l["paths"],
                "exclude": l.get("exclude", []),
                "diff_id": l["diff_id"],
                "bytes": l["size"],
            }
            for l in layers
        ],
        "uncompressed_layer_bytes": sum(l["size"] for l in layers),
        "generated_seconds": round(time.time() - t0, 1),
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    print(archive)


V2_ARCHIVE_NAME = ARCHIVE_NAME.replace("polyglot", "polyglot-v2", 1)
V2_IMAGE_TAG = "bench/polyglot:2"
# The new version's only new layer: ~0.4 MB of real text files.
V2_LAYER_PATHS = ["usr/share/common-licenses", "usr/share/doc"]
V2_LAYER_TARGET = 400_000


def cmd_make_archive_v2(args):
    """make-archive-v2 ARCHIVE: the next version of the image in ARCHIVE, as docker save writes
    it: the same three layers (byte for byte) plus one new ~0.4 MB layer on top."""
    src = args[0]
    d = os.path.dirname(src)
    out = os.path.join(d, V2_ARCHIVE_NAME)
    meta_path = out + ".meta.json"
    if os.path.exists(out) and os.path.exists(meta_path):
        print(out)
        return
    with tarfile.open(src) as t:
        members = t.getmembers()
        manifest = json.loads(t.extractfile("manifest.json").read())[0]
        config = json.loads(t.extractfile(manifest["Config"]).read())
    # The new layer: the first files of V2_LAYER_PATHS (name order) up to the target size.
    files = []
    total = 0
    for root in V2_LAYER_PATHS:
        for dirpath, dirnames, filenames in os.walk("/" + root):
            dirnames.sort()
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                if os.path.isfile(p) and not os.path.islink(p) and os.access(p, os.R_OK):
                    files.append(p.lstrip("/"))
                    total += os.path.getsize(p)
                if total >= V2_LAYER_TARGET:
                    break
            if total >= V2_LAYER_TARGET:
                break
        if total >= V2_LAYER_TARGET:
            break
    layer_file = out + ".layer.tar"
    list_file = out + ".files"
    with open(list_file, "w") as f:
        f.write("\n".join(files) + "\n")
    cmd_paths = ["-T", list_file]
    hexd, size = make_layer(cmd_paths, [], layer_file)
    os.remove(list_file)
    created = "1970-01-01T00:00:01Z"
    diff_id = "sha256:" + hexd
    config["rootfs"]["diff_ids"].append(diff_id)
    config["history"].append({"created": created, "created_by": "COPY release /"})
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    config_hex = hashlib.sha256(config_bytes).hexdigest()
    parent = manifest["Layers"][-1].split("/")[0]
    v1id = hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()
    v1json = json.dumps(
        {"id": v1id, "parent": parent, "created": created, "container_config": {"Cmd": ["COPY release /"]}, "os": "linux"},
        separators=(",", ":"),
    ).encode()
    layers = manifest["Layers"] + [f"{v1id}/layer.tar"]
    repo, tag = V2_IMAGE_TAG.rsplit(":", 1)
    tmp = out + ".tmp"
    keep = {l.split("/")[0] for l in manifest["Layers"]}
    with tarfile.open(src) as t, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as w:
        for m in members:
            if m.name.split("/")[0] in keep:
                w.addfile(m, t.extractfile(m) if m.isfile() else None)
        add_dir(w, v1id + "/")
        add_bytes(w, v1id + "/VERSION", b"1.0")
        add_bytes(w, v1id + "/json", v1json)
        ti = tarfile.TarInfo(v1id + "/layer.tar")
        ti.size = size
        ti.mode = 0o644
        ti.mtime = 0
        with open(layer_file, "rb") as f:
            w.addfile(ti, f)
        add_bytes(w, f"{config_hex}.json", config_bytes)
        add_bytes(
            w,
            "manifest.json",
            json.dumps([{"Config": f"{config_hex}.json", "RepoTags": [V2_IMAGE_TAG], "Layers": layers}], separators=(",", ":")).encode(),
        )
        add_bytes(w, "repositories", json.dumps({repo: {tag: v1id}}, separators=(",", ":")).encode())
    os.replace(tmp, out)
    os.remove(layer_file)
    with open(meta_path, "w") as f:
        json.dump(
            {
                "archive": out,
                "archive_bytes": os.path.getsize(out),
                "image_tag": V2_IMAGE_TAG,
                "image_id": "sha256:" + config_hex,
                "new_layer": {"diff_id": diff_id, "bytes": size, "files": len(files)},
                "config_bytes": len(config_bytes),
            },
            f,
            indent=1,
        )
    print(out)


def cmd_free_port(_):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def cmd_wait_http(args):
    url = args[0]
    deadline = time.time() + (float(args[1]) if len(args) > 1 else 30)
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def cmd_registry_config(args):
    d, port = args[0], int(args[1])
    os.makedirs(os.path.join(d, "storage"), exist_ok=True)
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(
            f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {d}/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: imageimport-bench
"""
        )


# ---- CPU sampling ---------------------------------------------------------------------------

CLK = os.sysconf("SC_CLK_TCK")


def per_cpu_busy():
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                out.append((sum(v[:8]) - idle, sum(v[:8])))
    return out


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        v = s[s.rindex(")") + 2 :].split()
        return (int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])) / CLK
    except (OSError, ValueError):
        return None


class _Stop(Exception):
    pass


def find_descendant(root, comm):
    """The first descendant of pid ROOT (or ROOT itself) whose command name is COMM."""
    todo = [root]
    while todo:
        pid = todo.pop(0)
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == comm:
                    return pid
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return None


def cmd_sample(args):
    """sample OUT REGISTRY_PID TOOL_COMM: every 0.25 s until SIGTERM, the busy fraction of each
    core and the cores used by the registry and by the tool (the process named TOOL_COMM under
    the pid written to OUT.pid). Writes a JSON summary to OUT; touches OUT.ready once started."""
    out, pid, comm = args[0], int(args[1]), args[2]
    interval = 0.25

    def on_term(*_):
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    start_cores = per_cpu_busy()
    start_reg = proc_cpu(pid) or 0.0
    t0 = time.monotonic()
    prev, prev_reg, prev_t = start_cores, start_reg, t0
    tool_pid, prev_tool = None, 0.0
    samples = []
    open(out + ".ready", "w").close()
    try:
        while True:
            time.sleep(interval)
            if tool_pid is None:
                try:
                    with open(out + ".pid") as f:
                        tool_pid = find_descendant(int(f.read().strip()), comm)
                except (OSError, ValueError):
                    pass
            cur = per_cpu_busy()
            reg = proc_cpu(pid)
            tool = proc_cpu(tool_pid) if tool_pid else None
            now = time.monotonic()
            fr = [(b1 - b0) / max(1, (t1 - t0_)) for (b0, t0_), (b1, t1) in zip(prev, cur)]
            reg = reg if reg is not None else prev_reg
            tool_cores = None
            if tool is not None:
                tool_cores = round((tool - prev_tool) / (now - prev_t), 2)
                prev_tool = tool
            samples.append(
                {
                    "t": round(now - t0, 2),
                    "cores": [round(x, 2) for x in fr],
                    "registry_cores": round((reg - prev_reg) / (now - prev_t), 2),
                    "tool_cores": tool_cores,
                }
            )
            prev, prev_reg, prev_t = cur, reg, now
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    end_cores = per_cpu_busy()
    end_reg = proc_cpu(pid)
    end_reg = end_reg if end_reg is not None else prev_reg
    dur = time.monotonic() - t0
    busy = [(b1 - b0) / max(1, (t1 - t0_)) for (b0, t0_), (b1, t1) in zip(start_cores, end_cores)]
    both = [s for s in samples if min(s["cores"]) >= 0.9]
    # Samples in which the tool and the registry together kept all cores busy (>= 90 %).
    own = [s for s in samples if s["tool_cores"] is not None]
    own_full = [s for s in own if s["tool_cores"] + s["registry_cores"] >= 0.9 * len(s["cores"])]
    with open(out, "w") as f:
        json.dump(
            {
                "seconds": round(dur, 2),
                "core_busy": [round(b, 3) for b in busy],
                "busy_cores_mean": round(sum(busy), 2),
                "busy_core_s": round(sum(busy) * dur, 2),
                "both_cores_90pct_fraction": round(len(both) / max(1, len(samples)), 2),
                "tool_and_registry_fill_cores_fraction": round(len(own_full) / max(1, len(own)), 2),
                "tool_cores_mean": round(sum(s["tool_cores"] for s in own) / max(1, len(own)), 2),
                "registry_cpu_s": round(end_reg - start_reg, 2),
                "samples": samples,
            },
            f,
        )


# ---- per-run records ------------------------------------------------------------------------


def parse_time_v(path):
    r = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if ":" not in line:
                continue
            k, _, v = line.rpartition(": ")
            k = k.strip()
            if k == "User time (seconds)":
                r["user_s"] = float(v)
            elif k == "System time (seconds)":
                r["sys_s"] = float(v)
            elif k == "Maximum resident set size (kbytes)":
                r["max_rss_kib"] = int(v)
            elif k == "Exit status":
                r["exit"] = int(v)
            elif k.startswith("Elapsed (wall clock) time"):
                parts = [float(x) for x in v.split(":")]
                s = 0.0
                for p in parts:
                    s = s * 60 + p
                r["time_wall_s"] = s
            elif k == "Percent of CPU this job got":
                r["cpu_percent"] = int(v.rstrip("%") or 0)
    return r


def fetch_manifest(host, repo, tag):
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
        digest = resp.headers.get("Docker-Content-Digest")
    m = json.loads(body)
    layers = m.get("layers", [])
    return {
        "manifest_bytes": len(body),
        "manifest_digest": digest,
        "manifest_media_type": m.get("mediaType"),
        "config_bytes": m["config"]["size"],
        "layer_bytes": [l["size"] for l in layers],
        "layer_media_types": sorted({l["mediaType"] for l in layers}),
        "pushed_bytes": m["config"]["size"] + sum(l["size"] for l in layers),
    }


def cmd_record(args):
    """record TOOL KIND LABEL TIMEFILE WALL_S SAMPLEFILE HOST REPO TAG STDOUTFILE STORED_BYTES LOADAVG"""
    tool, kind, label, timefile, wall, samplefile, host, repo, tag, stdoutfile, stored, load = args
    r = {"tool": tool, "kind": kind, "label": label}
    # 1/5/15-minute load averages just before the run: the machine is shared.
    r["loadavg"] = load
    # Bytes the registry's blob store grew by during the run: what was really sent and kept.
    r["stored_bytes"] = int(stored) if stored.lstrip("-").isdigit() else None
    r.update(parse_time_v(timefile))
    r["wall_s"] = round(float(wall), 3)
    r["cpu_s"] = round(r.get("user_s", 0) + r.get("sys_s", 0), 2)
    r["max_rss_mib"] = round(r.get("max_rss_kib", 0) / 1024, 1)
    try:
        with open(samplefile) as f:
            s = json.load(f)
        r["registry_cpu_s"] = s["registry_cpu_s"]
        r["busy_cores_mean"] = s["busy_cores_mean"]
        r["core_busy"] = s["core_busy"]
        r["both_cores_90pct_fraction"] = s["both_cores_90pct_fraction"]
        r["tool_and_registry_fill_cores_fraction"] = s.get("tool_and_registry_fill_cores_fraction")
        r["tool_cores_mean"] = s.get("tool_cores_mean")
        # CPU used by anything else (other users of the machine, the sampler): interference.
        r["other_cpu_s"] = round(s["busy_core_s"] - r["cpu_s"] - s["registry_cpu_s"], 2)
    except (OSError, ValueError):
        pass
    if r.get("exit") == 0:
        try:
            r.update(fetch_manifest(host, repo, tag))
        except Exception as e:  # noqa: BLE001
            r["manifest_error"] = str(e)
    try:
        with open(stdoutfile) as f:
            lines = [l.strip() for l in f if l.strip()]
        if lines:
            r["stdout_last"] = lines[-1][:200]
            if tool == "imageimport" and r.get("manifest_digest"):
                r["printed_digest_matches"] = lines[-1].endswith("@" + r["manifest_digest"])
    except OSError:
        pass
    print(json.dumps(r))


# ---- report ---------------------------------------------------------------------------------


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def cmd_report(args):
    runs_path, meta_path, out = args
    with open(meta_path) as f:
        meta = json.load(f)
    runs = []
    with open(runs_path) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))

    def sel(tool, kind, label=None):
        return [
            r for r in runs
            if r["tool"] == tool and r["kind"] == kind and (label is None or r["label"] == label)
        ]

    failed = [r for r in runs if r.get("exit") != 0]
    sk = sel("skopeo", "cold")
    ii = sel("imageimport", "cold", "default")
    warm = sel("imageimport", "warm")
    skw = sel("skopeo", "warm")

    def col(rs, k):
        return [r.get(k) for r in rs if r.get("exit") == 0]

    summary = {}
    for name, rs in [("skopeo", sk), ("imageimport", ii)]:
        summary[name] = {
            k: med(col(rs, k))
            for k in ["wall_s", "cpu_s", "user_s", "sys_s", "max_rss_mib", "pushed_bytes",
                      "registry_cpu_s", "busy_cores_mean"]
        }
        # Lower bound of wall time if tool + registry CPU were spread over all cores.
        summary[name]["cpu_bound_wall_s"] = med(
            [(r["cpu_s"] + r.get("registry_cpu_s", 0)) / os.cpu_count() for r in rs if r.get("exit") == 0]
        )
        summary[name]["all_wall_s"] = col(rs, "wall_s")
        summary[name]["all_other_cpu_s"] = col(rs, "other_cpu_s")
        summary[name]["all_cpu_s"] = col(rs, "cpu_s")
        summary[name]["all_max_rss_mib"] = col(rs, "max_rss_mib")
        summary[name]["all_pushed_bytes"] = col(rs, "pushed_bytes")
    summary["imageimport_warm_wall_s"] = med(col(warm, "wall_s"))
    summary["imageimport_all_warm_wall_s"] = col(warm, "wall_s")
    summary["skopeo_warm_wall_s"] = med(col(skw, "wall_s"))
    s, i = summary["skopeo"], summary["imageimport"]
    ratio = lambda a, b: None if a is None or not b else a / b  # noqa: E731
    ratios = {
        "wall_skopeo_over_imageimport": ratio(s["wall_s"], i["wall_s"]),
        "cpu_skopeo_over_imageimport": ratio(s["cpu_s"], i["cpu_s"]),
        "pushed_bytes_imageimport_over_skopeo": ratio(i["pushed_bytes"], s["pushed_bytes"]),
        "skopeo_compression_ratio": ratio(s["pushed_bytes"], meta["uncompressed_layer_bytes"]),
        "imageimport_compression_ratio": ratio(i["pushed_bytes"], meta["uncompressed_layer_bytes"]),
    }
    ok = lambda c: None if c is None else ("PASS" if c else "MISS")  # noqa: E731
    w = ratios["wall_skopeo_over_imageimport"]
    pb = ratios["pushed_bytes_imageimport_over_skopeo"]
    targets = {
        "wall_ratio_ge_2.0": ok(None if w is None else w >= 2.0),
        "wall_ratio_ge_2.5_aim": ok(None if w is None else w >= 2.5),
        "pushed_bytes_ratio_le_1.05": ok(None if pb is None else pb <= 1.05),
        "peak_rss_le_64MiB": ok(None if i["max_rss_mib"] is None else max(summary["imageimport"]["all_max_rss_mib"]) <= 64),
        "warm_repush_lt_1s": ok(None if summary["imageimport_warm_wall_s"] is None else max(summary["imageimport_all_warm_wall_s"]) < 1.0),
    }

    # ---- print
    print()
    print(f"archive: {meta['archive']} ({meta['archive_bytes'] / 1e6:.1f} MB, "
          f"{len(meta['layers'])} layers, {meta['uncompressed_layer_bytes'] / 1e6:.1f} MB of layer tar)")
    hdr = f"{'run':<30} {'wall s':>7} {'cpu s':>6} {'user':>6} {'sys':>5} {'RSS MiB':>8} {'pushed MB':>10} {'ratio':>6} {'stored MB':>9} {'reg cpu':>7} {'busy':>5} {'other':>6} {'fill':>5}  load (1/5/15 min)"
    print(hdr)
    print("-" * len(hdr))
    for r in runs:
        name = f"{r['tool']} {r['kind']} {r['label']}"
        pbytes = r.get("pushed_bytes")
        cr = None if pbytes is None else pbytes / meta["uncompressed_layer_bytes"]
        flag = "" if r.get("exit") == 0 else f"  EXIT {r.get('exit')}"
        print(f"{name:<30} {fmt(r.get('wall_s')):>7} {fmt(r.get('cpu_s'), 1):>6} {fmt(r.get('user_s'), 1):>6} "
              f"{fmt(r.get('sys_s'), 1):>5} {fmt(r.get('max_rss_mib'), 1):>8} "
              f"{fmt(None if pbytes is None else pbytes / 1e6, 1):>10} {fmt(cr, 3):>6} "
              f"{fmt(None if r.get('stored_bytes') is None else r['stored_bytes'] / 1e6, 1):>9} "
              f"{fmt(r.get('registry_cpu_s'), 1):>7} {fmt(r.get('busy_cores_mean'), 2):>5} {fmt(r.get('other_cpu_s'), 1):>6} {fmt(r.get('tool_and_registry_fill_cores_fraction'), 2):>5}"
              f"  {r.get('loadavg', '-')}{flag}")
    print(f"(pushed = config + layers of the pushed manifest; stored = growth of the registry's blob store during the run;\n"
          f" busy = mean busy cores of the machine during the run, of {os.cpu_count()}; reg cpu = registry CPU s;\n"
          " other = CPU s used meanwhile by other processes on the machine: interference;\n"
          " fill = share of 0.25 s samples in which tool + registry kept >= 90 % of all cores busy)")
    noisy = [r for r in runs if r["kind"] == "cold" and (r.get("other_cpu_s") or 0) > 0.15 * r["wall_s"]]
    if noisy:
        print(f"WARNING: {len(noisy)} cold run(s) shared the CPU with other work (other > 0.15 core): "
              "wall times and ratios are not clean")
    print()
    print("medians of cold runs:")
    for name in ("skopeo", "imageimport"):
        x = summary[name]
        print(f"  {name:<12} wall {fmt(x['wall_s'])} s (cpu-bound floor {fmt(x['cpu_bound_wall_s'])} s), cpu {fmt(x['cpu_s'], 1)} s, peak RSS {fmt(x['max_rss_mib'], 1)} MiB, "
              f"pushed {fmt(None if x['pushed_bytes'] is None else x['pushed_bytes'] / 1e6, 1)} MB")
    print()
    print("ratios and targets:")
    print(f"  wall skopeo/imageimport        {fmt(w)}x   target >= 2.0x: {targets['wall_ratio_ge_2.0']}  (aim 2.5x: {targets['wall_ratio_ge_2.5_aim']})")
    print(f"  cpu  skopeo/imageimport        {fmt(ratios['cpu_skopeo_over_imageimport'])}x")
    print(f"  pushed bytes imageimport/skopeo {fmt(pb, 3)}   target <= 1.05: {targets['pushed_bytes_ratio_le_1.05']}")
    print(f"  imageimport peak RSS (max)      {fmt(max(i['all_max_rss_mib']) if i['all_max_rss_mib'] else None, 1)} MiB   target <= 64 MiB: {targets['peak_rss_le_64MiB']}")
    print(f"  imageimport warm re-push (max)  {fmt(max(summary['imageimport_all_warm_wall_s']) if summary['imageimport_all_warm_wall_s'] else None, 3)} s   target < 1 s: {targets['warm_repush_lt_1s']}")
    if summary["skopeo_warm_wall_s"] is not None:
        print(f"  (skopeo warm re-push, with its local blob-info cache: {fmt(summary['skopeo_warm_wall_s'])} s)")
    digests = {}
    for r in runs:
        if r.get("manifest_digest"):
            # v2 pushed beside v1 must give the manifest of a cold push of v2.
            label = "v2" if r.get("kind") == "upgrade" else r["label"]
            digests.setdefault(f"{r['tool']} {label}", set()).add(r["manifest_digest"])
    print("  manifest digests: " + "; ".join(
        f"{k}: {'same on every run' if len(v) == 1 else f'{len(v)} DIFFERENT'}" for k, v in digests.items()))
    bad_print = [r for r in runs if r.get("printed_digest_matches") is False]
    if bad_print:
        print(f"  WARNING: {len(bad_print)} imageimport run(s) printed a digest other than the registry's")
    summary["distinct_manifest_digests"] = {k: sorted(v) for k, v in digests.items()}
    # ---- peers: every tool a user would pick, on the same archive and registry
    peers = {}
    for tool in ("crane", "regctl"):
        rs = sel(tool, "cold")
        if rs:
            peers[tool] = {k: med(col(rs, k)) for k in ["wall_s", "cpu_s", "max_rss_mib", "pushed_bytes"]}
            peers[tool]["wall_over_imageimport"] = ratio(peers[tool]["wall_s"], i["wall_s"])
            peers[tool]["pushed_bytes_over_imageimport"] = ratio(peers[tool]["pushed_bytes"], i["pushed_bytes"])
    if peers:
        print()
        print("peers (cold, medians; ratio = peer wall / imageimport wall):")
        for tool, x in [("skopeo", dict(s, wall_over_imageimport=w, pushed_bytes_over_imageimport=ratio(s["pushed_bytes"], i["pushed_bytes"])))] + list(peers.items()):
            print(f"  {tool:<8} wall {fmt(x['wall_s']):>6} s  {fmt(x['wall_over_imageimport'])}x  cpu {fmt(x['cpu_s'], 1):>5} s  "
                  f"peak RSS {fmt(x['max_rss_mib'], 1):>6} MiB  pushed {fmt(None if x['pushed_bytes'] is None else x['pushed_bytes'] / 1e6, 1):>7} MB "
                  f"({fmt(x['pushed_bytes_over_imageimport'], 3)}x imageimport's)")
    summary["peers"] = peers

    # ---- a new version beside the old one (issue 12 part 2)
    up = sel("imageimport", "upgrade", "default")
    trusted = sel("imageimport", "upgrade", "trust-registry")
    v2 = sel("imageimport", "cold", "v2")
    if up and v2:
        up_wall, v2_wall = med(col(up, "wall_s")), med(col(v2, "wall_s"))
        limits = [
            r["layer_bytes"][-1] + r["config_bytes"] + r["manifest_bytes"]
            for r in up if r.get("exit") == 0 and r.get("layer_bytes")
        ]
        stored = col(up, "stored_bytes")
        up_ratio = ratio(up_wall, v2_wall)
        targets["upgrade_le_0.3x_cold_v2"] = ok(None if up_ratio is None else up_ratio <= 0.3)
        targets["upgrade_sends_only_new_layer_config_manifest"] = ok(
            None if not stored or not limits else max(stored) <= max(limits)
        )
        summary["upgrade"] = {"wall_s": up_wall, "cold_v2_wall_s": v2_wall, "ratio": up_ratio,
                              "stored_bytes": stored, "limit_bytes": limits}
        print()
        print("a new version (v2 = v1 + one new layer) pushed beside v1 under a new tag:")
        print(f"  wall {fmt(up_wall)} s vs cold push of v2 {fmt(v2_wall)} s: {fmt(up_ratio)}x   target <= 0.3x: {targets['upgrade_le_0.3x_cold_v2']}")
        print(f"  registry blob store grew by {stored} bytes; new layer + config + manifest = {limits}   "
              f"target: no more: {targets['upgrade_sends_only_new_layer_config_manifest']}")
        if trusted:
            t_wall = med(col(trusted, "wall_s"))
            t_ratio = ratio(t_wall, v2_wall)
            t_stored = col(trusted, "stored_bytes")
            targets["upgrade_trust_registry_le_0.3x_cold_v2"] = ok(None if t_ratio is None else t_ratio <= 0.3)
            summary["upgrade_trust_registry"] = {"wall_s": t_wall, "ratio": t_ratio, "stored_bytes": t_stored}
            print(f"  --reuse trust-registry (blobs not read back): wall {fmt(t_wall)} s: {fmt(t_ratio)}x   "
                  f"target <= 0.3x: {targets['upgrade_trust_registry_le_0.3x_cold_v2']}; blob store grew by {t_stored} bytes")
    if failed:
        print(f"\n{len(failed)} run(s) FAILED: " + ", ".join(f"{r['tool']} {r['kind']} {r['label']}" for r in failed))

    result = {"meta": meta, "summary": summary, "ratios": ratios, "targets": targets, "runs": runs}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def main():
    cmds = {
        "make-archive": cmd_make_archive,
        "make-archive-v2": cmd_make_archive_v2,
        "free-port": cmd_free_port,
        "wait-http": cmd_wait_http,
        "registry-config": cmd_registry_config,
        "sample": cmd_sample,
        "record": cmd_record,
        "report": cmd_report,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        raise SystemExit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
