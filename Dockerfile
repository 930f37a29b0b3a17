# syntax=docker/dockerfile:1
# Multi-stage build: compile in the official Rust image, run on a small Debian base as a
# non-root user. Build: `docker build -t eventgate .`
# Run:   `docker run -p 8080:8080 -e EVENTGATE_STACK_ID=... -e EVENTGATE_APP_VERSION_IDS=... eventgate`
# Every setting is an EVENTGATE_* variable (src/config.rs); EVENTGATE_CONFIG points to a TOML
# file for the rest ([[sources]]). See docker-compose.yml for a full example.
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything `cargo build` reads: the workspace (root crate + protocol/), the bench target
# declared in Cargo.toml, and the demo files src/server.rs embeds with include_str!.
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY src src
COPY benches benches
COPY web-demo/index.html web-demo/eventgate-client.js web-demo/eventgate-client.d.ts web-demo/demo.js web-demo/demo.css web-demo/
# Cache mounts keep the registry and incremental artifacts between builds; the binary is
# copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin eventgate \
 && cp target/release/eventgate /usr/local/bin/eventgate \
 && strip /usr/local/bin/eventgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home eventgate
COPY --from=build /usr/local/bin/eventgate /usr/local/bin/eventgate
USER 10001
ENV EVENTGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Probes the port EVENTGATE_LISTEN ends with, so overriding it does not break the check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${EVENTGATE_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["/usr/local/bin/eventgate"]
CMD ["serve"]
