#!/usr/bin/env bash
# Issue #16's hot-path and backplane numbers (docs/benchmarks-history.md).
# Same load tool and workloads as bench/compare.sh; runs alternate A B A B ...; prints every
# run, the medians and the ratio A/B. EVENTGATE_LOG=warn everywhere.
#
#   bash bench/history.sh hot       # one node: history on (default) vs EVENTGATE_HISTORY_ENABLED=false
#   bash bench/history.sh cluster   # two nodes, subscribers on B, publisher posting to A:
#                                   # cluster.backend redis_stream vs redis (pub/sub)
#   bash bench/history.sh cluster --pair jetstream,nats
#   options: --repeat N (3)  --duration S (10)  --only rate1000,max1k  --out DIR
#
# Workloads: rate1000 = 10k connections / 100 groups / 1,000 events/s; max1k = 1k connections
# / 10 groups / maximum rate (closed loop, 10,000 notifications outstanding at most).
# Needs Redis on 127.0.0.1:6379 and NATS (JetStream) on 127.0.0.1:4222 for `cluster`.
set -euo pipefail

MODE="${1:-}"; shift || true
REPEAT=3; DUR=10; ONLY=""; OUT=""; PAIR="redis_stream,redis"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="$2"; shift ;;
    --duration) DUR="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --pair) PAIR="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done
case "$MODE" in hot|cluster) ;; *) sed -n '2,14p' "$0" >&2; exit 64 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TMP="$(mktemp -d /tmp/eventgate-history.XXXXXX)"
OUT="${OUT:-$TMP}"
mkdir -p "$OUT"
RESULTS="$OUT/history-$MODE.jsonl"
: > "$RESULTS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "cargo build --release -p eventgate -p eventgate-bench"
cargo build --release -p eventgate -p eventgate-bench -q
EG="$ROOT/target/release/eventgate"
BENCH="$ROOT/target/release/eventgate-bench"
ulimit -n "$(ulimit -Hn)"

STACK_ID="11111111-2222-3333-4444-555555555555"
API_KEY="$("$EG" key --stack-id "$STACK_ID")"
export EVENTGATE_LOG=warn

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_ready() { # url
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  echo "server at $1 did not become ready" >&2
  return 1
}
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; log "raw results: $RESULTS"' EXIT

# start_node NAME [ENV=VALUE ...]: starts a gateway on a free port; sets PORT and PID.
start_node() {
  local name="$1"; shift
  PORT="$(free_port)"
  env "$@" "$EG" serve --dev --listen "127.0.0.1:$PORT" --stack-id "$STACK_ID" \
    > "$TMP/$name.out" 2> "$TMP/$name.err" &
  PID=$!
  PIDS+=("$PID")
  wait_ready "http://127.0.0.1:$PORT/readyz"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

delete_log() { # backend channel stream
  case "$1" in
    redis_stream) redis-cli -h 127.0.0.1 -p 6379 DEL "$2" "$2:n" > /dev/null ;;
    jetstream) python3 - "$3" <<'PY' || true
import socket, sys
s = socket.create_connection(("127.0.0.1", 4222)); s.recv(4096)
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.del 1\r\n')
s.sendall(f"PUB $JS.API.STREAM.DELETE.{sys.argv[1]} _INBOX.del 0\r\n\r\nPING\r\n".encode())
s.settimeout(3)
buf = b""
while b"MSG" not in buf:
    chunk = s.recv(4096)
    if not chunk: break
    buf += chunk
PY
    ;;
  esac
}

W_rate1000=(--connections 10000 --groups 100 --rate 1000 --duration "$DUR")
W_max1k=(--connections 1000 --groups 10 --rate 0 --duration "$DUR")
WORKLOADS=(rate1000 max1k)

# run WORKLOAD CONFIG RUN
run() {
  local workload="$1" config="$2" run="$3"
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$workload,"* ]]; then return 0; fi
  local -n wl="W_$workload"
  local server publish="" server_pid other_pid="" channel stream
  if [ "$MODE" = hot ]; then
    if [ "$config" = nohistory ]; then start_node one EVENTGATE_HISTORY_ENABLED=false
    else start_node one EVENTGATE_HISTORY_ENABLED=true; fi
    server="127.0.0.1:$PORT"; server_pid="$PID"
  else
    local url=redis://127.0.0.1:6379/
    [[ "$config" == nats || "$config" == jetstream ]] && url=nats://127.0.0.1:4222
    channel="eventgate.bench.$$.$workload.$config.$run"
    stream="EGBENCH_$$_${workload}_${config}_$run"
    local cluster=(EVENTGATE_CLUSTER_BACKEND="$config" EVENTGATE_CLUSTER_URL="$url"
      EVENTGATE_CLUSTER_CHANNEL="$channel" EVENTGATE_CLUSTER_STREAM="$stream")
    start_node a "${cluster[@]}"; publish="127.0.0.1:$PORT"; other_pid="$PID"
    start_node b "${cluster[@]}"; server="127.0.0.1:$PORT"; server_pid="$PID"
  fi
  sleep 0.5
  local a_before=0 a_after=0 line
  [ -n "$other_pid" ] && a_before="$(cpu_ticks "$other_pid")"
  log "$workload / $config / run $run (load $(cut -d' ' -f1 /proc/loadavg))"
  local extra=()
  [ -n "$publish" ] && extra=(--publish-server "$publish")
  if ! line="$("$BENCH" --server "$server" --server-pid "$server_pid" --api-key "$API_KEY" \
      --json --label "$workload" "${extra[@]}" "${wl[@]}" 2> "$TMP/bench.err")"; then
    log "bench failed:"; cat "$TMP/bench.err" >&2; line='{}'
  fi
  sed 's/^/    /' "$TMP/bench.err" >&2
  [ -n "$other_pid" ] && a_after="$(cpu_ticks "$other_pid")"
  stop_all
  [ "$MODE" = cluster ] && delete_log "$config" "$channel" "$stream"
  python3 - "$workload" "$config" "$run" "$line" "$a_before" "$a_after" >> "$RESULTS" <<'PY'
import json, sys
workload, config, run, line, a0, a1 = sys.argv[1:]
r = json.loads(line or "{}")
r.update(workload=workload, config=config, run=int(run))
if int(a1) > 0:
    r["node_a_cpu_s"] = (int(a1) - int(a0)) / 100
print(json.dumps(r))
PY
  sleep 2
}

if [ "$MODE" = hot ]; then CONFIGS=(history nohistory); else IFS=, read -r -a CONFIGS <<< "$PAIR"; fi
for r in $(seq 1 "$REPEAT"); do
  for w in "${WORKLOADS[@]}"; do
    for c in "${CONFIGS[@]}"; do run "$w" "$c" "$r"; done
  done
done

python3 - "$RESULTS" "${CONFIGS[0]}" "${CONFIGS[1]}" <<'PY'
import json, statistics, sys
path, a, b = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def get(r, k):
    v = r
    for part in k.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v
metrics = [("notifications_per_s", "delivered/s"), ("latency_ms.p50", "p50 ms"),
           ("latency_ms.p99", "p99 ms"), ("server_cpu_s", "server (B) cpu s"), ("node_a_cpu_s", "node A cpu s"),
           ("lost", "lost"), ("refused_events", "refused events")]
for w in dict.fromkeys(r["workload"] for r in rows):
    print(f"\n### {w}: {a} vs {b}\n")
    print(f"| metric | {a} runs | {a} median | {b} runs | {b} median | {a}/{b} |")
    print("|---|---|---|---|---|---|")
    for key, name in metrics:
        cols = []
        meds = []
        for c in (a, b):
            vals = [get(r, key) for r in rows if r["workload"] == w and r["config"] == c]
            vals = [v for v in vals if v is not None]
            med = statistics.median(vals) if vals else None
            meds.append(med)
            cols += [", ".join(f"{v:,.6g}" for v in vals), "-" if med is None else f"{med:,.6g}"]
        ratio = f"{meds[0]/meds[1]:.2f}x" if meds[0] is not None and meds[1] else ""
        if key in ("lost", "refused_events"):
            ratio = ""
        print(f"| {name} | " + " | ".join(cols) + f" | {ratio} |")
PY
