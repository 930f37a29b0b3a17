# Multi-stage build: compile in the official Rust image, run on a small Debian base as a
# non-root user. Build: `docker build -t eventgate .`
# Run:   `docker run -p 8080:8080 -e EVENTGATE_STACK_ID=... -e EVENTGATE_APP_VERSION_IDS=... eventgate`
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY protocol protocol
COPY src src
COPY benches benches
COPY web-demo/index.html web-demo/eventgate-client.js web-demo/eventgate-client.d.ts web-demo/demo.js web-demo/demo.css web-demo/
RUN cargo build --release --locked --bin eventgate \
 && strip target/release/eventgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home eventgate
COPY --from=build /src/target/release/eventgate /usr/local/bin/eventgate
USER 10001
ENV EVENTGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/eventgate"]
CMD ["serve"]
