#!/usr/bin/env bash
# The whole test suite, on a fresh machine: Rust unit + integration tests (including the
# broker tests against Redis/RabbitMQ/NATS), then the browser-side tests (node's test runner
# + headless Chromium, npm package checks), which install their own apt/npm packages.
#
# The Rust tests build with --release, so they reuse what `cargo run --release` (the README's
# first command) compiled instead of compiling the dependency tree a second time.
#
# Brokers: EVENTGATE_TEST_REDIS, EVENTGATE_TEST_RABBITMQ, EVENTGATE_TEST_NATS (host:port,
# default 127.0.0.1:6379 / :5672 / :4222). A broker that does not answer skips its tests, and
# the summary at the end lists every skipped test; with CI=true a missing broker fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

in_ci() { [ "${CI:-}" = true ] || [ "${CI:-}" = TRUE ] || [ "${CI:-}" = True ]; }

# Broker reachability, checked before the long part.
declare -A BROKERS=(
  [redis]="${EVENTGATE_TEST_REDIS:-127.0.0.1:6379}"
  [rabbitmq]="${EVENTGATE_TEST_RABBITMQ:-127.0.0.1:5672}"
  [nats]="${EVENTGATE_TEST_NATS:-127.0.0.1:4222}"
)
missing=()
for kind in redis rabbitmq nats; do
  addr="${BROKERS[$kind]}"
  if ! timeout 3 bash -c "exec 3<>/dev/tcp/${addr%:*}/${addr##*:}" 2>/dev/null; then
    missing+=("$kind at $addr")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if in_ci; then
    printf 'test.sh: broker not reachable: %s\n' "${missing[@]}" >&2
    echo "test.sh: brokers are mandatory in CI (CI=true); failing" >&2
    exit 1
  fi
  printf 'test.sh: broker not reachable: %s (its tests will be SKIPPED)\n' "${missing[@]}" >&2
fi

SKIPS="$(mktemp "${TMPDIR:-/tmp}/eventgate-skips.XXXXXX")"
trap 'rm -f "$SKIPS"' EXIT
export EVENTGATE_TEST_SKIPS="$SKIPS"

# Eight tests at a time in each test binary: they wait on sockets and timers far more than
# they compute, and every server listens on its own free port (the integration tests: 15 s
# instead of 52 s with the default of one per core on 2 cores). Tests that must not overlap
# hold a lock of their file's own. RUST_TEST_THREADS overrides it.
cargo test --release --workspace -- --test-threads "${RUST_TEST_THREADS:-8}"
EVENTGATE_BIN="$PWD/target/release/eventgate" bash web-demo/run-tests.sh

echo
if [ -s "$SKIPS" ]; then
  count=$(wc -l <"$SKIPS")
  echo "================================================================================"
  echo "SKIPPED: $count broker test(s) did not run (reported as passed by cargo test):"
  sed 's/^/  - /' "$SKIPS"
  echo "Start the brokers (README, docker-compose.yml) or point EVENTGATE_TEST_REDIS /"
  echo "EVENTGATE_TEST_RABBITMQ / EVENTGATE_TEST_NATS at them, then run this again."
  echo "================================================================================"
else
  echo "test.sh: all tests ran, none skipped"
fi
