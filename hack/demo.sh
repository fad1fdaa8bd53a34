#!/usr/bin/env bash
# The README's first command: a real single-node cluster on this machine (hack/cluster.sh up:
# kubelet, containerd, registries, the operator installed with Helm), an image archive generated
# and copied onto a claim as the README's quick start does, examples/imageimport-pvc.yaml applied,
# the ImageImport waited for until Ready, and its digest checked with skopeo. Ends with the web
# console's address ($UPLOAD_URL) and a token to sign in with: a ServiceAccount `shop/uploader`
# whose Role lets it create imports, upload into them and list Secrets in shop (nothing else).
# Leaves the cluster running and says how to look around and how to stop it. Needs root;
# installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@" >&2; }
# This machine's kubectl, else the one hack/build-test-bins.sh built.
command -v kubectl >/dev/null || PATH="$PATH:${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}"

# A second run starts from a clean slate: namespace shop and the claim's volume made anew (the
# volume of a deleted claim stays Released and would not bind again).
if env_out="$(hack/cluster.sh env 2>/dev/null)"; then
  eval "$env_out"
  say "Removing the previous run's namespace shop and its volume"
  kubectl delete namespace shop --ignore-not-found --wait --timeout=5m >/dev/null
  kubectl delete pv shop-deliveries --ignore-not-found >/dev/null
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

# The README's quick start, taken from README.md and run as it is, in a folder holding the
# archive and the examples (TARGET_REGISTRY* come from hack/cluster.sh env: the TLS registry).
say "README.md's quick start, as it is (TARGET_REGISTRY=$TARGET_REGISTRY)"
sed -n '/<!-- quick-start: begin/,/<!-- quick-start: end/p' README.md | sed '1,2d;$d' | sed '$d' \
  >"$work/quick-start.sh"
[[ -s "$work/quick-start.sh" ]] || { echo "demo: no quick-start block in README.md" >&2; exit 1; }
ln -s "$PWD/examples" "$work/examples"
(cd "$work" && bash -euo pipefail -x quick-start.sh >&2)
run kubectl get imgi -n shop

digest="$(kubectl -n shop get imgi web-1-4 -o jsonpath='{.status.digest}')"
mkdir -p "$work/certs" && cp "$TLS_REGISTRY_CA" "$work/certs/ca.crt"
seen="$(skopeo inspect --cert-dir "$work/certs" --creds "$TLS_REGISTRY_USER:$TLS_REGISTRY_PASSWORD" \
  "docker://$TLS_REGISTRY/shop/web:1.4" | jq -r .Digest)"
say "status.digest: $digest"
say "skopeo reads:  $seen for $TLS_REGISTRY/shop/web:1.4"
[[ "$digest" == "$seen" ]] || { echo "MISMATCH" >&2; exit 1; }

# A namespace user for the console: what the page needs in shop (imports, uploads, and the
# Secrets it offers as credentials: list, and get, which the chart's admission policy asks of
# whoever names a Secret in an import), nothing of the cluster's.
say "A console user: ServiceAccount shop/uploader and its Role"
kubectl -n shop create serviceaccount uploader >/dev/null
kubectl -n shop create role uploader --verb=get,list,watch,create,patch,delete \
  --resource=imageimports.imageimport.dev >/dev/null
kubectl -n shop patch role uploader --type=json -p='[
  {"op": "add", "path": "/rules/-", "value": {"apiGroups": ["imageimport.dev"],
    "resources": ["imageimports/upload"], "verbs": ["create"]}},
  {"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["secrets"],
    "verbs": ["get", "list"]}}]' >/dev/null
kubectl -n shop create rolebinding uploader --role=uploader --serviceaccount=shop:uploader >/dev/null
token="$(kubectl -n shop create token uploader --duration=24h)"

cat >&2 <<EOF

== Done: the import ran as a real Job Pod on this node. Look around:
$(hack/cluster.sh env)
  kubectl get imgi,jobs,pods -n shop
  kubectl -n shop describe imgi web-1-4
  kubectl -n shop logs job/\$(kubectl -n shop get imgi web-1-4 -o jsonpath='{.status.jobName}')
  kubectl -n imageimport-system logs deploy/imageimport-controller
  skopeo inspect --tls-verify=false docker://\$REGISTRY/imageimport/imageimport:\${IMAGEIMPORT_IMAGE##*:}
== The web console: open $UPLOAD_URL/ (plain HTTP on this machine), paste the token below
   (ServiceAccount shop/uploader, valid 24 h), pick namespace shop and drop an archive
   (docker save / podman save, or one made with hack/oci-image.py):
$token
== Or from the command line as that user (kubectl imageimport ui, upload: README.md):
  kubectl -n shop create token uploader   # a fresh token
== Stop everything (nothing is left behind):
  hack/cluster.sh down
EOF
# The address and the token on stdout (all else goes to stderr), for scripts: eval "$(hack/demo.sh)".
printf 'export UPLOAD_URL=%s\nexport CONSOLE_TOKEN=%s\n' "$UPLOAD_URL" "$token"
