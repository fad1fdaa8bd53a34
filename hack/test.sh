#!/usr/bin/env bash
# Runs every test: unit tests, the archive generators, and the end-to-end tests against a
# real registry (started by the tests on loopback) and a real kube-apiserver + etcd (built
# by hack/build-test-bins.sh). Needs docker-registry, skopeo and htpasswd (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export IMAGEIMPORT_TESTBIN_DIR="${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}"
source hack/prereqs.sh
need_rust
need_commands docker-registry skopeo htpasswd openssl
for bin in kube-apiserver etcd crane helm; do
  [[ -x "$IMAGEIMPORT_TESTBIN_DIR/$bin" ]] || {
    prereq_fail "$IMAGEIMPORT_TESTBIN_DIR/$bin: build the test binaries with hack/build-test-bins.sh (Go >= $PREREQ_GO_MIN)"
    exit 1
  }
done
# Two cores: the registry, skopeo and the importer share them; run test binaries one at a time.
cargo test --locked --all-targets --no-fail-fast -- --test-threads=2
