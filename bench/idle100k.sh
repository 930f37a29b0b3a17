#!/usr/bin/env bash
# 100,000 idle WebSocket connections held on this machine, announced with 2 rules each.
#
#   bash bench/idle100k.sh [TOTAL] [NODES]      # defaults: 100000 connections over 6 nodes
#
# Where the hard open-file limit is below TOTAL (containers without CAP_SYS_RESOURCE are
# capped at `ulimit -Hn`, 20,000 here), one process cannot hold them all: the connections
# are spread over NODES eventgate processes (each with its own port, as a cluster of nodes on
# one machine would run) and NODES load-tool processes. Prints each node's RSS per connection
# and the total. Traffic stays on 127.0.0.0/8; everything stops by itself.
set -euo pipefail

TOTAL="${1:-100000}"
NODES="${2:-6}"
PER_NODE=$(( (TOTAL + NODES - 1) / NODES ))
HOLD=25
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -le $(( PER_NODE + 200 )) ]; then
  echo "idle100k: open-file limit $(ulimit -n) is too low for $PER_NODE connections per node; use more nodes" >&2
  exit 64
fi
# The profiling profile: release code with symbols, so perf can be pointed at the server.
cargo build --profile profiling -p eventgate -p eventgate-bench -q
EG="$ROOT/target/profiling/eventgate"
BENCH="$ROOT/target/profiling/eventgate-bench"
STACK_ID=11111111-2222-3333-4444-555555555555
KEY="$("$EG" key --stack-id "$STACK_ID")"
TMP="$(mktemp -d /tmp/eventgate-idle.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PORTS=()
for node in $(seq 1 "$NODES"); do
  port="$(free_port)"
  EVENTGATE_LOG=warn EVENTGATE_MAX_CONNECTIONS=200000 "$EG" serve --dev --listen "127.0.0.1:$port" \
    --stack-id "$STACK_ID" > "$TMP/node$node.log" 2>&1 &
  PIDS+=("$!")
  PORTS+=("$port")
done
sleep 1
TOOLS=()
for node in $(seq 1 "$NODES"); do
  index=$(( node - 1 ))
  "$BENCH" --server "127.0.0.1:${PORTS[$index]}" --api-key "$KEY" --connections "$PER_NODE" \
    --idle --hold "$HOLD" --server-pid "${PIDS[$index]}" > "$TMP/tool$node.log" 2>&1 &
  TOOLS+=("$!")
done
# While every tool holds its connections: the servers' resident memory, all together.
sleep $(( HOLD - 5 ))
total_kib=0
for pid in "${PIDS[@]}"; do
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  total_kib=$(( total_kib + rss ))
done
failed=0
for tool in "${TOOLS[@]}"; do wait "$tool" || failed=1; done
held=0
for node in $(seq 1 "$NODES"); do
  line="$(grep -m1 '^connections:' "$TMP/tool$node.log" || true)"
  rss="$(grep -m1 '^server rss:' "$TMP/tool$node.log" || true)"
  echo "node $node: $line | $rss"
  n="$(echo "$line" | sed -n 's/^connections: \([0-9]*\) set up.*/\1/p')"
  f="$(echo "$line" | sed -n 's/.*, \([0-9]*\) failed.*/\1/p')"
  held=$(( held + ${n:-0} - ${f:-0} ))
done
per_connection="$(awk -v t="$total_kib" -v h="$held" 'BEGIN { printf "%.2f", t / h }')"
echo "held: $held idle connections on $NODES eventgate processes; servers' RSS together: $(( total_kib / 1024 )) MiB = $per_connection KiB per connection (including each process's baseline)"
printf '{"date":"%s","held":%d,"nodes":%d,"total_rss_kib":%d,"kib_per_connection":%s}\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$held" "$NODES" "$total_kib" "$per_connection" > "$ROOT/docs/idle100k-summary.json"
[ "$failed" = 0 ] && [ "$held" -ge "$TOTAL" ]
