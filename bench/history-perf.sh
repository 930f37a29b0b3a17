#!/usr/bin/env bash
# Profiles one gateway at the max1k workload (1k connections / 10 groups / maximum rate) with
# history on or off: `bash bench/history-perf.sh true|false`. Prints the top symbols of
# `perf record -F 499 -g` over 8 s of the run (docs/benchmarks-history.md).
# For the resume storm, point `perf record -g -p <node A's pid>` at node A after its restart
# (its pid file is in the storm's temp dir).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release -p eventgate -p eventgate-bench -q
EG=target/release/eventgate; BENCH=target/release/eventgate-bench
STACK_ID="11111111-2222-3333-4444-555555555555"; KEY="$($EG key --stack-id $STACK_ID)"
ulimit -n "$(ulimit -Hn)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
EVENTGATE_LOG=warn EVENTGATE_HISTORY_ENABLED=$1 $EG serve --dev --listen 127.0.0.1:$PORT --stack-id $STACK_ID > /dev/null 2>&1 &
PID=$!
sleep 1
$BENCH --server 127.0.0.1:$PORT --server-pid $PID --api-key "$KEY" --connections 1000 --groups 10 --rate 0 --duration 12 2>&1 | grep -E 'notifications|cpu' &
B=$!
sleep 4
perf record -F 499 -g -p $PID -o /tmp/eventgate-perf-history-$1.data -- sleep 8 2>/dev/null >/dev/null
wait $B
kill -TERM $PID; wait $PID || true
perf report -i /tmp/eventgate-perf-history-$1.data --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
