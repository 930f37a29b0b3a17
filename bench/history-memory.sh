#!/usr/bin/env bash
# Issue #16's memory per retained event, per retention setting (docs/operations.md, "History
# and resume"): runs examples/history_memory.rs (one process per size and setting) for events
# of about 200, 400, 1,000 and 4,000 counted bytes and history.max_events 10,000 and 100,000.
#
#   bash bench/history-memory.sh [--sizes "200 400 1000 4000"] [--events "10000 100000"] [--repeat 3]
set -euo pipefail
SIZES="200 400 1000 4000"; EVENTS="10000 100000"; REPEAT=3
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES="$2"; shift ;;
    --events) EVENTS="$2"; shift ;;
    --repeat) REPEAT="$2"; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --example history_memory -q
EX="$ROOT/target/release/examples/history_memory"
# Counted bytes of an event with no padding: the rest of each size is padding.
BASE="$("$EX" 0 1000 | sed -E 's/.*counted ([0-9]+) B.*/\1/')"
echo "event without padding: $BASE counted bytes" >&2
for size in $SIZES; do
  pad=$(( size > BASE ? size - BASE : 0 ))
  for events in $EVENTS; do
    for r in $(seq 1 "$REPEAT"); do
      echo "target $size B, run $r: $("$EX" "$pad" "$events")"
    done
  done
done
