#!/usr/bin/env bash
# Issue #16's resume storm (docs/benchmarks-history.md): a 2-node
# cluster.backend = redis_stream cluster on this machine; 10,000 storm clients on node A that
# Hello("Position":"") + 2 Subscribes + Resume, note their last position and close; 100
# events are published through node B; node A is restarted (SIGTERM, same config); all
# 10,000 reconnect at once, Hello(Position) + Subscribes + Resume, and must each get
# Replayed: 100 and the 100 events exactly once, in order. 1,000 live clients on node B get
# 200 events/s throughout; their latency is reported per phase (quiet reference, storm, after).
# See the `history` module of bench/load for what is counted.
#
#   bash bench/resume-storm.sh                     # 3 runs
#   EVENTGATE=path/to/eventgate bash bench/resume-storm.sh   # another build of the gateway
#   options: --repeat N (3)  --clients N (10000)  --live N (1000)  --live-rate R (200)
#            --events N (100)  --concurrency N (reconnects in flight, 2000)  --out DIR
#            --backend redis_stream|jetstream
set -euo pipefail

REPEAT=3; CLIENTS=10000; LIVE=1000; LIVE_RATE=200; EVENTS=100; CONC=2000; OUT=""; BACKEND=redis_stream
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="$2"; shift ;;
    --clients) CLIENTS="$2"; shift ;;
    --live) LIVE="$2"; shift ;;
    --live-rate) LIVE_RATE="$2"; shift ;;
    --events) EVENTS="$2"; shift ;;
    --concurrency) CONC="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --backend) BACKEND="$2"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TMP="$(mktemp -d /tmp/eventgate-storm.XXXXXX)"
OUT="${OUT:-$TMP}"
mkdir -p "$OUT"
RESULTS="$OUT/resume-storm.jsonl"
: > "$RESULTS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "cargo build --release -p eventgate -p eventgate-bench"
cargo build --release -p eventgate -p eventgate-bench -q
EG="${EVENTGATE:-$ROOT/target/release/eventgate}"  # EVENTGATE: another build (A/B)
BENCH="$ROOT/target/release/eventgate-bench"
ulimit -n "$(ulimit -Hn)"

STACK_ID="11111111-2222-3333-4444-555555555555"
API_KEY="$("$EG" key --stack-id "$STACK_ID")"
export EVENTGATE_LOG=warn
URL=redis://127.0.0.1:6379/
[ "$BACKEND" = jetstream ] && URL=nats://127.0.0.1:4222

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The node scripts: start (writes its pid file, waits for /readyz), stop (SIGTERM, waits).
# The restart of node A runs them from the load tool's --between-phases-cmd.
cat > "$TMP/node.sh" <<EOF
#!/usr/bin/env bash
# node.sh start|stop NAME PORT: one gateway of the storm's cluster (environment: see resume-storm.sh)
set -euo pipefail
action="\$1"; name="\$2"; port="\$3"
pidfile="$TMP/\$name.pid"
case "\$action" in
  start)
    nohup "$EG" serve --dev --listen "127.0.0.1:\$port" --stack-id "$STACK_ID" \\
      >> "$TMP/\$name.out" 2>> "$TMP/\$name.err" < /dev/null &
    echo \$! > "\$pidfile"
    for _ in \$(seq 1 600); do
      [ "\$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:\$port/readyz")" = 200 ] && exit 0
      sleep 0.05
    done
    echo "node \$name did not become ready" >&2; exit 1 ;;
  stop)
    pid="\$(cat "\$pidfile" 2>/dev/null || true)"
    [ -n "\$pid" ] || exit 0
    kill -TERM "\$pid" 2>/dev/null || exit 0
    for _ in \$(seq 1 300); do kill -0 "\$pid" 2>/dev/null || exit 0; sleep 0.05; done
    kill -KILL "\$pid" 2>/dev/null || true ;;
esac
EOF
chmod +x "$TMP/node.sh"
stop_nodes() { "$TMP/node.sh" stop a 0 || true; "$TMP/node.sh" stop b 0 || true; }
trap 'stop_nodes; log "raw results: $RESULTS"' EXIT

for r in $(seq 1 "$REPEAT"); do
  CHANNEL="eventgate.storm.$$.$r"
  export EVENTGATE_CLUSTER_BACKEND="$BACKEND" EVENTGATE_CLUSTER_URL="$URL" \
    EVENTGATE_CLUSTER_CHANNEL="$CHANNEL" EVENTGATE_CLUSTER_STREAM="EGSTORM_$$_$r"
  PORT_A="$(free_port)"; PORT_B="$(free_port)"
  "$TMP/node.sh" start a "$PORT_A"
  "$TMP/node.sh" start b "$PORT_B"
  log "run $r: node A 127.0.0.1:$PORT_A (pid $(cat "$TMP/a.pid")), node B 127.0.0.1:$PORT_B (pid $(cat "$TMP/b.pid")), $BACKEND $CHANNEL; load $(cut -d' ' -f1 /proc/loadavg)"
  RESTART="'$TMP/node.sh' stop a $PORT_A && '$TMP/node.sh' start a $PORT_A"
  if ! line="$("$BENCH" --resume-storm --json --label "storm-$BACKEND" --api-key "$API_KEY" \
      --server "127.0.0.1:$PORT_A" --server-pid "$(cat "$TMP/a.pid")" --server-pid-file "$TMP/a.pid" \
      --live-server "127.0.0.1:$PORT_B" --live-server-pid "$(cat "$TMP/b.pid")" \
      --connections "$CLIENTS" --live-connections "$LIVE" --live-rate "$LIVE_RATE" \
      --storm-events "$EVENTS" --storm-concurrency "$CONC" --concurrency 200 \
      --between-phases-cmd "$RESTART" 2> "$TMP/bench.err")"; then
    log "bench failed:"; line='{}'
  fi
  sed 's/^/    /' "$TMP/bench.err" >&2
  stop_nodes
  [ "$BACKEND" = redis_stream ] && redis-cli -h 127.0.0.1 -p 6379 DEL "$CHANNEL" "$CHANNEL:n" > /dev/null
  echo "$line" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read() or "{}"); r["run"]='"$r"'; print(json.dumps(r))' >> "$RESULTS"
  sleep 3
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def get(r, k):
    v = r
    for part in k.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v
keys = ["storm_s_to_last_replayed", "storm_complete_clients", "resume_errors", "gaps", "duplicates", "missing",
        "reconnect_failed", "reconnect_retries", "resume_ack_ms.p50", "resume_ack_ms.max", "last_replayed_ms.p50",
        "last_replayed_ms.p99", "live.quiet.p50_ms", "live.quiet.p99_ms", "live.storm.p50_ms", "live.storm.p99_ms",
        "live.storm.max_ms", "live.after.p99_ms", "live_lost", "node_a_cpu_s_storm", "node_b_cpu_s_storm",
        "node_a_rss_kib.after_restart", "node_a_rss_kib.after_storm", "between_phases_cmd_s", "distinct_positions_at_close"]
print("| metric | " + " | ".join(f"run {r.get('run')}" for r in rows) + " | median |")
print("|---|" + "---|" * (len(rows) + 1))
for k in keys:
    vals = [get(r, k) for r in rows]
    nums = [v for v in vals if isinstance(v, (int, float))]
    med = statistics.median(nums) if nums else None
    print(f"| {k} | " + " | ".join("-" if v is None else f"{v:,}" for v in vals) + f" | {'-' if med is None else f'{med:,}'} |")
PY
