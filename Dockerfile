# resultstore image: a Rust builder stage, then a distroless runtime (no shell, non-root).
#
# No Docker engine runs on the project's machines: `scripts/check-deploy` runs this
# builder stage's WORKDIR/COPY/RUN steps as written (same order, same commands, file
# times kept as COPY keeps them, in a scratch directory standing for /), then checks what
# the runtime stage copies and starts the binary with this ENTRYPOINT and CMD. Builder
# commands use paths relative to WORKDIR so that they run the same there.

# ---- builder ----------------------------------------------------------------------
FROM docker.io/library/rust:1.95-slim-bookworm AS builder
WORKDIR /src
# Dependencies first: the manifests, the proto crate (its build script generates the
# gRPC code) and stub sources for the other crates. This layer changes only when
# Cargo.lock, a manifest or the .proto file does.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY formats/Cargo.toml formats/Cargo.toml
COPY service/Cargo.toml service/Cargo.toml
COPY client/Cargo.toml client/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
COPY scripts/stub-sources scripts/stub-sources
RUN scripts/stub-sources && cargo build --release --locked --package resultstore
# Then the sources. COPY keeps the files' own times, which can be older than the stub
# build's outputs: touching the crate roots makes cargo rebuild them.
COPY formats formats
COPY service service
COPY client client
RUN touch formats/src/lib.rs service/src/main.rs service/src/lib.rs client/src/lib.rs \
 && cargo build --release --locked --package resultstore \
 && mkdir -p empty-data

# ---- runtime ----------------------------------------------------------------------
# glibc and libgcc only (TLS is rustls with aws-lc, linked in); user 65532 "nonroot".
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/resultstore /usr/local/bin/resultstore
# The working directory, writable by the service user: with no --config the embedded
# default keeps results in ./.prefect-results here. Mount a volume on /data (the root
# filesystem is read-only in the Kubernetes manifests).
COPY --from=builder --chown=65532:65532 /src/empty-data /data
WORKDIR /data
USER 65532:65532
# gRPC (resultstore.v1 and grpc.health.v1) and Prometheus /metrics + /healthz.
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/resultstore"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9090"]
