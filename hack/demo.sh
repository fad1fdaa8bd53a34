#!/usr/bin/env bash
# Starts a local kube-apiserver + etcd, a registry and the controller; applies
# examples/imageimport-pvc.yaml with a generated archive and shows it reaching Ready.
# Needs what .ci/run installs (docker-registry, skopeo, the Go-built test binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/build-test-bins.sh kube-apiserver etcd >/dev/null
exec cargo test --test operator demo -- --ignored --nocapture
