#!/usr/bin/env bash
# What the build, the tests and CI need, checked with a message that says what to install.
# Source it and call the checks a script needs:
#
#   source "$(dirname "$0")/prereqs.sh"
#   need_rust; need_go; need_root_for "installing Debian packages"; need_commands skopeo
#
# Run alone (`bash hack/prereqs.sh`), it checks everything `.ci/run` needs and says what is
# missing. Versions: Rust 1.89 (Cargo.toml rust-version), Go 1.26 (hack/testbin/etcd/go.mod).

PREREQ_RUST_MIN="1.89"
PREREQ_GO_MIN="1.26"

prereq_fail() {
  printf 'prerequisite missing: %s\n' "$*" >&2
  return 1
}

# version_at_least <have> <want>: dotted numbers, compared field by field.
version_at_least() {
  local have="$1" want="$2"
  [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" == "$want" ]]
}

need_rust() {
  local v
  if ! command -v cargo >/dev/null 2>&1; then
    prereq_fail "cargo (Rust >= $PREREQ_RUST_MIN): install it with rustup (https://rustup.rs), then open a new shell or add ~/.cargo/bin to PATH"
    return 1
  fi
  v="$(rustc --version 2>/dev/null | awk '{print $2}')"
  if [[ -z "$v" ]] || ! version_at_least "$v" "$PREREQ_RUST_MIN"; then
    prereq_fail "Rust >= $PREREQ_RUST_MIN (found ${v:-none}): \`rustup update stable\`"
    return 1
  fi
}

# The Go toolchain builds the test binaries (kube-apiserver, etcd, crane, helm).
need_go() {
  local go="${GO:-}" v
  if [[ -z "$go" ]]; then
    if command -v go >/dev/null 2>&1; then go="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then go=/usr/local/go/bin/go
    fi
  fi
  if [[ -z "$go" ]]; then
    prereq_fail "Go >= $PREREQ_GO_MIN, to build the test binaries: install it from https://go.dev/dl (into /usr/local/go) or set GO=/path/to/go"
    return 1
  fi
  v="$("$go" env GOVERSION 2>/dev/null)"
  v="${v#go}"
  if [[ -z "$v" ]] || ! version_at_least "$v" "$PREREQ_GO_MIN"; then
    prereq_fail "Go >= $PREREQ_GO_MIN (found ${v:-none} at $go): install a newer one from https://go.dev/dl"
    return 1
  fi
}

# need_root_for <what>: root (or passwordless sudo is not assumed) for system changes.
need_root_for() {
  if [[ "$(id -u)" != 0 ]]; then
    prereq_fail "root, for $1: run as root (e.g. in a CI container), or install these beforehand as root: $PREREQ_DEBIAN_PACKAGES"
    return 1
  fi
}

# need_commands <cmd>...: each on PATH.
need_commands() {
  local missing=() c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if ((${#missing[@]})); then
    prereq_fail "commands ${missing[*]} (Debian packages: $PREREQ_DEBIAN_PACKAGES; \`bash .ci/run\` installs them as root)"
    return 1
  fi
}

# The Debian packages the tests use (docker-registry: the CNCF distribution registry).
PREREQ_DEBIAN_PACKAGES="docker-registry skopeo apache2-utils openssl ca-certificates"

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  ok=0
  need_rust || ok=1
  need_go || ok=1
  need_commands docker-registry skopeo htpasswd openssl || {
    ok=1
    need_root_for "installing the Debian packages" || true
  }
  if ((ok == 0)); then
    echo "prerequisites: all present (Rust >= $PREREQ_RUST_MIN, Go >= $PREREQ_GO_MIN, $PREREQ_DEBIAN_PACKAGES)"
  fi
  exit "$ok"
fi
