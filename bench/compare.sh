#!/usr/bin/env bash
# Side-by-side benchmark: eventgate vs Nchan (nginx), same load tool, same workloads,
# alternating runs (eventgate, nchan, eventgate, nchan, ...). Everything stays on 127.0.0.0/8.
#
# Like for like: both servers get one event per POST, the same POSTs in flight over the same
# keep-alive connection pool (IN_FLIGHT), the same detail bytes (PADDING); the publisher's
# achieved rate and lag are reported for both. docs/benchmarks.md says how each is loaded.
#   IN_FLIGHT=32 PADDING=0 NCHAN_WORKERS=1 bash bench/compare.sh   (the defaults)
#
#   bash bench/compare.sh            # full run (about 10 minutes), writes docs/benchmarks.md + PNG
#   bash bench/compare.sh --quick    # small smoke run, writes into the temp dir only
#   bash bench/compare.sh --out DIR  # where the raw results go (default: a temp dir)
#   bash bench/compare.sh --only rate2000,storm-upgrade --repeat 6
#                                    # just these workloads, N alternating runs each; results and
#                                    # report go to the temp dir (or --out), never to docs/
#   EVENTGATE_B=path/to/other/eventgate bash bench/compare.sh --only rate1000 --servers eventgate,eventgate-b
#                                    # A/B: a second eventgate build, alternating with the first
#                                    # (summary: python3 bench/summary.py DIR/benchmarks-results.jsonl:
#                                    #  medians, then each server against the first, run by run)
#
# Needs root for apt-get (nginx, libnginx-mod-nchan, gnuplot-nox) and for raising the open
# file limit to 100k+ sockets.
set -euo pipefail

QUICK=0
OUT=""
ONLY=""
REPEAT_ARG=""
SERVERS="eventgate nchan"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --repeat) REPEAT_ARG="$2"; shift ;;
    --servers) SERVERS="${2//,/ }"; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TMP="$(mktemp -d /tmp/eventgate-compare.XXXXXX)"
if [ "$QUICK" = 1 ] || [ -n "$ONLY" ]; then OUT="${OUT:-$TMP/results}"; else OUT="${OUT:-$ROOT/docs}"; fi
mkdir -p "$OUT"
RESULTS="$OUT/benchmarks-results.jsonl"
: > "$RESULTS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- packages (idempotent) -------------------------------------------------------------
PKGS="nginx libnginx-mod-nchan gnuplot-nox"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  log "installing $PKGS"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PKGS >/dev/null
fi
NCHAN_SO="$(dpkg -L libnginx-mod-nchan | grep -m1 'ngx_nchan_module.so$')"

# --- build ------------------------------------------------------------------------------
log "cargo build --profile profiling -p eventgate -p eventgate-bench"
# The profiling profile: release code with symbols, so perf can be pointed at the server.
cargo build --profile profiling -p eventgate -p eventgate-bench -q
EG="${EVENTGATE_A:-$ROOT/target/profiling/eventgate}"  # EVENTGATE_A: another build as "eventgate"
BENCH="$ROOT/target/profiling/eventgate-bench"

# Servers and the tool need far more than the default 1024/20000 open files.
NR_OPEN="$(cat /proc/sys/fs/nr_open)"
ulimit -Hn "$NR_OPEN" 2>/dev/null || true
ulimit -n "$NR_OPEN" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE="$(ulimit -n)"
log "open file limit: $NOFILE (hard $(ulimit -Hn))"
# One eventgate process (and the one load-tool process) can hold at most NOFILE sockets:
# without CAP_SYS_RESOURCE (containers) the hard limit cannot be raised, so the idle
# workload uses the largest count that fits.
IDLE_MAX=$(( NOFILE - 1000 ))
[ "$IDLE_MAX" -gt 100000 ] && IDLE_MAX=100000

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # url
  for _ in $(seq 1 100); do
    if curl -fs -o /dev/null "$1" 2>/dev/null || [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != "000" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "server at $1 did not come up" >&2
  return 1
}

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap 'stop_server; log "raw results: $OUT"' EXIT

# --- eventgate --------------------------------------------------------------------------
STACK_ID="11111111-2222-3333-4444-555555555555"
API_KEY="$("$EG" key --stack-id "$STACK_ID")"
start_eventgate() { # [binary]
  PORT="$(free_port)"
  EVENTGATE_LOG=warn "${1:-$EG}" serve --dev --listen "127.0.0.1:$PORT" --stack-id "$STACK_ID" \
    > "$TMP/eventgate.out" 2> "$TMP/eventgate.err" &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$PORT/healthz"
}

# --- nchan ------------------------------------------------------------------------------
# Publishing, the same for both servers.
IN_FLIGHT="${IN_FLIGHT:-32}"
PADDING="${PADDING:-0}"
# Nchan's workers: with one, every subscriber and the publisher share a process; with more,
# Nchan passes each message between workers through shared memory and IPC.
NCHAN_WORKERS="${NCHAN_WORKERS:-1}"
start_nchan() {
  PORT="$(free_port)"
  mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
  cat > "$TMP/nginx/nginx.conf" <<EOF
load_module $NCHAN_SO;
daemon off;
master_process on;
worker_processes $NCHAN_WORKERS;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events {
  worker_connections $(( NOFILE - 100 ));
  multi_accept on;
}
http {
  access_log off;
  client_body_temp_path $TMP/nginx/tmp/body;
  proxy_temp_path $TMP/nginx/tmp/proxy;
  fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
  uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
  scgi_temp_path $TMP/nginx/tmp/scgi;
  keepalive_requests 1000000;
  nchan_shared_memory_size 512M;
  server {
    listen 127.0.0.1:$PORT;
    location = /healthz { return 200 "ok\n"; }
    location ~ ^/pub/(\w+)$ {
      nchan_publisher;
      nchan_channel_id \$1;
      nchan_message_buffer_length 16;
      nchan_message_timeout 30s;
    }
    location ~ ^/sub/(\w+)$ {
      nchan_subscriber websocket;
      nchan_channel_id \$1;
      nchan_subscriber_first_message newest;
    }
  }
}
EOF
  nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -t -q
  nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$PORT/healthz"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# run WORKLOAD SERVER RUN -- bench args...
run() {
  local workload="$1" server="$2" run="$3"; shift 4
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$workload,"* ]]; then return 0; fi
  case "$server" in
    eventgate) start_eventgate; set -- --target eventgate --api-key "$API_KEY" "$@" ;;
    eventgate-b) start_eventgate "$EVENTGATE_B"; set -- --target eventgate --api-key "$API_KEY" "$@" ;;
    nchan) start_nchan; set -- --target nchan "$@" ;;
  esac
  # The envelope variant: Nchan's body is shaped like eventgate's notification frame.
  [[ "$workload" == *-envelope && "$server" == nchan ]] && set -- "$@" --nchan-envelope
  set -- --batch 1 --in-flight "$IN_FLIGHT" --padding "$PADDING" "$@"
  # The like-for-like storm: eventgate stops after the authenticated upgrade, as Nchan does.
  [[ "$workload" == *-upgrade && "$server" == eventgate* ]] && set -- "$@" --upgrade-only
  sleep 0.5
  local before after line
  before="$(loadavg)"
  log "$workload / $server / run $run: eventgate-bench $*"
  if ! line="$("$BENCH" --server "127.0.0.1:$PORT" --server-pid "$SERVER_PID" --json --label "$workload" "$@" 2> "$TMP/bench.err")"; then
    log "bench failed:"; cat "$TMP/bench.err" >&2
    line='{}'
  fi
  grep -v '^churn' "$TMP/bench.err" | sed 's/^/    /' >&2 || true
  after="$(loadavg)"
  stop_server
  python3 - "$workload" "$server" "$run" "$before" "$after" "$line" >> "$RESULTS" <<'PY'
import json, sys
workload, server, run, before, after, line = sys.argv[1:]
record = json.loads(line or "{}")
record.update(workload=workload, server=server, run=int(run),
              loadavg_before=before, loadavg_after=after)
print(json.dumps(record))
PY
  # Let TIME_WAIT sockets and the other engineers' compilers settle a little.
  sleep 2
}

# --- workloads ---------------------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  REPEAT=1; DUR=3
  W1=(--connections 1000 --groups 100 --rate 2000 --duration $DUR)
  W1H=(--connections 1000 --groups 100 --rate 1000 --duration $DUR)
  W1M=(--connections 1000 --groups 100 --rate 0 --duration $DUR)
  W2=(--connections 200 --groups 10 --rate 0 --duration $DUR)
  W3=(--connections 1000 --idle --hold 1)
  W4=(--connections 2000 --idle --hold 2)
  IDLE_N=2000
else
  REPEAT=3; DUR=10
  W1=(--connections 10000 --groups 100 --rate 2000 --duration $DUR)
  W1H=(--connections 10000 --groups 100 --rate 1000 --duration $DUR)
  W1M=(--connections 10000 --groups 100 --rate 0 --duration $DUR)
  W2=(--connections 1000 --groups 10 --rate 0 --duration $DUR)
  W3=(--connections 10000 --idle --hold 1)
  IDLE_N=$IDLE_MAX
  W4=(--connections "$IDLE_N" --idle --hold 5)
fi

[ -n "$REPEAT_ARG" ] && REPEAT="$REPEAT_ARG"
STARTED=$(date +%s)
for r in $(seq 1 "$REPEAT"); do
  for s in $SERVERS; do run rate2000 "$s" "$r" -- "${W1[@]}"; done
  for s in $SERVERS; do run rate1000 "$s" "$r" -- "${W1H[@]}"; done
  for s in $SERVERS; do run rate1000-envelope "$s" "$r" -- "${W1H[@]}"; done
  for s in $SERVERS; do run max10k "$s" "$r" -- "${W1M[@]}"; done
  for s in $SERVERS; do run max1k "$s" "$r" -- "${W2[@]}"; done
  for s in $SERVERS; do run storm "$s" "$r" -- "${W3[@]}"; done
  for s in $SERVERS; do run storm500 "$s" "$r" -- "${W3[@]}" --concurrency 500; done
  for s in $SERVERS; do run storm-upgrade "$s" "$r" -- "${W3[@]}"; done
done
IDLE_REPEAT=$(( QUICK == 1 ? 1 : 2 ))
for r in $(seq 1 "$IDLE_REPEAT"); do
  for s in $SERVERS; do run idle "$s" "$r" -- "${W4[@]}"; done
done
log "runs took $(( $(date +%s) - STARTED ))s"

# --- report ------------------------------------------------------------------------------
if [ "$QUICK" = 1 ] || [ -n "$ONLY" ]; then
  DOC="$OUT/benchmarks.md"; PNG="$OUT/benchmarks-latency.png"
else
  DOC="$ROOT/docs/benchmarks.md"; PNG="$ROOT/docs/benchmarks-latency.png"
fi
python3 "$ROOT/bench/report.py" --results "$RESULTS" --doc "$DOC" --png "$PNG" \
  --in-flight "$IN_FLIGHT" --padding "$PADDING" --nchan-workers "$NCHAN_WORKERS" \
  --idle-target 100000 --idle-count "$IDLE_N" --nofile "$NOFILE" --quick "$QUICK" --soak "$ROOT/docs/soak-summary.json"
log "wrote $DOC and $PNG"
