#!/usr/bin/env bash
# Times the README's two set-up commands on a fresh clone, as a new user runs them:
#   1. `cargo run --release -- serve --dev` until its first line (the gateway listening),
#   2. `bash scripts/test.sh` (CI unset: a missing broker skips, as on a user's machine).
# Crates are fetched before the clock starts (the time is the build's, not the network's).
# Run it alone on the machine: it measures compilers on every core.
#
#   bash bench/fresh-clone.sh REV NAME [REPO]     # REPO defaults to this checkout
#
# Appends one line per run to bench/fresh-clone-results.txt (in this checkout). Compare
# revisions by alternating them (A B A B) in one sitting: the machine's speed drifts.
set -uo pipefail
REV=${1:?revision}; NAME=${2:?name}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
REPO=${3:-$HERE}
DIR="${TMPDIR:-/tmp}/eventgate-fresh-$NAME"
rm -rf "$DIR"
git clone -q "$REPO" "$DIR" && cd "$DIR" && git checkout -q "$REV" || exit 1
cargo fetch -q >/dev/null 2>&1
start=$(date +%s)
exec 3< <(cargo run --release -q -- serve --dev --listen 127.0.0.1:0 2>"$DIR.serve.err")
read -r first <&3
serve=$(( $(date +%s) - start ))
echo "first line after ${serve}s: $first"
pkill -f "$DIR/target/release/eventgate serve"
sleep 1
start=$(date +%s)
env -u CI bash scripts/test.sh >"$DIR.test.log" 2>&1
rc=$?
tests=$(( $(date +%s) - start ))
line="$(date -u +%FT%TZ) $NAME $(git rev-parse --short HEAD) serve ${serve}s test ${tests}s (rc $rc) total $((serve + tests))s target/ $(du -sh target | cut -f1)"
echo "$line" | tee -a "$HERE/bench/fresh-clone-results.txt"
