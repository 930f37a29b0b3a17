#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite fuzzing client (autobahntestsuite 0.8.2,
# Python 2.7) against the gateway in its test-only echo mode (same listener, handshake,
# tungstenite configuration, session loop, outbound queue and close handling as a real
# connection; see docs/operations.md, "WebSocket conformance") and fails unless every case of
# sections 1-7, 9 and 10 is OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED.
#
# The first run installs the test suite into a virtualenv under target/autobahn-venv (Python
# 2.7.18 from pyenv, installed with pyenv when missing); later runs reuse it. The report is
# kept in test-artifacts/autobahn/ (HTML per case, index.json, the server's log).
#
# Environment: EVENTGATE_BIN (default target/release/eventgate, built when missing),
# AUTOBAHN_CASES (a comma-separated list of case patterns instead of the checked-in ones,
# for a quick look at one section: AUTOBAHN_CASES='7.*' bash scripts/autobahn.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_VERSION=2.7.18
SUITE_VERSION=0.8.2
VENV=target/autobahn-venv
TOOLS=target/autobahn-tools
ARTIFACTS=test-artifacts/autobahn
BIN=${EVENTGATE_BIN:-target/release/eventgate}
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}

# --- the test suite, once ---------------------------------------------------------------------
# A virtualenv moved from another folder keeps its old paths: install again when it does not run.
if ! "$VENV/bin/python" -c 'import autobahntestsuite' 2>/dev/null; then
  python2=$PYENV_ROOT/versions/$PYTHON_VERSION/bin/python
  if [[ ! -x $python2 ]]; then
    if command -v pyenv >/dev/null; then
      echo "autobahn: installing Python $PYTHON_VERSION with pyenv"
      pyenv install --skip-existing "$PYTHON_VERSION"
    else
      echo "autobahn: Python $PYTHON_VERSION is needed ($python2) and pyenv is not installed" >&2
      exit 1
    fi
  fi
  echo "autobahn: installing autobahntestsuite $SUITE_VERSION into $VENV"
  rm -rf "$VENV" "$TOOLS"
  # Python 2.7 has no venv module: virtualenv (the last line that runs on 2.7) is installed
  # beside it, used once, and the test suite goes into the virtualenv it makes.
  "$python2" -m pip install --quiet --disable-pip-version-check --target "$TOOLS" 'virtualenv<20.22'
  PYTHONPATH=$TOOLS "$python2" -m virtualenv --quiet "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "autobahntestsuite==$SUITE_VERSION"
fi
PYTHON=$VENV/bin/python
# Python 2 and its old cryptography warn on every start; the report is what matters.
export PYTHONWARNINGS=ignore

# --- the gateway in echo mode -----------------------------------------------------------------
if [[ ! -x $BIN ]]; then
  cargo build --release --bin eventgate
fi
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
server_log=$ARTIFACTS/eventgate.log
EVENTGATE_LOG=${EVENTGATE_LOG:-warn} "$BIN" serve --config tests/autobahn/eventgate.toml \
  --listen 127.0.0.1:0 >"$server_log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

address=""
key=""
for _ in $(seq 1 300); do
  address=$(sed -n 's|^listening on http://||p' "$server_log")
  key=$(sed -n 's|^api key: ||p' "$server_log")
  [[ -n $address && -n $key ]] && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "autobahn: the gateway did not start:" >&2
    cat "$server_log" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z $address || -z $key ]]; then
  echo "autobahn: the gateway printed no address and key in 30 s" >&2
  exit 1
fi

# --- the run ------------------------------------------------------------------------------------
"$PYTHON" - "$address" "$key" "$ARTIFACTS" "${AUTOBAHN_CASES:-}" <<'EOF'
import base64, json, sys, urllib
address, key, artifacts, cases = sys.argv[1:5]
header = json.dumps({"Host": "127.0.0.1", "ApiKey": key, "Id": "6f0c2f52-1d7a-4b6e-9d0a-3c1b2a4d5e6f"})
spec = json.load(open("tests/autobahn/fuzzingclient.json"))
spec["outdir"] = "reports/servers"
spec["servers"][0]["url"] = "ws://%s/?header=%s" % (address, urllib.quote(base64.b64encode(header), safe=""))
if cases:
    spec["cases"] = [case.strip() for case in cases.split(",") if case.strip()]
json.dump(spec, open(artifacts + "/fuzzingclient.json", "w"), indent=2)
EOF

echo "autobahn: wstest -m fuzzingclient against ws://$address/ (cases: ${AUTOBAHN_CASES:-tests/autobahn/fuzzingclient.json})"
started=$(date +%s)
(cd "$ARTIFACTS" && "$OLDPWD/$VENV/bin/python" "$OLDPWD/$VENV/bin/wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1) || {
  echo "autobahn: wstest failed:" >&2
  tail -30 "$ARTIFACTS/wstest.log" >&2
  exit 1
}
echo "autobahn: the suite ran in $(($(date +%s) - started)) s"
if ! kill -0 "$server" 2>/dev/null; then
  echo "autobahn: the gateway died during the run:" >&2
  tail -30 "$server_log" >&2
  exit 1
fi

# --- the verdict --------------------------------------------------------------------------------
"$PYTHON" - "$ARTIFACTS/reports/servers/index.json" <<'EOF'
import json, sys
ACCEPTED = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
report = json.load(open(sys.argv[1]))
cases = report.get("eventgate", {})
counts = {}
failed = []
def order(case):
    return [int(part) for part in case.split(".")]
for case in sorted(cases, key=order):
    result = cases[case]
    behavior, close = result.get("behavior"), result.get("behaviorClose")
    counts[behavior] = counts.get(behavior, 0) + 1
    if behavior not in ACCEPTED or close not in ACCEPTED:
        failed.append("%s: %s (close: %s, code %s)" % (case, behavior, close, result.get("remoteCloseCode")))
print("autobahn: %d cases: %s" % (len(cases), ", ".join("%s %d" % item for item in sorted(counts.items()))))
for line in failed:
    print("autobahn: FAILED " + line)
if not cases:
    print("autobahn: the report has no cases")
    sys.exit(1)
# The plain closing line that CI reads.
print("autobahn: %d passed, %d failed" % (len(cases) - len(failed), len(failed)))
sys.exit(1 if failed else 0)
EOF
