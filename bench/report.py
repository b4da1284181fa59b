#!/usr/bin/env python3
"""bench/report.py RAW.jsonl OUT.json -- statistics for bench/run.sh.

Reads the raw records bench/run.sh wrote (one JSON object a line), adds the per-phase breakdown of
each kmodforge build from its client-stamped log, writes everything to OUT.json and prints the
Markdown report on stdout. Standard library only.
"""

import json
import math
import re
import statistics
import sys

# Log lines that mark the end of a phase, in pipeline order (server/src/builds/run.rs, images/builder/kmf).
MARKS = [
    ("unpacked", re.compile(r"^kmf: unpacked ")),
    ("planned", re.compile(r"^\[kmodforge\] make command: ")),
    ("make_start", re.compile(r"^# command: ")),
    ("make_end", re.compile(r"^# exit code: ")),
    ("installed", re.compile(r"^kmf: .*\.ko -> module/")),
    ("stored", re.compile(r"^\[kmodforge\] \S+ \d+ bytes sha256 ")),
    ("removed", re.compile(r"^\[kmodforge\] build succeeded")),
]
PHASES = [
    ("t0", "unpacked", "submit, container create + start, source unpack (`kmf prepare`)"),
    ("unpacked", "planned", "dkms.conf evaluation (rest of `kmf prepare`) + plan + cache lookups"),
    ("planned", "make_start", "`kmf build-collect` exec start, fresh build dir (`cp -a` of the source)"),
    ("make_start", "make_end", "make (the module's own make command)"),
    ("make_end", "installed", "check, copy and `strip -g` the .ko"),
    ("installed", "stored", "module tar out (end of `kmf build-collect`) + blob/record store"),
    ("stored", "removed", "container removal (`docker rm -f`)"),
    ("removed", "t_final", "log/record persisted, client sees the final state"),
]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p90(xs):
    """Nearest-rank 90th percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


# Durations the server writes into the log itself (optional: older servers do not).
SERVER_NOTES = [
    (re.compile(r"^\[kmodforge\] sandbox started in ([\d.]+) s, source unpacked"
                r"(?: and dkms\.conf evaluated)? in ([\d.]+) s"),
     ("server_create", "server_prepare")),
    (re.compile(r"^\[kmodforge\] build step took ([\d.]+) s"), ("server_build_step",)),
]
SERVER_NOTE_LABELS = [
    ("server_create", "container create + start"),
    ("server_prepare", "`kmf prepare` exec (unpack + dkms.conf evaluation)"),
    ("server_build_step", "`kmf build-collect` exec"),
]


def server_notes(log_path):
    out = {}
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                text = line.rstrip("\n").partition("\t")[2]
                for rx, names in SERVER_NOTES:
                    m = rx.search(text)
                    if m:
                        out.update({n: float(v) for n, v in zip(names, m.groups())})
    except OSError:
        pass
    return out


def phase_marks(log_path, t0, t_final):
    marks = {"t0": t0, "t_final": t_final}
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                stamp, _, text = line.rstrip("\n").partition("\t")
                for name, rx in MARKS:
                    # the last matching line wins (several modules: the last one copied/stored)
                    if rx.search(text):
                        marks[name] = float(stamp)
    except OSError:
        pass
    return marks


def phases_of(rec):
    marks = phase_marks(rec["log"], rec["t0"], rec["t_final"])
    out = {}
    for start, end, _ in PHASES:
        if start in marks and end in marks:
            out[f"{start}->{end}"] = round(marks[end] - marks[start], 6)
    return out


def fmt(x, digits=2):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def main():
    raw_path, out_path = sys.argv[1], sys.argv[2]
    recs = [json.loads(line) for line in open(raw_path, encoding="utf-8") if line.strip()]
    facts = next(r for r in recs if r["kind"] == "facts")
    sources = [r for r in recs if r["kind"] == "source"]
    kmf = [r for r in recs if r["kind"] == "kmodforge"]
    mk = [r for r in recs if r["kind"] == "make"]
    hits = [r for r in recs if r["kind"] == "hit"]
    images = [r for r in recs if r["kind"] == "image"]
    prepare = next((r for r in recs if r["kind"] == "prepare"), None)
    for r in kmf:
        r["phases"] = phases_of(r)
        r["server_notes"] = server_notes(r["log"])
    failed = [r for r in recs if r["kind"] == "failed_attempt"]

    def timed(rs, pkg):
        return [r for r in rs if r["package"] == pkg and not str(r["run"]).startswith("warmup")]

    summary = {"cold": {}, "hits": {}, "image": {}}
    for s in sources:
        pkg = s["package"]
        k, m = timed(kmf, pkg), timed(mk, pkg)
        kw, mw = [r["wall"] for r in k], [r["wall"] for r in m]
        entry = {
            "runs": len(k),
            "kmodforge_wall": {"median": median(kw), "min": min(kw, default=None), "max": max(kw, default=None)},
            "kmodforge_server_seconds": median([r["server_seconds"] for r in k]),
            "kmodforge_build_seconds": median([r["build_seconds"] for r in k]),
            "make_wall": {"median": median(mw), "min": min(mw, default=None), "max": max(mw, default=None)},
            "make_inner": {
                "real": median([r["inner_real"] for r in m]),
                "user": median([r["inner_user"] for r in m]),
                "sys": median([r["inner_sys"] for r in m]),
            },
            "plain_container": {
                "docker_run": median([r["docker_run"] for r in m]),
                "copy_in": median([r["copy_in"] for r in m]),
                "docker_rm": median([r["docker_rm"] for r in m]),
                "exec_noop": median([r["exec_noop"] for r in m if "exec_noop" in r]),
            },
            "phases": {
                f"{a}->{b}": median([r["phases"][f"{a}->{b}"] for r in k if f"{a}->{b}" in r["phases"]])
                for a, b, _ in PHASES
            },
            "server_notes": {
                n: median([r["server_notes"][n] for r in k if n in r["server_notes"]])
                for n, _ in SERVER_NOTE_LABELS if any(n in r["server_notes"] for r in k)
            },
            "failed_attempts": len([r for r in failed if r["package"] == pkg]),
            "make_command": k[-1]["make"] if k else None,
        }
        entry["overhead_seconds"] = entry["kmodforge_wall"]["median"] - entry["make_wall"]["median"]
        entry["ratio"] = (entry["kmodforge_wall"]["median"] / entry["make_wall"]["median"]
                          if entry["make_wall"]["median"] else float("nan"))
        summary["cold"][pkg] = entry
        hs = {}
        for what in ("post_cached", "manifest", "download"):
            ms = [r["ms"] for r in hits if r["package"] == pkg and r["what"] == what]
            if ms:
                hs[what] = {"n": len(ms), "median_ms": median(ms), "p90_ms": p90(ms),
                            "min_ms": min(ms), "max_ms": max(ms)}
        dl = [r for r in hits if r["package"] == pkg and r["what"] == "download"]
        if dl:
            hs["download"]["bytes"] = dl[-1]["bytes"]
            hs["download"]["file"] = dl[-1]["file"]
        summary["hits"][pkg] = hs
    if images:
        secs = [r["seconds"] for r in images]
        summary["image"] = {"kernel": images[0]["kernel"], "runs": len(secs), "median": median(secs),
                            "min": min(secs), "max": max(secs), "shared_layers": images[-1]["shared_layers"],
                            "toolchain_layers": images[-1].get("toolchain_layers"),
                            "layers": images[-1]["layers"], "new_bytes": images[-1].get("new_bytes")}

    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"facts": facts, "summary": summary, "records": recs}, f, indent=1)
        f.write("\n")
    print_markdown(facts, sources, summary, prepare, [r for r in recs if r["kind"] == "note"])


def print_markdown(facts, sources, summary, prepare, notes):
    p = print
    p("## kmodforge benchmarks")
    p()
    p(f"- date: {facts['date']}; git {facts['git']}")
    p(f"- machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, "
      f"host kernel {facts['host_kernel']}, Docker {facts['docker']}")
    p(f"- command: `{facts['command']}` (make -j{facts['jobs']}, container --cpus {facts['jobs']}; "
      f"{facts['warmup']} untimed warm-up pair per source)")
    if facts.get("kmodforge_env", "").strip():
        p(f"- environment: `{facts['kmodforge_env'].strip()}`")
    if prepare:
        p(f"- builder image for {prepare['kernel']}: `{prepare['image_id'][:19]}`")
    waited = sum(r["seconds"] for r in notes if r.get("what") == "waited_for_foreign_jobs")
    if waited:
        p(f"- **not a quiet machine**: waited {waited} s in total for another kmodforge server's job containers")
    p()
    cold = summary["cold"]
    by = {s["package"]: s for s in sources}
    if cold:
        p(f"### Cold build, kernel {facts['kernel']} ({facts['runs']} interleaved runs each; seconds)")
        p()
        p("| source | kmodforge median (min-max) | server `build.seconds` | plain make median (min-max) "
          "| overhead | ratio |")
        p("|---|---|---|---|---|---|")
        for pkg, e in cold.items():
            s = by[pkg]
            kw, mw = e["kmodforge_wall"], e["make_wall"]
            p(f"| {s['name']} {s['version']} ({s['c_files']} .c) | {fmt(kw['median'])} "
              f"({fmt(kw['min'])}-{fmt(kw['max'])}) | {fmt(e['kmodforge_server_seconds'])} "
              f"| {fmt(mw['median'])} ({fmt(mw['min'])}-{fmt(mw['max'])}) "
              f"| {e['overhead_seconds']:+.2f} | {fmt(e['ratio'])}x |")
        p()
        p("kmodforge: client wall time from `POST /v1/builds` to the final state (log followed, then one GET). "
          "Plain make: host wall time of `docker exec` running the same make command in an already running "
          "container of the same image with the same sandbox options, source already copied in.")
        p()
        p("#### Where the kmodforge time goes (medians, seconds, from client-stamped build-log lines)")
        p()
        p("| phase | " + " | ".join(by[pkg]["name"] for pkg in cold) + " |")
        p("|---|" + "---|" * len(cold))
        for a, b, label in PHASES:
            p(f"| {label} | " + " | ".join(fmt(cold[pkg]["phases"][f"{a}->{b}"]) for pkg in cold) + " |")
        p("| **total (client wall)** | " + " | ".join(fmt(cold[pkg]["kmodforge_wall"]["median"]) for pkg in cold) + " |")
        p("| server `artifact.build_seconds` (`kmf build-collect` exec) | "
          + " | ".join(fmt(cold[pkg]["kmodforge_build_seconds"]) for pkg in cold) + " |")
        for n, label in SERVER_NOTE_LABELS:
            if any(n in cold[pkg]["server_notes"] for pkg in cold):
                p(f"| server log note: {label} | "
                  + " | ".join(fmt(cold[pkg]["server_notes"].get(n)) for pkg in cold) + " |")
        p()
        p("Phase boundaries are the client's clock when each log line arrived; lines the server wrote "
          "before the log follower connected share one stamp, so the first two rows can trade time. "
          "The server's own notes split them exactly.")
        p()
        nfail = sum(e["failed_attempts"] for e in cold.values())
        if nfail:
            p(f"**{nfail} kmodforge build attempt(s) failed and were retried** (see `failed_attempt` in the "
              "JSON; usually another kmodforge server on the same engine sweeping our job container).")
            p()
        p("#### Plain make, for comparison (medians, seconds)")
        p()
        p("| step | " + " | ".join(by[pkg]["name"] for pkg in cold) + " |")
        p("|---|" + "---|" * len(cold))
        rows = [
            ("`docker run -d` (not in the make time)", lambda e: e["plain_container"]["docker_run"]),
            ("copy source in (not in the make time)", lambda e: e["plain_container"]["copy_in"]),
            ("**`docker exec` make, host clock**", lambda e: e["make_wall"]["median"]),
            ("make inside the container: real", lambda e: e["make_inner"]["real"]),
            ("make inside the container: user + sys CPU", lambda e: e["make_inner"]["user"] + e["make_inner"]["sys"]),
            ("`docker rm -f` (not in the make time)", lambda e: e["plain_container"]["docker_rm"]),
            ("one no-op `docker exec ... true` round trip", lambda e: e["plain_container"]["exec_noop"]),
            ("run + copy + exec make + rm (what a sandboxed by-hand build costs)",
             lambda e: sum(e["plain_container"][k] for k in ("docker_run", "copy_in", "docker_rm"))
             + e["make_wall"]["median"]),
        ]
        for label, get in rows:
            p(f"| {label} | " + " | ".join(fmt(get(cold[pkg])) for pkg in cold) + " |")
        p()
        for pkg, e in cold.items():
            p(f"- make command ({by[pkg]['name']}): `{e['make_command']}`")
        p()
    hits = {k: v for k, v in summary["hits"].items() if v}
    if hits:
        n = next(iter(hits.values()))["post_cached"]["n"]
        p(f"### Cache hit ({n} requests each; milliseconds, curl `time_total`)")
        p()
        p("| source | `POST /v1/builds` (200 cached) median / p90 | manifest median / p90 | .ko download median / p90 |")
        p("|---|---|---|---|")
        for pkg, h in hits.items():
            d = h["download"]
            p(f"| {by[pkg]['name']} | {fmt(h['post_cached']['median_ms'], 1)} / {fmt(h['post_cached']['p90_ms'], 1)} "
              f"| {fmt(h['manifest']['median_ms'], 1)} / {fmt(h['manifest']['p90_ms'], 1)} "
              f"| {fmt(d['median_ms'], 1)} / {fmt(d['p90_ms'], 1)} ({d['file']}, {d['bytes'] / 1024:.0f} KiB) |")
        p()
    im = summary["image"]
    if im:
        p("### Builder image for a new kernel, shared toolchain layers present")
        p()
        p("| kernel | runs | `PUT /v1/kernels/{krel}` seconds median (min-max) | layers shared with the "
          f"{facts['kernel']} image (toolchain layers) | new layer bytes |")
        p("|---|---|---|---|---|")
        nb = im.get("new_bytes")
        p(f"| {im['kernel']} | {im['runs']} | {fmt(im['median'], 1)} ({fmt(im['min'], 1)}-{fmt(im['max'], 1)}) "
          f"| {im['shared_layers']} of {im['layers']} ({im.get('toolchain_layers')}) "
          f"| {'n/a' if nb is None else f'{nb / 1e6:.1f} MB'} |")
        p()
        p("The image's own part: `apt-get update` and download + install of linux-headers-KREL (and the "
          "kernel's compiler if the toolchain lacks it) from the Debian mirror, so the network is in this number.")
        if im.get("toolchain_layers") is not None and im["shared_layers"] < im["toolchain_layers"]:
            p()
            p("**Not all toolchain layers were reused**: images/builder changed between the two image builds, "
              "so this number includes rebuilding part of the shared layers.")
        p()


if __name__ == "__main__":
    main()
