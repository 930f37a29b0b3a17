# syntax=docker/dockerfile:1
# Multi-stage build: compile in the official Rust image, run on a small Debian base as a
# non-root user. Build: `docker build -t eventgate .`
# Run:   `docker run -p 8080:8080 -e EVENTGATE_STACK_ID=... -e EVENTGATE_APP_VERSION_IDS=... eventgate`
# Every setting is an EVENTGATE_* variable (src/config.rs); EVENTGATE_CONFIG points to a TOML
# file for the rest ([[sources]]); `docker run --rm eventgate genconfig --output -` prints a
# commented one with fresh secrets. See docker-compose.yml for a full example.
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything `cargo build` reads: the workspace (root crate, protocol/, the load tool's
# manifest and source in bench/load, which the workspace lists), the bench targets declared
# in Cargo.toml, and the demo files src/server.rs embeds with include_str!. .dockerignore
# keeps target/ and node_modules out of the build context.
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY bench/load bench/load
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
# No EVENTGATE_LISTEN here: the gateway's default `listen` is already 0.0.0.0:8080, and a
# variable would silently beat the `listen` of a mounted configuration file.
EXPOSE 8080
# Another port or https: set HEALTHCHECK_URL (e.g. http://127.0.0.1:9000/healthz).
ENV HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsSk "$HEALTHCHECK_URL" || exit 1
ENTRYPOINT ["/usr/local/bin/eventgate"]
CMD ["serve"]
