#!/usr/bin/env python3
"""Summarises bench/auth.sh: medians over rounds of wrk's p50/p99 latency,
throughput, and the server's CPU time per 1000 requests, per configuration.

    bench/auth_report.py RESULTS.jsonl CONNS DURATION CPUS
"""
import json
import statistics
import sys

from wrk_parse import parse_wrk as parse


def main():
    path, conns, duration, cpus = sys.argv[1:5]
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = {}
    for r in rows:
        w = parse(r["wrk"])
        cpu_ms = r["cpu_ticks"] * 1000.0 / r["hz"]
        w["cpu_ms_per_1k"] = cpu_ms / w["requests"] * 1000 if w.get("requests") else float("nan")
        by.setdefault(r["config"], []).append(w)
    print(f"{conns} connections, {duration} s per run, {len(by.get('token', []))} rounds, {cpus} CPUs; "
          "medians over rounds (wrk -t2 on the same machine)\n")
    print("| server | requests/s | p50 ms | p99 ms | server CPU ms per 1000 requests | non-2xx | socket errors |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for name in ["preauth", "anon", "token"]:
        runs = by.get(name, [])
        if not runs:
            continue
        m = {k: statistics.median(x[k] for x in runs) for k in ["rps", "p50", "p99", "cpu_ms_per_1k"]}
        med[name] = m
        non2xx = sum(x.get("non2xx", 0) for x in runs)
        errors = "; ".join(sorted({x["socket_errors"] for x in runs if "socket_errors" in x})) or "none"
        print(f"| {name} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['cpu_ms_per_1k']:.1f} | {non2xx} | {errors} |")
    if "token" in med and "preauth" in med:
        t, p = med["token"], med["preauth"]
        print(f"\ntoken vs preauth: throughput {t['rps'] / p['rps']:.2f}x, p50 {t['p50'] / p['p50']:.2f}x, "
              f"p99 {t['p99'] / p['p99']:.2f}x, CPU per request {t['cpu_ms_per_1k'] / p['cpu_ms_per_1k']:.2f}x")
    if "token" in med and "anon" in med:
        t, a = med["token"], med["anon"]
        print(f"token vs anon: throughput {t['rps'] / a['rps']:.2f}x, CPU per request "
              f"{t['cpu_ms_per_1k'] / a['cpu_ms_per_1k']:.2f}x "
              f"({t['cpu_ms_per_1k'] - a['cpu_ms_per_1k']:+.1f} us of CPU per request)")


if __name__ == "__main__":
    main()
