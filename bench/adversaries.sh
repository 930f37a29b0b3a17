#!/usr/bin/env bash
# Healthy clients' latency and delivered rate with and without hostile connections at their
# full rule budgets (issue 14's benchmark), alternating the two cases, each on a fresh server.
#
#   bash bench/adversaries.sh [--repeat 3] [--adversaries 10] [--connections 10000]
#                             [--rate 1000] [--duration 10] [--out DIR]
#
# Each run: a fresh `eventgate serve --dev` (EVENTGATE_LOG=warn), then the load tool with
# --adversaries 0 or N. Prints every run and the medians; the raw JSON lines go to DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=3 ADV=10 CONNS=10000 RATE=1000 DURATION=10 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --adversaries) ADV=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/eventgate-adversaries.XXXXXX")}
mkdir -p "$OUT"

cargo build --release --bin eventgate -p eventgate -p eventgate-bench >&2
SERVER=target/release/eventgate
BENCH=target/release/eventgate-bench
ulimit -n "$(ulimit -Hn)"

run() { # $1 = adversaries, $2 = label
  local log port key pid
  log=$(mktemp)
  EVENTGATE_LOG=warn "$SERVER" serve --dev --listen 127.0.0.1:0 --stack-id bench-adversaries >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on' "$log" && break; sleep 0.1; done
  port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log" | head -1)
  key=$(sed -n 's|^api key: *||p' "$log" | head -1)
  "$BENCH" --target eventgate --server "127.0.0.1:$port" --api-key "$key" --server-pid "$pid" \
    --connections "$CONNS" --groups 100 --rate "$RATE" --duration "$DURATION" --batch 1 \
    --adversaries "$1" --json --label "$2" >>"$OUT/results.jsonl"
  kill -TERM "$pid"; wait "$pid" || true
  rm -f "$log"
}

for i in $(seq "$REPEAT"); do
  echo "run $i: without adversaries" >&2; run 0 "baseline"
  echo "run $i: with $ADV adversaries" >&2; run "$ADV" "adversaries"
done

python3 - "$OUT/results.jsonl" <<'EOF'
import json, statistics, sys
def flat(value, prefix=""):
    out = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = value
    return out
rows = [flat(json.loads(line)) for line in open(sys.argv[1]) if line.strip()]
def get(row, suffix):
    for key, value in row.items():
        if key == suffix or key.endswith("." + suffix):
            return value if isinstance(value, (int, float)) else 0
    return 0
by = {}
for row in rows:
    by.setdefault(row.get("label"), []).append(row)
print(f"{'label':<12} {'notif/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'lost':>6}")
med = {}
for label, runs in by.items():
    for r in runs:
        print(f"{label:<12} {get(r,'notifications_per_s'):>10.0f} {get(r,'latency_ms.p50'):>8.1f} "
              f"{get(r,'latency_ms.p99'):>8.1f} {get(r,'latency_ms.p999'):>9.1f} {get(r,'lost'):>6}")
    med[label] = {"rate": statistics.median(get(r, "notifications_per_s") for r in runs),
                  "p99": statistics.median(get(r, "latency_ms.p99") for r in runs)}
if "baseline" in med and "adversaries" in med:
    b, a = med["baseline"], med["adversaries"]
    print(f"medians: notifications/s {a['rate']:.0f} vs {b['rate']:.0f} ({a['rate']/max(b['rate'],1):.2f}x), "
          f"p99 {a['p99']:.1f} vs {b['p99']:.1f} ms ({a['p99']/max(b['p99'],1e-9):.2f}x)")
EOF
echo "raw results: $OUT/results.jsonl" >&2
