# syntax=docker/dockerfile:1
#
# imageimport: controller, worker and CLI in one image (ENTRYPOINT imageimport; the chart runs
# `imageimport controller …`, worker Jobs run `imageimport worker`).
#
#   docker build -t imageimport:dev .
#
# The binary is built against glibc (the pipeline compresses layers on every core; glibc's
# allocator scales there where musl's does not) and runs on distroless/cc: glibc, libgcc and CA
# certificates, no shell, no package manager, user nonroot (65532).

ARG RUST_VERSION=1

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# cmake: fallback build of aws-lc-sys (TLS) on targets without its pregenerated bindings.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads (see .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# BuildKit cache mounts keep the registry and target dir between builds; the binary is copied out
# of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin imageimport \
 && install -D -m 0755 target/release/imageimport /out/imageimport

# Same Debian release as the builder: the binary's glibc requirement is met.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/imageimport /usr/local/bin/imageimport
USER 65532:65532
ENTRYPOINT ["imageimport"]
CMD ["--help"]
