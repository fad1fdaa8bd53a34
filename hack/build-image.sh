#!/usr/bin/env bash
# Builds the operator image without Docker: an OCI archive with the same contents and user as the
# Dockerfile's image (distroless/cc-debian12:nonroot + the binary): the release binary, the glibc
# runtime libraries it links (from this Debian 12 machine, as distroless/cc has them), CA
# certificates, /etc/passwd and /etc/group with nonroot (65532), /tmp; no shell, no package
# manager. tests/image.rs checks that this and the Dockerfile describe the same image.
#
# Usage: hack/build-image.sh OUT.tar [REF]      (REF default: imageimport:dev)
# Env: IMAGEIMPORT_BINARY (default: target/release/imageimport, built with cargo if missing).
# Prints the manifest digest. Push it with `imageimport push OUT.tar REGISTRY/REPO:TAG`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:?usage: $0 OUT.tar [REF]}"
ref="${2:-imageimport:dev}"

bin="${IMAGEIMPORT_BINARY:-$ROOT/target/release/imageimport}"
if [[ -z "${IMAGEIMPORT_BINARY:-}" ]]; then
  echo "build-image: cargo build --release --bin imageimport" >&2
  (cd "$ROOT" && cargo build --release --locked --bin imageimport >&2)
fi
[[ -x "$bin" ]] || { echo "build-image: no binary at $bin" >&2; exit 1; }

args=(
  --out "$out" --name "$ref"
  # As the Dockerfile: ENTRYPOINT, CMD, USER; Env and WorkingDir as distroless nonroot's.
  --entrypoint '["imageimport"]' --cmd '["--help"]' --user 65532:65532
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  --workdir /home/nonroot
  --file "$bin:/usr/local/bin/imageimport:0755"
  --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:0644
  --text "/etc/passwd:0644:root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"
  --text "/etc/group:0644:root:x:0:
nobody:x:65534:
nonroot:x:65532:
"
  --text "/etc/nsswitch.conf:0644:passwd: files
group: files
hosts: files dns
"
  --dir /tmp:1777 --dir /home/nonroot:0700:65532:65532 --dir /root:0700
)
# The shared libraries the binary loads (ldd: "name => /path (addr)" and the interpreter line),
# at the paths ldd resolved them to.
while read -r lib; do
  args+=(--file "$(readlink -f "$lib"):$lib:0755")
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)

exec python3 "$ROOT/hack/oci-image.py" "${args[@]}"
