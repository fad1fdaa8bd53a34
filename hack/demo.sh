#!/usr/bin/env bash
# The README's first command: a real single-node cluster on this machine (hack/cluster.sh up:
# kubelet, containerd, registries, the operator installed with Helm), an image archive generated
# and copied onto a claim as the README's quick start does, examples/imageimport-pvc.yaml applied,
# the ImageImport waited for until Ready, and its digest checked with skopeo. Leaves the cluster
# running and says how to look around and how to stop it. Needs root; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }
# This machine's kubectl, else the one hack/build-test-bins.sh built.
if ! command -v kubectl >/dev/null; then
  kubectl() { "${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}/kubectl" "$@"; }
fi

say "Starting the cluster (hack/cluster.sh up; the first run installs packages and builds the Go binaries)"
eval "$(hack/cluster.sh up)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "Generating an image archive: web:1.4 (an OCI archive, as podman save --format oci-archive writes)"
python3 hack/oci-image.py --out "$work/web-1.4.tar" --name web:1.4 --cmd '["/srv/hello"]' \
  --text "/srv/index.html:0644:hello from web 1.4
" --text "/srv/hello:0755:#!/bin/sh
echo hello
" >/dev/null
ls -l "$work/web-1.4.tar" >&2

say "Namespace shop (Pod Security 'restricted'), registry credentials and CA"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f - >/dev/null
run kubectl label namespace shop pod-security.kubernetes.io/enforce=restricted --overwrite
kubectl -n shop create secret docker-registry regcred --docker-server="$TLS_REGISTRY" \
  --docker-username="$TLS_REGISTRY_USER" --docker-password="$TLS_REGISTRY_PASSWORD" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n shop create configmap registry-ca --from-file=ca.crt="$TLS_REGISTRY_CA" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n shop delete imageimport web-1-4 --ignore-not-found >/dev/null

say "Copying the archive onto the claim 'deliveries' (README, 'The operator')"
run kubectl apply -f examples/deliveries-claim.yaml
run kubectl -n shop wait pod/deliveries-copy --for=condition=Ready --timeout=5m
run kubectl -n shop exec deliveries-copy -- mkdir -p /deliveries/web
run kubectl cp "$work/web-1.4.tar" shop/deliveries-copy:/deliveries/web/web-1.4.tar
run kubectl -n shop delete pod deliveries-copy

say "Applying examples/imageimport-pvc.yaml, its target pointed at this cluster's TLS registry"
# The example names registry.internal:5000; here that is $TLS_REGISTRY, signed by the cluster's CA.
kubectl create --dry-run=client -o json -f examples/imageimport-pvc.yaml |
  jq --arg repo "$TLS_REGISTRY/shop/web" \
    '.spec.target.repository = $repo | .spec.target.caBundleRef = {name: "registry-ca", key: "ca.crt"}' |
  kubectl apply -f -
run kubectl -n shop wait imgi/web-1-4 --for=condition=Ready --timeout=10m
run kubectl get imgi -n shop

digest="$(kubectl -n shop get imgi web-1-4 -o jsonpath='{.status.digest}')"
mkdir -p "$work/certs" && cp "$TLS_REGISTRY_CA" "$work/certs/ca.crt"
seen="$(skopeo inspect --cert-dir "$work/certs" --creds "$TLS_REGISTRY_USER:$TLS_REGISTRY_PASSWORD" \
  "docker://$TLS_REGISTRY/shop/web:1.4" | jq -r .Digest)"
say "status.digest: $digest"
say "skopeo reads:  $seen for $TLS_REGISTRY/shop/web:1.4"
[[ "$digest" == "$seen" ]] || { echo "MISMATCH" >&2; exit 1; }

cat >&2 <<EOF

== Done: the import ran as a real Job Pod on this node. Look around:
$(hack/cluster.sh env)
  kubectl get imgi,jobs,pods -n shop
  kubectl -n shop describe imgi web-1-4
  kubectl -n shop logs job/\$(kubectl -n shop get imgi web-1-4 -o jsonpath='{.status.jobName}')
  kubectl -n imageimport-system logs deploy/imageimport-controller
  skopeo inspect --tls-verify=false docker://\$REGISTRY/imageimport/imageimport:\${IMAGEIMPORT_IMAGE##*:}
== Stop everything (nothing is left behind):
  hack/cluster.sh down
EOF
