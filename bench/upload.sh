#!/usr/bin/env bash
# The upload bench (issue 9, "Speed and limits"): the ~1 GB bench archive uploaded with
# `kubectl-imageimport upload` through the upload service on loopback, against `imageimport
# push` of the same file, with release binaries. Each run is tests/upload_bench.rs (the test
# harness's kube-apiserver + etcd, controller, upload service and worker as processes, and two
# fresh docker-registry instances), built with `cargo test --release`. See bench/README.md.
#
# Environment:
#   BENCH_RUNS   runs (default 2), alternating which goes first (upload, then push, ...)
#   BENCH_OUT    also append the output to this file
#   UPLOAD_BENCH_ARCHIVE  the archive (default /tmp/imageimport-bench/polyglot-docker-save.tar,
#                made by bench/run.sh or `python3 bench/benchlib.py make-archive DIR`)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUNS=${BENCH_RUNS:-2}
export UPLOAD_BENCH_ARCHIVE=${UPLOAD_BENCH_ARCHIVE:-/tmp/imageimport-bench/polyglot-docker-save.tar}
export IMAGEIMPORT_TESTBIN_DIR=${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}
[[ -f $UPLOAD_BENCH_ARCHIVE ]] ||
    { echo "no $UPLOAD_BENCH_ARCHIVE: python3 bench/benchlib.py make-archive $(dirname "$UPLOAD_BENCH_ARCHIVE")" >&2; exit 1; }

cd "$ROOT"
cargo test --release --locked --test upload_bench --no-run >&2
out=${BENCH_OUT:-/dev/null}
log=$(mktemp "${TMPDIR:-/tmp}/upload-bench.XXXXXX")
for ((i = 1; i <= RUNS; i++)); do
    if ((i % 2)); then first=upload; else first=push; fi
    echo "== run $i/$RUNS, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)" |
        tee -a "$out"
    if ! UPLOAD_BENCH_FIRST=$first cargo test --release --locked --test upload_bench -- \
        --ignored --nocapture --test-threads=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "run $i failed (whole output: $log)" >&2
        exit 1
    fi
    grep -E '^(archive|order|push|upload |digest |cpu |targets)' "$log" | tee -a "$out"
done
rm -f "$log"
