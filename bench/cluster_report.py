#!/usr/bin/env python3
"""Summarises bench/cluster.sh: medians over rounds, as markdown tables.

    bench/cluster_report.py RESULTS.jsonl

CPU is user + system time from /proc/PID/stat over each measurement: "replicas" sums
every running replica (r1..r4: the ones under load and the idle ones), "PostgreSQL" the
backends of the bench's own database (live at the end of the measurement), "Garage" the
whole Garage process (shared with anything else that uses it at the time).
"""
import json
import math
import re
import statistics
import sys

from wrk_parse import parse_wrk


def cpu(r):
    """CPU seconds over a measurement: replicas, PostgreSQL (this database), Garage."""
    c0, c1, hz = r["cpu0"], r["cpu1"], r["hz"]
    reps = sum(c1[k] - c0.get(k, 0) for k in c1 if re.fullmatch(r"r\d+", k))
    per = {k: (c1[k] - c0.get(k, 0)) / hz for k in c1 if re.fullmatch(r"r\d+", k)}
    pg = sum(t - c0.get("pg", {}).get(p, 0) for p, t in c1.get("pg", {}).items())
    garage = c1.get("garage", 0) - c0.get("garage", 0)
    return {"replicas": reps / hz, "pg": pg / hz, "garage": garage / hz, "per": per}


def nearest_rank(xs, q):
    xs = sorted(xs)
    return xs[max(0, math.ceil(q * len(xs)) - 1)]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def death_errors(results_path):
    """The first `Error:` line of each failed death run, from the test output saved next
    to the results (cluster-<stamp>.log)."""
    out = {}
    try:
        text = open(re.sub(r"\.jsonl$", ".log", results_path), errors="replace").read()
    except OSError:
        return out
    for m in re.finditer(r"^===== death run (\d+) \(exit \d+\)\n(.*?)(?=^===== death run |\Z)", text, re.S | re.M):
        err = re.search(r"^Error: (.*)$", m.group(2), re.M)
        if err:
            out[int(m.group(1))] = err.group(1)
    return out


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    hits = [r for r in rows if r["part"] == "hits"]
    dls = [r for r in rows if r["part"] == "download"]
    deaths = [r for r in rows if r["part"] == "death"]
    slow = [r for r in rows if r["part"] == "slow_reference"]
    trace = next((r for r in rows if r["part"] == "redirect_trace"), None)

    # ---- part 1 and 2a
    by = {}
    for r in hits:
        ws = {k: parse_wrk(v) for k, v in r["wrk"].items()}
        c = cpu(r)
        req = sum(w["requests"] for w in ws.values())
        secs = max(w["seconds"] for w in ws.values())
        by.setdefault(r["config"], []).append({
            "rps": sum(w["rps"] for w in ws.values()),
            "p50": max(w["p50"] for w in ws.values()),
            "p99": max(w["p99"] for w in ws.values()),
            "req": req,
            "conns": sum(r["conns"]),
            "rep_ms_1k": c["replicas"] * 1000 / req * 1000,
            "pg_ms_1k": c["pg"] * 1000 / req * 1000,
            "g_ms_1k": c["garage"] * 1000 / req * 1000,
            "cores": (c["replicas"] + c["pg"] + c["garage"]) / secs,
            "per_rps": {k: w["rps"] for k, w in ws.items()},
            "non2xx": sum(w.get("non2xx", 0) for w in ws.values()),
            "errors": "; ".join(f"{k}: {w['socket_errors']}" for k, w in ws.items() if w.get("socket_errors")),
        })
    names = {
        "one": "1 replica (r1; r2-r4 idle)",
        "three": "3 replicas (r1-r3 at once; r4 idle)",
        "presign": "1 replica, presign: the 307 only (r4)",
    }
    if by:
        n_rounds = max(len(v) for v in by.values())
        print(f"### Cache hits: GET .../files/kmf_hello.ko with a read token (wrk -t2 per replica; medians of {n_rounds} rounds)\n")
        print("| replicas | connections | requests/s | p50 ms | p99 ms | CPU ms per 1000 requests: replicas | PostgreSQL | Garage | CPUs busy (of 2) | non-2xx/3xx | socket errors |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for k in ["one", "three", "presign"]:
            v = by.get(k)
            if not v:
                continue
            m = {f: med([x[f] for x in v]) for f in ["rps", "p50", "p99", "rep_ms_1k", "pg_ms_1k", "g_ms_1k", "cores"]}
            errors = "; ".join(sorted({x["errors"] for x in v if x["errors"]})) or "none"
            print(f"| {names[k]} | {v[0]['conns']} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
                  f"{m['rep_ms_1k']:.1f} | {m['pg_ms_1k']:.1f} | {m['g_ms_1k']:.1f} | {m['cores']:.2f} | "
                  f"{sum(x['non2xx'] for x in v)} | {errors} |")
        print("\n3 replicas: requests/s summed over the three wrk, p50 and p99 the worst of the three. Per round:")
        for k in ["one", "three", "presign"]:
            for i, x in enumerate(by.get(k, []), 1):
                per = ", ".join(f"{r} {v:.0f}" for r, v in x["per_rps"].items())
                print(f"- {k} round {i}: {x['rps']:.0f} req/s ({per}), p99 {x['p99']:.1f} ms")
        if "one" in by and "three" in by:
            o = med([x["rps"] for x in by["one"]])
            t = med([x["rps"] for x in by["three"]])
            print(f"\n3 replicas vs 1: throughput {t / o:.2f}x")
        print()

    # ---- part 2b
    if dls:
        print(f"### Downloads end to end: {dls[0]['n']} sequential `curl -L` per round ({dls[0]['size']} bytes; medians over rounds)\n")
        print("| mode | downloads | median ms | p99 ms | server CPU ms per download | Garage CPU ms per download | PostgreSQL CPU ms per download | HTTP codes | bytes checked |")
        print("|---|---|---|---|---|---|---|---|---|")
        for mode, label in [("direct", "through the server (r1)"), ("presign", "307 to presigned S3 URL (r4, -L)")]:
            v = [r for r in dls if r["mode"] == mode]
            if not v:
                continue
            p50s, p99s, srv, g, pg, codes, n = [], [], [], [], [], {}, 0
            bad = 0
            for r in v:
                lines = [l.split() for l in r["curl"].splitlines() if l.strip()]
                times = [float(l[0]) * 1000 for l in lines]
                for l in lines:
                    key = f"{l[1]} ({l[2]} redirect{'s' if l[2] != '1' else ''})"
                    codes[key] = codes.get(key, 0) + 1
                    if l[1] != "200" or int(l[3]) != r["size"]:
                        bad += 1
                n += len(times)
                p50s.append(statistics.median(times))
                p99s.append(nearest_rank(times, 0.99))
                c = cpu(r)
                srv.append(c["per"][r["replica"]] * 1000 / len(times))
                g.append(c["garage"] * 1000 / len(times))
                pg.append(c["pg"] * 1000 / len(times))
            code_s = ", ".join(f"{k}: {c}" for k, c in sorted(codes.items()))
            ok = "sha256 ok" + (f"; {bad} wrong size/code" if bad else ", sizes ok")
            print(f"| {label} | {n} | {med(p50s):.2f} | {med(p99s):.2f} | {med(srv):.3f} | {med(g):.3f} | {med(pg):.3f} | {code_s} | {ok} |")
        if trace:
            print(f"\n`curl -L` with the token header over the redirect: Authorization sent "
                  f"{trace['authorization_headers_sent']} time(s) (to the server only; curl drops it for another host:port "
                  "unless --location-trusted):\n")
            print("```")
            print(trace["trace"].rstrip())
            print("```")
        print()

    # ---- part 3
    if slow or deaths:
        print("### A replica's death to its build finished elsewhere\n")
    if slow:
        s = slow[0]
        print(f"Reference, one uninterrupted kmf-slow-hello build on the bench cluster (release server): "
              f"job {s['build_seconds']:.1f} s (server record), {s['client_seconds']:.1f} s submit to final (client).\n")
    if deaths:
        ok = [d for d in deaths if d.get("seconds") is not None]
        errors = death_errors(sys.argv[1])
        print("| run | exit | death to finished elsewhere s | test wall s (compile included) | other kmodforge servers running | foreign job containers swept |")
        print("|---|---|---|---|---|---|")
        for d in deaths:
            if d.get("skipped"):
                print(f"| {d['run']} | skipped ({d['skipped']}) | | | | |")
                continue
            sec = f"{d['seconds']:.2f}" if d.get("seconds") is not None else "no result"
            shared = {True: "yes", False: "no"}.get(d.get("shared"), "n/a")
            print(f"| {d['run']} | {d['exit']} | {sec} | {d['wall_seconds']:.0f} | {shared} | {d.get('collateral', 0)} |")
        if ok:
            xs = [d["seconds"] for d in ok]
            print(f"\nmedian {med(xs):.2f} s over {len(xs)} successful run(s) of {len(deaths)} (min {min(xs):.2f}, max {max(xs):.2f})")
        for run, err in sorted(errors.items()):
            short = err if len(err) < 220 else err[:220] + " ..."
            print(f"\nrun {run} failed: `{short}`")


if __name__ == "__main__":
    main()
