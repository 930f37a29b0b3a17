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
# Tests that need a broker (Redis, for the shared-log resume tests) skip without it and append
# one line to EVENTGATE_TEST_SKIPS (with CI=true they fail instead). scripts/test.sh sets that
# file and prints the summary; run on its own, this script does both.
own_skips=""
if [ -z "${EVENTGATE_TEST_SKIPS:-}" ]; then
  own_skips="$(mktemp "${TMPDIR:-/tmp}/eventgate-web-skips.XXXXXX")"
  trap 'rm -f "$own_skips"' EXIT
  export EVENTGATE_TEST_SKIPS="$own_skips"
fi
# Four files at a time: the tests mostly wait on sockets, timers and the browser, each file
# starts its own servers on free ports, and on 2 cores this takes 18 s instead of 65 s one
# file at a time. WEB_TEST_CONCURRENCY=1 runs them one by one (to read one file's output).
status=0
node --test --test-concurrency="${WEB_TEST_CONCURRENCY:-4}" --test-reporter=spec test/*.test.mjs || status=$?
if [ -n "$own_skips" ] && [ -s "$own_skips" ]; then
  echo
  echo "web-demo: SKIPPED $(wc -l <"$own_skips") test(s) (no broker):"
  sed 's/^/  - /' "$own_skips"
fi
exit "$status"
