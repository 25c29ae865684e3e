# Static, non-root image of kamatera-ca-provider.
#
#   docker build -t REGISTRY/kamatera-ca-provider:0.1.0 .
#
# Build stage: a musl static binary (rustls + ring, no OpenSSL, no protoc needed).
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY config config
COPY src src
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin kamatera-ca-provider \
    && cp target/x86_64-unknown-linux-musl/release/kamatera-ca-provider /kamatera-ca-provider

# Run stage: distroless static (CA certificates for the HTTPS Kamatera API, user 65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /kamatera-ca-provider /kamatera-ca-provider
USER 65532:65532
EXPOSE 8086 9090
ENTRYPOINT ["/kamatera-ca-provider"]
CMD ["serve", "--cloud-config=/etc/kamatera/cloud.ini", "--listen=0.0.0.0:8086", "--metrics-listen=0.0.0.0:9090", "--state-file=/var/lib/kamatera-ca-provider/state.json"]
