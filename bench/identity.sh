#!/usr/bin/env bash
# Issue #15's numbers: what verified identities and server-enforced scopes cost.
#
#   bash bench/identity.sh [--repeat 3] [--connections 10000] [--tenants 1000] [--groups 100]
#                          [--rate 1000] [--duration 10] [--only setup,match,delivery] [--out DIR]
#
# 1. setup: the connect storm (upgrade + Hello + 2 Subscribes + Acks, 100 in flight) against a
#    gateway without [identity] (key only) and with mode "token" and a tenant scope template,
#    tokens signed HS256 (hmac_secret), ES256 (PEM public key) and ES256 (JWKS file, cached);
#    one token per connection, minted by the load tool before the storm. First checks that
#    the gateway verifies them: a wrong secret, a foreign ES256 key and no token are refused.
# 2. match: instructions per event (valgrind --tool=callgrind) of RuleIndex::matches over
#    2 x connections rules built three ways (protocol/examples/scope_match.rs): scoped
#    (Pattern::and, as the session does), client (the tenant written into the rules:
#    the like-for-like baseline) and unscoped (no tenant at all: the literal reading), plus
#    the wall-clock time per event, alternating.
# 3. delivery: delivered notifications/s at maximum rate and at --rate ev/s: baseline = key
#    only, the tenant written by the client into both rules; scoped = token mode, rules
#    without the tenant, the gateway ANDs the scope in. Same deliveries per event.
#
# Every run alternates the cases (A B A B ...), each on a freshly started `serve --dev`
# (EVENTGATE_LOG=warn). Prints every run, the medians and the ratios; raw JSON lines and
# the keys go to DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=3 CONNS=10000 TENANTS=1000 NGROUPS=100 RATE=1000 DURATION=10 ONLY="setup,match,delivery" OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --tenants) TENANTS=$2; shift 2 ;;
    --groups) NGROUPS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/eventgate-identity.XXXXXX")}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "cargo build --release -p eventgate -p eventgate-bench; --example scope_match"
cargo build --release -p eventgate -p eventgate-bench >&2
cargo build --release -p eventgate-protocol --example scope_match >&2
SERVER=target/release/eventgate
BENCH=target/release/eventgate-bench
MATCH=target/release/examples/scope_match
ulimit -n "$(ulimit -Hn)"

# --- keys and configurations ---------------------------------------------------------------
SECRET=$(openssl rand -hex 32)
WRONG_SECRET=$(openssl rand -hex 32)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/es256.pem" 2>/dev/null
openssl pkey -in "$OUT/es256.pem" -pubout -out "$OUT/es256.pub.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/foreign.pem" 2>/dev/null
# The JWK of the same public key: the last 64 bytes of its DER are x and y.
openssl pkey -in "$OUT/es256.pem" -pubout -outform DER -out "$OUT/es256.pub.der"
python3 - "$OUT/es256.pub.der" >"$OUT/jwks.json" <<'EOF'
import base64, json, sys
der = open(sys.argv[1], "rb").read()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                            "x": b64(der[-64:-32]), "y": b64(der[-32:])}]}))
EOF
SCOPE='{"detail":{"tenant":["${tenant}"]}}'
: >"$OUT/key.toml"
cat >"$OUT/hs256.toml" <<EOF
[identity]
mode = "token"
hmac_secret = "$SECRET"
scope = '$SCOPE'
EOF
cat >"$OUT/es256.toml" <<EOF
[identity]
mode = "token"
scope = '$SCOPE'
[[identity.public_keys]]
file = "$OUT/es256.pub.pem"
algorithms = ["ES256"]
EOF
cat >"$OUT/es256-jwks.toml" <<EOF
[identity]
mode = "token"
jwks_file = "$OUT/jwks.json"
scope = '$SCOPE'
EOF

# --- one run -------------------------------------------------------------------------------
PID=""
stop_server() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  PID=""
}
trap 'stop_server; log "raw results: $RESULTS"' EXIT

# run CONFIG LABEL RUN -- load-tool arguments...: a fresh gateway with CONFIG, one load-tool
# run, its JSON line (with label and run) appended to $RESULTS.
run() {
  local config=$1 label=$2 round=$3 log port key line
  shift 4
  log=$(mktemp)
  EVENTGATE_LOG=warn "$SERVER" serve --dev --config "$OUT/$config.toml" --listen 127.0.0.1:0 \
    --stack-id bench-identity >"$log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do grep -q '^api key:' "$log" && break; sleep 0.1; done
  port=$(sed -n 's|^listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log" | head -1)
  key=$(sed -n 's|^api key: *||p' "$log" | head -1)
  if [ -z "$port" ] || [ -z "$key" ]; then
    log "the gateway did not start:"; cat "$log" >&2; exit 1
  fi
  log "$label / run $round: eventgate-bench $*"
  if ! line=$("$BENCH" --target eventgate --server "127.0.0.1:$port" --api-key "$key" \
      --server-pid "$PID" --json --label "$label" "$@" 2>"$OUT/bench.err"); then
    log "the load tool failed:"; cat "$OUT/bench.err" >&2; line='{}'
  fi
  sed 's/^/    /' "$OUT/bench.err" >&2
  stop_server
  python3 -c 'import json,sys; r=json.loads(sys.argv[1] or "{}"); r.update(label=sys.argv[2], run=int(sys.argv[3])); print(json.dumps(r))' \
    "$line" "$label" "$round" >>"$RESULTS"
  rm -f "$log"
  sleep 1
}

HS=(--token-alg hs256 --token-key "$SECRET")
ES=(--token-alg es256 --token-key "$OUT/es256.pem")
# The storm's rules are the same in every case; with tokens the gateway ANDs the scope in.
STORM=(--connections "$CONNS" --groups "$NGROUPS" --tenants "$TENANTS" --idle --hold 1)

if wants setup; then
  # The gateway really verifies: each of these must fail every connection.
  run hs256 check-wrong-secret 1 -- --connections 200 --idle --hold 0 \
    --token-alg hs256 --token-key "$WRONG_SECRET" --tenants "$TENANTS"
  run es256 check-foreign-es256 1 -- --connections 200 --idle --hold 0 \
    --token-alg es256 --token-key "$OUT/foreign.pem" --tenants "$TENANTS"
  run es256-jwks check-foreign-jwks 1 -- --connections 200 --idle --hold 0 \
    --token-alg es256 --token-key "$OUT/foreign.pem" --tenants "$TENANTS"
  run hs256 check-no-token 1 -- --connections 200 --idle --hold 0
  for i in $(seq "$REPEAT"); do
    run key setup-key "$i" -- "${STORM[@]}"
    run hs256 setup-hs256 "$i" -- "${STORM[@]}" "${HS[@]}"
    run es256 setup-es256 "$i" -- "${STORM[@]}" "${ES[@]}"
    run es256-jwks setup-es256-jwks "$i" -- "${STORM[@]}" "${ES[@]}"
  done
fi

if wants match; then
  # Instructions are deterministic: one callgrind run per event count and build.
  E1=2000 E2=12000
  for mode in client scoped unscoped; do
    for n in $E1 $E2; do
      valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$mode.$n" \
        "$MATCH" "$mode" "$n" "$CONNS" "$TENANTS" "$NGROUPS" >"$OUT/match.$mode.$n.out" 2>/dev/null
    done
    python3 - "$OUT" "$mode" "$E1" "$E2" >>"$RESULTS" <<'EOF'
import json, re, sys
out, mode, e1, e2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def total(n):
    for line in open(f"{out}/callgrind.{mode}.{n}"):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
matches = re.search(r"([\d.]+) matches/event", open(f"{out}/match.{mode}.{e2}.out").read())
print(json.dumps({"label": f"match-callgrind-{mode}", "run": 1,
                  "instructions_per_event": (total(e2) - total(e1)) / (e2 - e1),
                  "matches_per_event": float(matches.group(1)) if matches else None}))
EOF
  done
  for i in $(seq "$REPEAT"); do
    for mode in client scoped unscoped; do
      "$MATCH" "$mode" 300000 "$CONNS" "$TENANTS" "$NGROUPS" | tee -a "$OUT/match-wall.out" | python3 -c '
import json, re, sys
text = sys.stdin.read(); m = re.search(r"([\d.]+) us/event, ([\d.]+) matches", text)
print(json.dumps({"label": "match-wall-" + sys.argv[1], "run": int(sys.argv[2]),
                  "us_per_event": float(m.group(1)), "matches_per_event": float(m.group(2))}))' "$mode" "$i" >>"$RESULTS"
    done
  done
fi

if wants delivery; then
  LOAD=(--connections "$CONNS" --groups "$NGROUPS" --tenants "$TENANTS" --duration "$DURATION")
  for i in $(seq "$REPEAT"); do
    run key deliver-max-client "$i" -- "${LOAD[@]}" --rate 0 --tenant-rules client
    run hs256 deliver-max-scoped "$i" -- "${LOAD[@]}" --rate 0 --tenant-rules scope "${HS[@]}"
  done
  for i in $(seq "$REPEAT"); do
    run key "deliver-$RATE-client" "$i" -- "${LOAD[@]}" --rate "$RATE" --tenant-rules client
    run hs256 "deliver-$RATE-scoped" "$i" -- "${LOAD[@]}" --rate "$RATE" --tenant-rules scope "${HS[@]}"
  done
fi

# --- report ----------------------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {}
for row in rows:
    by.setdefault(row.get("label"), []).append(row)
def med(label, key):
    values = [r[key] for r in by.get(label, []) if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None
def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}x"

checks = [l for l in by if l.startswith("check-")]
if checks:
    print("\n## verification checks (every connection must fail)")
    for label in checks:
        for r in by[label]:
            ok = r.get("connected") == 0 and r.get("failed") == r.get("connections")
            print(f"{label:<22} connected {r.get('connected')} failed {r.get('failed')} "
                  f"{'OK' if ok else 'NOT REFUSED'}  {(r.get('errors') or [''])[0]}")

setup = [l for l in ("setup-key", "setup-hs256", "setup-es256", "setup-es256-jwks") if l in by]
if setup:
    print("\n## connection set-up (10k storm, upgrade + Hello + 2 Subscribes + Acks)")
    print(f"{'case':<18} {'runs (set-ups/s)':<34} {'median':>8} {'vs key':>7} {'cpu us/conn':>12} {'failed':>7}")
    base = med("setup-key", "setup_per_s")
    for label in setup:
        runs = ", ".join(fmt(r.get("setup_per_s")) for r in by[label])
        print(f"{label:<18} {runs:<34} {fmt(med(label, 'setup_per_s')):>8} "
              f"{ratio(med(label, 'setup_per_s'), base):>7} {fmt(med(label, 'setup_server_cpu_us')):>12} "
              f"{sum(r.get('failed', 0) for r in by[label]):>7}")

cg = [l for l in ("match-callgrind-client", "match-callgrind-scoped", "match-callgrind-unscoped") if l in by]
if cg:
    print("\n## match cost per event (callgrind, RuleIndex::matches)")
    base = med("match-callgrind-client", "instructions_per_event")
    lit = med("match-callgrind-unscoped", "instructions_per_event")
    for label in cg:
        v = med(label, "instructions_per_event")
        print(f"{label:<26} {fmt(v):>10} instructions/event, {fmt(med(label, 'matches_per_event'), 2)} matches/event")
    s = med("match-callgrind-scoped", "instructions_per_event")
    print(f"scoped / client (like for like): {ratio(s, base)}; scoped / unscoped (literal): {ratio(s, lit)}")
wall = [l for l in ("match-wall-client", "match-wall-scoped", "match-wall-unscoped") if l in by]
if wall:
    for label in wall:
        runs = ", ".join(fmt(r.get("us_per_event"), 3) for r in by[label])
        print(f"{label:<22} us/event runs {runs}; median {fmt(med(label, 'us_per_event'), 3)}")

deliver = sorted({l.rsplit("-", 1)[0] for l in by if l.startswith("deliver-")})
for prefix in deliver:
    print(f"\n## {prefix}: delivered notifications/s (client-written tenant vs server scope)")
    print(f"{'case':<26} {'runs (notif/s)':<30} {'median':>9} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6} {'recv/expected':>14} {'cpu s/M':>8}")
    for case in ("client", "scoped"):
        label = f"{prefix}-{case}"
        rs = by.get(label, [])
        runs = ", ".join(fmt(r.get("notifications_per_s")) for r in rs)
        p50 = statistics.median([r["latency_ms"]["p50"] or 0 for r in rs if r.get("latency_ms")] or [0])
        p99 = statistics.median([r["latency_ms"]["p99"] or 0 for r in rs if r.get("latency_ms")] or [0])
        recv = sum(r.get("received", 0) for r in rs); exp = sum(r.get("expected", 0) for r in rs)
        # Server CPU seconds per million notifications delivered (median over the runs).
        per_m = [r["server_cpu_s"] * 1e6 / r["received"] for r in rs if r.get("server_cpu_s") and r.get("received")]
        print(f"{label:<26} {runs:<30} {fmt(med(label, 'notifications_per_s')):>9} {p50:>8.2f} {p99:>8.2f} "
              f"{sum(r.get('lost', 0) for r in rs):>6} {recv:>7}/{exp:<7} {fmt(statistics.median(per_m) if per_m else None, 2):>8}")
    print(f"scoped / client: {ratio(med(prefix + '-scoped', 'notifications_per_s'), med(prefix + '-client', 'notifications_per_s'))}")
EOF
log "raw results: $RESULTS"
