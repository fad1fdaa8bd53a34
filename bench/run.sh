#!/usr/bin/env bash
# imageimport vs skopeo (`skopeo copy docker-archive:`), crane (`crane push`) and regctl
# (`regctl image import`) on the same ~1 GB docker-save archive and the same kind of registry, in
# one run; and a new version of the image pushed beside the old one. See bench/README.md.
#
# Environment:
#   BENCH_DIR        cache + scratch dir (default /tmp/imageimport-bench; the archive is kept)
#   BENCH_RUNS       cold runs per tool, alternating tools (default 2)
#   BENCH_VARIANTS   1 (default): also one cold imageimport run each with --compression none/zstd
#   BENCH_QUIET_WAIT seconds to wait, before each cold run, for the machine to be idle (default 30)
#   BENCH_NICE       nice value for the bench and everything it starts (default -20 as root, so
#                    that other work on a shared machine disturbs less; 0 to leave it)
#   BENCH_PIDSTAT    1 (default when pidstat exists): log `pidstat -u -t` per run in the work dir
#   BENCH_NO_BUILD   1: do not run `cargo build --release`
#   BENCH_BIN        the imageimport binary (default target/release/imageimport)
#   BENCH_SAVE       1 (default): copy the result to bench/results/latest.json and
#                    bench/results/<date>-polyglot.json
#   BENCH_PEERS      1 (default): also crane and regctl, built by bench/build-peers.sh
#   BENCH_UPGRADE    1 (default): also v2 beside v1 under a new tag, and a cold push of v2
#   BENCH_SIZE       small: a ~230 MB archive of the same shape, to check the bench on a busy
#                    machine (results go to bench/results/<date>-small.json, not latest.json)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BENCH_DIR=${BENCH_DIR:-/tmp/imageimport-bench}
RUNS=${BENCH_RUNS:-2}
VARIANTS=${BENCH_VARIANTS:-1}
QUIET_WAIT=${BENCH_QUIET_WAIT:-30}
if [[ $(id -u) == 0 ]]; then NICE=${BENCH_NICE:--20}; else NICE=${BENCH_NICE:-0}; fi
if command -v pidstat >/dev/null; then PIDSTAT=${BENCH_PIDSTAT:-1}; else PIDSTAT=0; fi
PY=${PYTHON:-python3}
LIB="$HERE/benchlib.py"
BIN=${BENCH_BIN:-"$ROOT/target/release/imageimport"}
SKOPEO=${SKOPEO:-skopeo}
REGISTRY_BIN=${REGISTRY_BIN:-docker-registry}

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# With autogroup scheduling (kernel.sched_autogroup_enabled=1) a nice value only counts
# within its session: run the bench in a session of its own and give that session's group
# the priority, so that other work on a shared machine disturbs the measurements less.
if [[ $NICE != 0 && -z ${BENCH_SESSION:-} ]]; then
    BENCH_SESSION=1 setsid bash "${BASH_SOURCE[0]}" "$@" &
    child=$!
    trap 'kill -TERM -- -"$child" 2>/dev/null; wait "$child"; exit 130' INT TERM
    wait "$child"
    exit $?
fi
if [[ $NICE != 0 ]]; then
    if [[ -w /proc/self/autogroup ]]; then
        echo "$NICE" >/proc/self/autogroup 2>/dev/null || log "could not set the autogroup nice"
    fi
    renice -n "$NICE" -p $$ >/dev/null || log "renice $NICE failed; running at normal priority"
fi


# ---- prerequisites
for c in "$SKOPEO" "$REGISTRY_BIN" tar "$PY" timeout; do
    command -v "$c" >/dev/null || die "$c not found"
done
if [[ ! -x /usr/bin/time ]]; then
    log "installing GNU time (Debian package 'time')"
    apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; } ||
        die "/usr/bin/time missing: apt-get install time"
fi

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet) || die "build failed"
fi
[[ -x $BIN ]] || die "$BIN missing"
PEERS=${BENCH_PEERS:-1}
UPGRADE=${BENCH_UPGRADE:-1}
if [[ $PEERS == 1 ]]; then
    log "peers: crane and regctl from their Go modules (bench/build-peers.sh)"
    PEER_DIR=$(bash "$HERE/build-peers.sh") || die "building the peers failed (BENCH_PEERS=0 skips them)"
    CRANE="$PEER_DIR/crane"
    REGCTL="$PEER_DIR/regctl"
fi

mkdir -p "$BENCH_DIR"
log "archive (generated once into $BENCH_DIR)"
ARCHIVE=$("$PY" "$LIB" make-archive "$BENCH_DIR")
META="$ARCHIVE.meta.json"
if [[ $UPGRADE == 1 ]]; then
    ARCHIVE_V2=$("$PY" "$LIB" make-archive-v2 "$ARCHIVE")
    cat "$ARCHIVE_V2" >/dev/null
fi
# Every tool reads the archive from the page cache: warm it once.
cat "$ARCHIVE" >/dev/null

WORK=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
RUNS_FILE="$WORK/runs.jsonl"
: >"$RUNS_FILE"
REG_PID=""
REG_DIR=""
HOST=""
SAMPLER_PID=""
PIDSTAT_PID=""
N=0

stop_registry() {
    if [[ -n $REG_PID ]]; then
        kill "$REG_PID" 2>/dev/null || true
        wait "$REG_PID" 2>/dev/null || true
        REG_PID=""
    fi
    if [[ -n $REG_DIR ]]; then
        rm -rf "$REG_DIR/storage"
        REG_DIR=""
    fi
}
cleanup() {
    if [[ -n $SAMPLER_PID ]]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    if [[ -n $PIDSTAT_PID ]]; then
        kill "$PIDSTAT_PID" 2>/dev/null || true
        wait "$PIDSTAT_PID" 2>/dev/null || true
    fi
    stop_registry
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A fresh registry (new, empty storage) on a free loopback port.
start_registry() {
    local label=$1 port
    REG_DIR="$WORK/registry-$label"
    mkdir -p "$REG_DIR"
    port=$("$PY" "$LIB" free-port)
    "$PY" "$LIB" registry-config "$REG_DIR" "$port"
    "$REGISTRY_BIN" serve "$REG_DIR/config.yml" >"$REG_DIR/registry.log" 2>&1 &
    REG_PID=$!
    HOST="127.0.0.1:$port"
    "$PY" "$LIB" wait-http "http://$HOST/v2/" 30 || { cat "$REG_DIR/registry.log" >&2; die "registry did not start"; }
}

# Wait (up to QUIET_WAIT s) until the machine is idle, so that others' work does not
# land inside a measurement. Interference that remains is reported as other_cpu_s.
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(awk '/^cpu /{b=$2+$3+$4+$7+$8+$9; t=b+$5+$6; print b, t}' /proc/stat)
        sleep 1
        busy=$(awk -v prev="$busy" '/^cpu /{split(prev,p," "); b=$2+$3+$4+$7+$8+$9; t=b+$5+$6; printf "%.2f", (b-p[1])/(t-p[2])*2}' /proc/stat)
        if awk -v b="$busy" 'BEGIN{exit !(b < 0.25)}' || ((waited >= QUIET_WAIT)); then
            if ((waited > 0)); then log "  (waited ${waited}s for idle; busy cores now $busy)"; fi
            return 0
        fi
        waited=$((waited + 1))
    done
}

# measure TOOL KIND LABEL REPO TAG -- COMMAND...
measure() {
    local tool=$1 kind=$2 label=$3 repo=$4 tag=$5
    shift 6
    N=$((N + 1))
    local base="$WORK/$(printf %02d "$N")-$tool-$kind-$label"
    if [[ $kind == cold ]]; then wait_quiet; fi
    rm -f "$base.sample.ready" "$base.sample.pid"
    # /proc/PID/comm holds at most 15 characters of the program's name.
    "$PY" "$LIB" sample "$base.sample" "$REG_PID" "$(basename "$1" | cut -c1-15)" &
    SAMPLER_PID=$!
    if [[ $PIDSTAT == 1 && $kind == cold ]]; then
        # Per-thread CPU of every active task, every second (threads of the tools are
        # named tokio-runtime-w, rayon…: filter by TGID afterwards).
        LC_ALL=C pidstat -u -t -h 1 >"$base.pidstat" 2>&1 &
        PIDSTAT_PID=$!
    fi
    while [[ ! -e $base.sample.ready ]]; do sleep 0.02; done
    local t0 t1 stored0 stored1 load0
    # The machine is shared: the load average beside each figure says how loaded it was.
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    stored0=$(stored_bytes)
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$base.time" timeout 600 "$@" >"$base.out" 2>"$base.err" &
    local job=$!
    echo "$job" >"$base.sample.pid"
    wait "$job" || true
    t1=$(date +%s.%N)
    kill -TERM "$SAMPLER_PID"
    wait "$SAMPLER_PID" || true
    SAMPLER_PID=""
    if [[ -n $PIDSTAT_PID ]]; then
        kill "$PIDSTAT_PID" 2>/dev/null || true
        wait "$PIDSTAT_PID" 2>/dev/null || true
        PIDSTAT_PID=""
    fi
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
    stored1=$(stored_bytes)
    "$PY" "$LIB" record "$tool" "$kind" "$label" "$base.time" "$wall" "$base.sample" \
        "$HOST" "$repo" "$tag" "$base.out" "$((${stored1:-0} - ${stored0:-0}))" "$load0" >>"$RUNS_FILE"
    "$PY" - "$RUNS_FILE" <<'EOF' >&2
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
pb = r.get("pushed_bytes")
print(f"  {r['tool']:<11} {r['kind']:<4} {r['label']:<7} wall {r['wall_s']:6.2f}s  cpu {r['cpu_s']:5.1f}s  "
      f"rss {r.get('max_rss_mib', 0):6.1f} MiB  pushed {'-' if pb is None else f'{pb/1e6:.1f} MB':>9}  "
      f"registry cpu {r.get('registry_cpu_s', '-')}s  other cpu {r.get('other_cpu_s', '-')}s  "
      f"tool cores {r.get('tool_cores_mean', '-')}  fill {r.get('tool_and_registry_fill_cores_fraction', '-')}  load {r.get('loadavg', '-')}"
      + ("" if r.get("exit") == 0 else f"  FAILED exit {r.get('exit')}"))
EOF
    if ! grep -q '"exit": 0' <<<"$(tail -1 "$RUNS_FILE")"; then
        log "  stderr: $(tail -3 "$base.err")"
    fi
}

skopeo_push() { # KIND
    measure skopeo "$1" default bench/skopeo 1 -- \
        "$SKOPEO" copy -q --dest-tls-verify=false "docker-archive:$ARCHIVE" "docker://$HOST/bench/skopeo:1"
}
ii_push() { # KIND LABEL [extra args]
    local kind=$1 label=$2
    shift 2
    measure imageimport "$kind" "$label" bench/ii 1 -- \
        "$BIN" push --insecure -q "$@" "$ARCHIVE" "$HOST/bench/ii:1"
}
# Bytes of the blobs the registry stores (their `data` files; directories not counted).
stored_bytes() {
    # No blobs directory before the first push.
    { find "$REG_DIR/storage/docker/registry/v2/blobs" -type f -name data -printf '%s\n' 2>/dev/null || true; } |
        awk '{ s += $1 } END { print s + 0 }'
}

ii_push_v2() { # KIND LABEL [PUSH FLAGS...]: v2 under the new tag bench/ii:2
    local kind=$1 label=$2
    shift 2
    measure imageimport "$kind" "$label" bench/ii 2 -- \
        "$BIN" push --insecure -q "$@" "$ARCHIVE_V2" "$HOST/bench/ii:2"
}
crane_push() {
    measure crane cold default bench/crane 1 -- \
        "$CRANE" push --insecure "$ARCHIVE" "$HOST/bench/crane:1"
}
regctl_push() {
    measure regctl cold default bench/regctl 1 -- \
        "$REGCTL" --host "reg=$HOST,tls=disabled" image import "$HOST/bench/regctl:1" "$ARCHIVE"
}

log "work dir $WORK; $RUNS cold run(s) per tool, alternating"
for ((i = 1; i <= RUNS; i++)); do
    if ((i % 2)); then order=(skopeo imageimport); else order=(imageimport skopeo); fi
    if [[ $PEERS == 1 ]]; then order+=(crane regctl); fi
    for tool in "${order[@]}"; do
        start_registry "$tool-$i"
        case $tool in
            skopeo) skopeo_push cold; skopeo_push warm ;;
            imageimport)
                ii_push cold default
                ii_push warm default
                if [[ $UPGRADE == 1 ]]; then ii_push_v2 upgrade default; fi
                ;;
            crane) crane_push ;;
            regctl) regctl_push ;;
        esac
        stop_registry
    done
    if [[ $UPGRADE == 1 ]]; then
        start_registry "imageimport-v2-$i"
        ii_push_v2 cold v2
        stop_registry
        # The opt-in: blobs taken on the registry's word (v1 pushed first, not measured).
        start_registry "imageimport-trust-$i"
        "$BIN" push --insecure -q "$ARCHIVE" "$HOST/bench/ii:1" >/dev/null
        ii_push_v2 upgrade trust-registry --reuse trust-registry
        stop_registry
    fi
done
if [[ $VARIANTS == 1 ]]; then
    for comp in none zstd; do
        start_registry "imageimport-$comp"
        ii_push cold "$comp" --compression "$comp"
        stop_registry
    done
fi

ENV_JSON="$WORK/env.json"
CRANE=${CRANE:-} REGCTL=${REGCTL:-} "$PY" - "$ENV_JSON" "$ROOT" "$SKOPEO" "$REGISTRY_BIN" "$RUNS" "$NICE" "$QUIET_WAIT" <<'EOF'
import json, os, platform, subprocess, sys
out, root, skopeo, reg, runs, nice, quiet = sys.argv[1:]
def sh(*a, cwd=None):
    try:
        return subprocess.run(a, cwd=cwd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
json.dump({
    "date": sh("date", "-u", "+%Y-%m-%dT%H:%M:%SZ"),
    "host": {"cpu": cpu, "cores": os.cpu_count(), "sha_ni": " sha_ni " in flags + " ",
             "kernel": platform.release(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
    "imageimport_commit": sh("git", "rev-parse", "HEAD", cwd=root),
    "imageimport_dirty_src": bool(sh("git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", cwd=root)),
    "rustc": sh("rustc", "--version"),
    "skopeo": sh(skopeo, "--version"),
    "registry": sh(reg, "--version"),
    "cold_runs_per_tool": int(runs),
    "nice": int(nice),
    "quiet_wait_s": int(quiet),
    "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    "commands": {
        "skopeo": "skopeo copy -q --dest-tls-verify=false docker-archive:ARCHIVE docker://HOST/bench/skopeo:1",
        "imageimport": "target/release/imageimport push --insecure -q [--compression C] ARCHIVE HOST/bench/ii:1",
        "imageimport upgrade": "target/release/imageimport push --insecure -q ARCHIVE_V2 HOST/bench/ii:2 (after ARCHIVE to bench/ii:1)",
        "imageimport upgrade, trust-registry": "target/release/imageimport push --insecure -q --reuse trust-registry ARCHIVE_V2 HOST/bench/ii:2 (after ARCHIVE to bench/ii:1, another registry)",
        "crane": "crane push --insecure ARCHIVE HOST/bench/crane:1",
        "regctl": "regctl --host reg=HOST,tls=disabled image import HOST/bench/regctl:1 ARCHIVE",
    },
    "peers": {"crane": sh(os.environ.get("CRANE", "crane"), "version"),
              "regctl": sh(os.environ.get("REGCTL", "regctl"), "version", "--format", "{{.VCSTag}}")},
}, open(out, "w"), indent=1)
EOF
"$PY" - "$META" "$ENV_JSON" "$WORK/meta.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); m["env"] = json.load(open(sys.argv[2]))
json.dump(m, open(sys.argv[3], "w"), indent=1)
EOF
"$PY" "$LIB" report "$RUNS_FILE" "$WORK/meta.json" "$WORK/result.json"

if [[ ${BENCH_SAVE:-1} == 1 ]]; then
    mkdir -p "$HERE/results"
    if [[ ${BENCH_SIZE:-} == small ]]; then
        cp "$WORK/result.json" "$HERE/results/$(date -u +%F)-small.json"
        log "results: bench/results/$(date -u +%F)-small.json (raw: $WORK)"
    else
        cp "$WORK/result.json" "$HERE/results/latest.json"
        cp "$WORK/result.json" "$HERE/results/$(date -u +%F)-polyglot.json"
        log "results: bench/results/latest.json, bench/results/$(date -u +%F)-polyglot.json (raw: $WORK)"
    fi
fi
