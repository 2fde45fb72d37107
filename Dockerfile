# syntax=docker/dockerfile:1
# The coordinator's image: the `coordinator` binary alone, on a distroless base (no shell, no
# package manager), run as a non-root user; k8s/ runs it with a read-only root filesystem and
# the journal on a volume.
#
#   docker build -t payment-coordinator:0.1.0 .
#
# Not built by CI: the CI machine has no container engine (docs/OPERATIONS.md, "Image").

FROM rust:1.95-bookworm AS build
# aws-lc-sys (rustls' crypto provider, for TLS_*) compiles C; cmake is its fallback build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p coordinator --bin coordinator \
 && install -D -m 0755 target/release/coordinator /out/coordinator \
 && mkdir -p /out/journal

# glibc and libgcc only (the binary links nothing else: rustls, no OpenSSL); Debian 12 like the
# build stage, so the glibc the binary was linked against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/coordinator /usr/local/bin/coordinator
# Owned by the runtime user, for a container run without a volume (docker run); k8s/ mounts a
# volume claim here (fsGroup makes it writable).
COPY --from=build --chown=65532:65532 /out/journal /var/lib/coordinator/journal
ENV COORDINATOR_LISTEN=0.0.0.0:50051 \
    METRICS_LISTEN=0.0.0.0:9464 \
    JOURNAL_DIR=/var/lib/coordinator/journal
# 65532: distroless's "nonroot"; numeric, so that runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/coordinator"]
