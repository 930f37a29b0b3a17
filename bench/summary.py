#!/usr/bin/env python3
"""Medians per workload and server of a bench/compare.sh results file (every run listed),
then, per workload, each server against the first one run by run: compare.sh runs the servers
of one repeat back to back, so the ratio of run i to run i compares two runs that met the same
phase of a noisy machine, and the median of those ratios is steadier than the ratio of the
medians when the machine's speed drifts during a sitting.

    python3 bench/summary.py /tmp/eventgate-compare.XXXX/results/benchmarks-results.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

FIELDS = [
    ("deliv/s", lambda r: r.get("notifications_per_s")),
    ("sent/s", lambda r: r.get("events_per_s")),
    ("acc/s", lambda r: r.get("accepted_per_s")),
    ("p50", lambda r: (r.get("latency_ms") or {}).get("p50")),
    ("p99", lambda r: (r.get("latency_ms") or {}).get("p99")),
    ("p999", lambda r: (r.get("latency_ms") or {}).get("p999")),
    ("s.p50", lambda r: (r.get("latency_from_send_ms") or {}).get("p50")),
    ("s.p99", lambda r: (r.get("latency_from_send_ms") or {}).get("p99")),
    ("rtt99", lambda r: (r.get("post_round_trip_ms") or {}).get("p99")),
    ("lag99", lambda r: (r.get("publisher_lag_ms") or {}).get("p99")),
    ("cpu_us", lambda r: r["server_cpu_s"] / r["received"] * 1e6 if r.get("server_cpu_s") and r.get("received") else None),
    ("tool_s", lambda r: r.get("tool_cpu_s")),
    ("bytes", lambda r: r.get("message_bytes")),
    ("lost", lambda r: r.get("lost")),
    ("setup/s", lambda r: r.get("setup_per_s")),
    ("kib/conn", lambda r: r.get("rss_per_connection_kib")),
]

groups = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r.get("workload"), r.get("server"))
    if key not in groups:
        order.append(key)
    groups[key].append(r)


def show(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"


for key in order:
    runs = groups[key]
    print(f"== {key[0]} / {key[1]}: {len(runs)} run(s)")
    cols = [(name, [f(r) for r in runs]) for name, f in FIELDS]
    cols = [(n, v) for n, v in cols if any(x is not None for x in v)]
    print("   " + " ".join(f"{n:>9}" for n, _ in cols))
    for i in range(len(runs)):
        print(f"{i + 1:>2} " + " ".join(f"{show(v[i]):>9}" for _, v in cols))
    meds = []
    for _, v in cols:
        xs = [x for x in v if x is not None]
        meds.append(statistics.median(xs) if xs else None)
    print(" M " + " ".join(f"{show(m):>9}" for m in meds))


RATIOS = ["deliv/s", "p50", "p99", "s.p50", "s.p99", "cpu_us", "setup/s", "kib/conn"]
by_name = dict(FIELDS)
workloads = []
for workload, _ in order:
    if workload not in workloads:
        workloads.append(workload)
for workload in workloads:
    servers = [server for w, server in order if w == workload]
    if len(servers) < 2:
        continue
    first = groups[(workload, servers[0])]
    for server in servers[1:]:
        runs = groups[(workload, server)]
        pairs = list(zip(runs, first))
        cols = []
        for name in RATIOS:
            f = by_name[name]
            ratios = [
                f(a) / f(b) if f(a) is not None and f(b) else None for a, b in pairs
            ]
            if any(x is not None for x in ratios):
                cols.append((name, ratios))
        if not cols:
            continue
        print(f"== {workload}: {server} / {servers[0]}, run by run")
        print("   " + " ".join(f"{n:>9}" for n, _ in cols))
        for i in range(len(pairs)):
            print(f"{i + 1:>2} " + " ".join(
                f"{v[i]:>8.2f}x" if v[i] is not None else f"{'-':>9}" for _, v in cols))
        meds = []
        for _, v in cols:
            xs = [x for x in v if x is not None]
            meds.append(f"{statistics.median(xs):>8.2f}x" if xs else f"{'-':>9}")
        print(" M " + " ".join(meds))
