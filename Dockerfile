# syntax=docker/dockerfile:1
# A static, non-root production image of keypair-operator, for linux/amd64 and linux/arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t keypair-operator:0.1.0 .
#   docker build -t keypair-operator:0.1.0 .          (the build machine's architecture)
# (`make image` runs the first.) Stage 1 runs on the build machine's own platform and
# cross-compiles a fully static musl binary for the target platform: no emulation. It is
# built with --no-default-features, so the sandbox provider servers (cargo feature
# `sandbox`, a developer tool) are not in the image. Stage 2 is scratch plus CA certificates
# (the provider clients verify TLS against the system roots).
FROM --platform=$BUILDPLATFORM rust:1-bookworm AS build
ARG TARGETARCH
# The Rust target and the GNU toolchain that links it and compiles ring's C and assembly.
# musl targets link musl's own static C runtime (rustc's self-contained crt objects), so a
# glibc cross gcc (with its target headers, for ring's C code) serves as linker.
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-musl;  gnu=x86_64-linux-gnu;  pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) target=aarch64-unknown-linux-musl; gnu=aarch64-linux-gnu; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    apt-get update; \
    if ! command -v "$gnu-gcc" >/dev/null; then \
      apt-get install -y --no-install-recommends $pkgs; \
    fi; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$target"; \
    env_target=$(echo "$target" | tr 'a-z-' 'A-Z_'); \
    { echo "export TARGET=$target"; \
      echo "export CARGO_TARGET_${env_target}_LINKER=$gnu-gcc"; \
      echo "export CC_$(echo "$target" | tr - _)=$gnu-gcc"; \
      echo "export AR_$(echo "$target" | tr - _)=$gnu-ar"; \
    } > /build-env; \
    cat /build-env
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN . /build-env \
 && mkdir -p src/bin && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > src/bin/kubectl-keypair.rs \
 && cargo build --release --locked --no-default-features --target "$TARGET" --bin keypair-operator \
 && rm -rf src
COPY src ./src
RUN . /build-env \
 && touch src/main.rs src/lib.rs \
 && cargo build --release --locked --no-default-features --target "$TARGET" --bin keypair-operator \
 && cp "target/$TARGET/release/keypair-operator" /keypair-operator

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /keypair-operator /keypair-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/keypair-operator"]
CMD ["run"]
