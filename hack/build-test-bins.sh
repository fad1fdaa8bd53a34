#!/usr/bin/env bash
# Builds the Go binaries the tests need (kube-apiserver, etcd, crane, helm, and the node
# components kubelet, kube-controller-manager, kube-scheduler and kubectl of hack/cluster.sh) from Go modules
# through the Go module proxy, and caches them outside the checkout, keyed by version.
#
# Usage: hack/build-test-bins.sh [crane] [helm] [etcd] [kube-apiserver] [kube-node] [kstatus]   (default: all)
#
# Cache: ${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}, holding <name>-<version>
# binaries plus stable symlinks <name> -> <name>-<version>. A binary that already exists for its
# version is not rebuilt; bumping a version (in the wrapper's go.mod, or below) rebuilds it.
# GOMODCACHE/GOCACHE are Go's defaults, so later cold builds reuse downloaded modules and objects.
#
# kube-apiserver and etcd are built from wrapper modules under hack/testbin/ with committed go.mod
# and go.sum (-mod=readonly): see hack/testbin/gen-kube-replaces.sh for why a wrapper is needed.
# crane and helm are built with `go install module/cmd/x@version`, which uses those modules' own
# go.mod/go.sum (checked against the checksum database), so they are reproducible as well.
set -euo pipefail

CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}" # its k8s.io/client-go is v0.34.x, matching kube-apiserver 1.34

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTBIN_SRC="$ROOT/hack/testbin"
TESTBIN_DIR="${IMAGEIMPORT_TESTBIN_DIR:-$HOME/.cache/imageimport/testbin}"

if [[ -z "${GO:-}" ]]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  else echo "build-test-bins: no Go toolchain found (set GO=/path/to/go)" >&2; exit 1
  fi
fi

source "$ROOT/hack/prereqs.sh"
need_go || exit 1

export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" # never download another toolchain
export GOFLAGS="-buildvcs=false"           # ignore any ambient GOFLAGS (e.g. -mod=mod)

log() { printf 'build-test-bins: %s\n' "$*" >&2; }

# Version of a module required by a wrapper go.mod (first match, require or replace target).
modver() { # <go.mod> <module path>
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1"
}

# Version of a module required by another module's go.mod, as the proxy serves it.
dep_version() { # <module@version> <dependency path>
  local gomod
  gomod="$("$GO" mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
  modver "$gomod" "$2"
}

# install <name> <version> <build command...>: the build command must write the binary to "$OUT".
install_bin() {
  local name="$1" version="$2"; shift 2
  local target="$TESTBIN_DIR/$name-$version"
  if [[ -x "$target" ]]; then
    log "$name $version: cached ($target)"
  else
    log "$name $version: building..."
    local start=$SECONDS tmp
    tmp="$(mktemp -d "$TESTBIN_DIR/.build-$name.XXXXXX")"
    OUT="$tmp/$name"
    if ! "$@"; then
      rm -rf "$tmp"; log "$name $version: build FAILED"; return 1
    fi
    mv -f "$OUT" "$target"
    rm -rf "$tmp"
    log "$name $version: built in $((SECONDS - start))s"
  fi
  ln -sfn "$name-$version" "$TESTBIN_DIR/$name"
}

build_wrapper() { # <wrapper dir> <ldflags>
  (cd "$1" && "$GO" build -mod=readonly -trimpath -ldflags "$2" -o "$OUT" .)
}

go_install() { # <package@version> <ldflags>
  local gobin; gobin="$(dirname "$OUT")"
  GOBIN="$gobin" "$GO" install -trimpath -ldflags "$2" "$1"
}

# Sets KUBE_VERSION and KUBE_LDFLAGS (version stamps) from the Kubernetes wrapper module.
kube_wrapper_version() {
  local v
  v="$(modver "$TESTBIN_SRC/kube-apiserver/go.mod" k8s.io/kubernetes)"
  [[ "$v" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || { log "unexpected k8s.io/kubernetes version '$v'"; return 1; }
  local minor="${BASH_REMATCH[1]}" ld="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean"
  done
  KUBE_VERSION="$v" KUBE_LDFLAGS="$ld"
}

build_kube_apiserver() {
  kube_wrapper_version
  install_bin kube-apiserver "$KUBE_VERSION" build_wrapper "$TESTBIN_SRC/kube-apiserver" "$KUBE_LDFLAGS"
}

build_etcd() {
  local dir="$TESTBIN_SRC/etcd" v
  v="$(modver "$dir/go.mod" go.etcd.io/etcd/server/v3)"
  [[ -n "$v" ]] || { log "no go.etcd.io/etcd/server/v3 in $dir/go.mod"; return 1; }
  install_bin etcd "$v" build_wrapper "$dir" "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$v"
}

build_crane() {
  install_bin crane "$CRANE_VERSION" go_install \
    "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" \
    "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION"
}

build_helm() {
  # Default .Capabilities.KubeVersion and lint deprecation checks follow helm's own client-go
  # version, as helm's Makefile does (client-go v0.34.x -> Kubernetes 1.34).
  local cg major minor ld p
  cg="$(dep_version "helm.sh/helm/v3@$HELM_VERSION" k8s.io/client-go)"
  [[ "$cg" =~ ^v([0-9]+)\.([0-9]+)\. ]] || { log "cannot read helm's client-go version ('$cg')"; return 1; }
  major=$((BASH_REMATCH[1] + 1)); minor="${BASH_REMATCH[2]}"
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
  done
  install_bin helm "$HELM_VERSION" go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$ld"
}

# kstatus: reads an object's status the way sigs.k8s.io/cli-utils' kstatus does (Flux, kpt),
# for tests/operator.rs (kstatus_reads_in_progress_current_and_failed). A wrapper module (hack/testbin/kstatus) with committed go.sum.
build_kstatus() {
  local dir="$TESTBIN_SRC/kstatus" v
  v="$(modver "$dir/go.mod" sigs.k8s.io/cli-utils)"
  [[ -n "$v" ]] || { log "no sigs.k8s.io/cli-utils in $dir/go.mod"; return 1; }
  install_bin kstatus "$v" build_wrapper "$dir" "-s -w"
}

# The node components of hack/cluster.sh (and kubectl, for machines without one): `tool` lines
# of the kube-apiserver wrapper module (same module graph, version and GOCACHE), built in one
# `go build` so shared packages compile once.
KUBE_NODE_BINS=(kubelet kube-controller-manager kube-scheduler kubectl)

build_kube_node() {
  kube_wrapper_version
  local name missing=() start=$SECONDS tmp pkgs=()
  for name in "${KUBE_NODE_BINS[@]}"; do
    if [[ -x "$TESTBIN_DIR/$name-$KUBE_VERSION" ]]; then log "$name $KUBE_VERSION: cached"
    else missing+=("$name"); pkgs+=("k8s.io/kubernetes/cmd/$name"); fi
  done
  if ((${#missing[@]})); then
    log "${missing[*]} $KUBE_VERSION: building..."
    tmp="$(mktemp -d "$TESTBIN_DIR/.build-kube-node.XXXXXX")"
    if ! (cd "$TESTBIN_SRC/kube-apiserver" &&
          "$GO" build -mod=readonly -trimpath -ldflags "$KUBE_LDFLAGS" -o "$tmp/" "${pkgs[@]}"); then
      rm -rf "$tmp"; log "${missing[*]} $KUBE_VERSION: build FAILED"; return 1
    fi
    for name in "${missing[@]}"; do mv -f "$tmp/$name" "$TESTBIN_DIR/$name-$KUBE_VERSION"; done
    rm -rf "$tmp"
    log "${missing[*]} $KUBE_VERSION: built in $((SECONDS - start))s"
  fi
  for name in "${KUBE_NODE_BINS[@]}"; do ln -sfn "$name-$KUBE_VERSION" "$TESTBIN_DIR/$name"; done
}

main() {
  local all=(crane helm etcd kube-apiserver kube-node kstatus) want=("$@") name
  (( ${#want[@]} )) || want=("${all[@]}")
  for name in "${want[@]}"; do
    case "$name" in
      crane|helm|etcd|kube-apiserver|kube-node|kstatus) ;;
      *) echo "usage: $0 [crane] [helm] [etcd] [kube-apiserver] [kube-node] [kstatus]" >&2; exit 2 ;;
    esac
  done

  mkdir -p "$TESTBIN_DIR"
  # One build at a time per cache dir (a second run waits, then finds the binaries cached).
  exec 9>"$TESTBIN_DIR/.lock"
  flock 9

  log "using $("$GO" version)"
  for name in "${want[@]}"; do
    "build_${name//-/_}"
  done
  echo "$TESTBIN_DIR"
}

main "$@"
