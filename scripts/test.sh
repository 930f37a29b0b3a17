#!/usr/bin/env bash
# The whole test suite, on a fresh machine: Rust unit + integration tests (including the
# broker tests against the local Redis/RabbitMQ/NATS), then the browser-side tests (node's
# test runner + headless Chromium), which install their own apt/npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

cargo build --bin eventgate
cargo test --workspace
bash web-demo/run-tests.sh
