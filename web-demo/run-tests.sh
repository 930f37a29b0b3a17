#!/usr/bin/env bash
# Install what the web-demo tests need (idempotent) and run them.
# Assumes target/release/eventgate was built already (or EVENTGATE_BIN points to a binary).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  echo "web-demo: installing chromium (apt)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Another apt/dpkg run (unattended upgrades, a parallel job) may hold the lock: wait for it.
  APT_WAIT=(-o DPkg::Lock::Timeout=600)
  $SUDO apt-get "${APT_WAIT[@]}" update -q
  $SUDO apt-get "${APT_WAIT[@]}" install -y -q --no-install-recommends chromium
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "web-demo: node/npm not found" >&2
  exit 1
fi

BIN="${EVENTGATE_BIN:-../target/release/eventgate}"
if [ ! -x "$BIN" ]; then
  echo "web-demo: eventgate binary not found at $BIN (run 'cargo build --release --bin eventgate' first)" >&2
  exit 1
fi
EVENTGATE_BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
export EVENTGATE_BIN

npm ci --no-audit --no-fund --loglevel=error

mkdir -p ../test-artifacts
# One file at a time: the machine has 2 cores and the tests start real servers and a browser.
node --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs
