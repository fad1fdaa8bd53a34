#!/usr/bin/env bash
# Builds the bench's Go peers from their Go modules (through the Go module proxy; `go install
# module/cmd/x@version` checks them against the checksum database) into a cache outside the
# checkout, keyed by version: crane (go-containerregistry) and regctl (regclient).
#
# Usage: bench/build-peers.sh            prints the directory holding `crane` and `regctl`
# Cache: ${BENCH_PEERS_DIR:-$HOME/.cache/imageimport/bench-peers}/<name>-<version>
set -euo pipefail
CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
REGCTL_VERSION="${REGCTL_VERSION:-v0.11.7}"
DIR="${BENCH_PEERS_DIR:-$HOME/.cache/imageimport/bench-peers}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x $GO ]] || { echo "build-peers: no Go toolchain (set GO=)" >&2; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-buildvcs=false"
mkdir -p "$DIR"

build() { # <name> <version> <package@version>
    local name=$1 version=$2 pkg=$3 target="$DIR/$1-$2"
    if [[ ! -x $target ]]; then
        echo "build-peers: $name $version: building" >&2
        local tmp
        tmp=$(mktemp -d "$DIR/.build-$name.XXXXXX")
        GOBIN="$tmp" "$GO" install -trimpath -ldflags "-s -w" "$pkg" >&2
        mv -f "$tmp/$name" "$target"
        rm -rf "$tmp"
    fi
    ln -sfn "$name-$version" "$DIR/$name"
}
build crane "$CRANE_VERSION" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
build regctl "$REGCTL_VERSION" "github.com/regclient/regclient/cmd/regctl@$REGCTL_VERSION"
echo "$DIR"
