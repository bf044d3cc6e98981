# A static, non-root image of keypair-operator.
#   docker build -t keypair-operator:0.1.0 .
# Stage 1 builds a fully static musl binary; stage 2 is scratch plus CA certificates
# (the provider clients verify TLS against the system roots).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/keypair-operator /keypair-operator

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /keypair-operator /keypair-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/keypair-operator"]
CMD ["run"]
