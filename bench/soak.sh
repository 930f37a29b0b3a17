#!/usr/bin/env bash
# Soak test: connect/subscribe/(unsubscribe)/disconnect churn with events flowing against a
# release eventgate. Samples the server's RSS and open file descriptors to a CSV and checks
# at the end that RSS came back to within 10% of its plateau and the fd count to baseline.
#
#   bash bench/soak.sh                      # 10 minutes, writes docs/soak.csv + docs/soak-summary.json
#   bash bench/soak.sh --minutes 1 --out /tmp/soak
#
# Options: --minutes N (10), --workers N concurrent churning connections (500),
#          --rate N events/s (200), --interval S seconds between samples (5), --out DIR (docs).
# Exit status: 0 pass, 1 RSS or fd check failed, other: could not run.
set -euo pipefail

MINUTES=10; WORKERS=500; RATE=200; INTERVAL=5; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --interval) INTERVAL="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 64 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/docs}"
mkdir -p "$OUT"
CSV="$OUT/soak.csv"
SUMMARY="$OUT/soak-summary.json"
TMP="$(mktemp -d /tmp/eventgate-soak.XXXXXX)"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The profiling profile: release code with symbols, so perf can be pointed at the server.
cargo build --profile profiling -p eventgate -p eventgate-bench -q
EG="$ROOT/target/profiling/eventgate"
BENCH="$ROOT/target/profiling/eventgate-bench"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
STACK_ID="11111111-2222-3333-4444-555555555555"
API_KEY="$("$EG" key --stack-id "$STACK_ID")"
EVENTGATE_LOG=warn "$EG" serve --dev --listen "127.0.0.1:$PORT" --stack-id "$STACK_ID" \
  > "$TMP/eventgate.out" 2> "$TMP/eventgate.err" &
PID=$!
SAMPLER=""
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  if kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done

PHASE_FILE="$TMP/phase"
echo baseline > "$PHASE_FILE"
echo "time,elapsed_s,phase,rss_kib,fds,threads,load1" > "$CSV"
START=$(date +%s)
(
  while kill -0 "$PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo "")
    thr=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo "")
    fds=$(ls "/proc/$PID/fd" 2>/dev/null | wc -l)
    echo "$(date -u +%H:%M:%S),$(( $(date +%s) - START )),$(cat "$PHASE_FILE"),$rss,$fds,$thr,$(cut -d' ' -f1 /proc/loadavg)" >> "$CSV"
    sleep "$INTERVAL"
  done
) &
SAMPLER=$!

sleep 10
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
echo churn > "$PHASE_FILE"
log "churn for $MINUTES min: $WORKERS workers, $RATE events/s (server pid $PID, samples in $CSV)"
"$BENCH" --churn --server "127.0.0.1:$PORT" --api-key "$API_KEY" --connections "$WORKERS" \
  --groups 10 --rate "$RATE" --batch 10 --duration $(( MINUTES * 60 )) --json --label soak \
  > "$TMP/churn.json"
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
echo cooldown > "$PHASE_FILE"
log "churn done: $(cat "$TMP/churn.json")"
sleep 30
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=""

python3 - "$CSV" "$SUMMARY" "$TMP/churn.json" "$MINUTES" "$WORKERS" "$RATE" "$INTERVAL" "$LOAD_START" "$LOAD_END" <<'PY'
import csv, json, statistics, sys, datetime
path, summary, churn, minutes, workers, rate, interval, load_start, load_end = sys.argv[1:]
rows = [r for r in csv.DictReader(open(path)) if r["rss_kib"] and r["fds"]]
by = lambda phase: [r for r in rows if r["phase"] == phase]
base, ch, cool = by("baseline"), by("churn"), by("cooldown")
if not (base and ch and cool):
    print("not enough samples", file=sys.stderr); sys.exit(2)
rss = lambda rs: [int(r["rss_kib"]) for r in rs]
fds = lambda rs: [int(r["fds"]) for r in rs]
third = max(1, len(ch) // 3)
plateau = statistics.median(rss(ch[third:2 * third] or ch))
last_max = max(rss(ch[-third:]))
final_rss, final_fd, base_fd = rss(cool)[-1], fds(cool)[-1], fds(base)[-1]
rss_ok = final_rss <= plateau * 1.10 and last_max <= plateau * 1.10
fd_ok = abs(final_fd - base_fd) <= 5
result = json.load(open(churn))
out = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "minutes": int(minutes), "workers": int(workers), "rate": int(rate), "interval": int(interval),
    "loadavg": f"{load_start} at start, {load_end} at end",
    "cycles": result.get("cycles"), "cycles_per_s": result.get("cycles_per_s"),
    "failed_setups": result.get("failed_setups"), "received": result.get("received"),
    "published": result.get("published"),
    "rss_baseline_kib": rss(base)[-1], "rss_plateau_kib": int(plateau), "rss_last_third_max_kib": last_max,
    "rss_final_kib": final_rss, "fd_baseline": base_fd, "fd_peak": max(fds(ch)), "fd_final": final_fd,
    "result": ("pass" if rss_ok and fd_ok else "FAIL") + f" (RSS final {final_rss / plateau:.2f}× plateau, last-third max {last_max / plateau:.2f}×; fds {final_fd} vs baseline {base_fd})",
}
json.dump(out, open(summary, "w"), indent=1)
print(json.dumps(out, indent=1))
sys.exit(0 if rss_ok and fd_ok else 1)
PY
