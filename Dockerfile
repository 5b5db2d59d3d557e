# syntax=docker/dockerfile:1
#
# tenantgate container image.
#
#   docker build -t tenantgate:0.1.0 .
#   docker run --rm -p 9090:9090 -p 9091:9091 \
#     -v "$PWD/deploy/compose/tenantgate.yaml:/etc/tenantgate/tenantgate.yaml:ro" tenantgate:0.1.0
#
# The binary links glibc dynamically (ring, rustls), so the runtime stage is distroless "cc"
# (glibc, libgcc, CA certificates, nothing else) of the same Debian release as the builder.
# deploy/check.sh checks this file in CI: COPY sources exist, the build command, the binary path
# and the non-root user.

# The toolchain CI tests with (Cargo.toml's rust-version is the minimum).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# Only what the build reads: the manifest, the lock file, the sources, and config/ (the built-in
# dev config is compiled in with include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY config/ config/
# Cache mounts keep the crates.io index and the dependency builds between image builds; the
# binary is copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/tenantgate /out/tenantgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/tenantgate /usr/local/bin/tenantgate
# distroless "nonroot": uid/gid 65532. Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 9090: the Prometheus/Mimir data port; 9091: admin (/metrics, /-/healthy, /-/ready, /-/reload).
EXPOSE 9090 9091
ENTRYPOINT ["/usr/local/bin/tenantgate"]
CMD ["--config", "/etc/tenantgate/tenantgate.yaml"]
