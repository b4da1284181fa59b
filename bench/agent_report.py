#!/usr/bin/env python3
"""bench/agent_report.py -- statistics for bench/agent.sh. Standard library only.

    agent_report.py RAW.jsonl OUT.json        summary JSON to OUT.json, Markdown report on stdout
    agent_report.py --strace FILE             one traced sync (strace -f -ttt -T) -> JSON on stdout
    agent_report.py --fleet DIR N MODE VER    one fleet phase's files -> summary JSON on stdout
"""

import collections
import glob
import json
import math
import os
import re
import sys


# Shared statistics of the build-server benchmark (same directory).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import median, p90  # noqa: E402


def stats(xs):
    return {"n": len(xs), "median": median(xs), "min": min(xs, default=None), "max": max(xs, default=None)}


def fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def ms(x, digits=1):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:.{digits}f}"


# ------------------------------------------------------------------ --strace
LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
DUR = re.compile(r"<(\d+\.\d+)>$")


def parse_strace(path):
    fsync_n = fsync_s = 0
    renames = 0
    first = last = None
    depmod_pid = depmod_start = depmod_end = None
    main_pid = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line.rstrip("\n"))
            if not m:
                continue
            pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if first is None:
                first, main_pid = ts, pid
            d = DUR.search(rest)
            if re.match(r"(fsync|fdatasync)\(", rest) or re.match(r"<\.\.\. (fsync|fdatasync) resumed>", rest):
                if d:
                    fsync_n += 1
                    fsync_s += float(d.group(1))
            if re.match(r"rename(at2)?\(", rest) and d:
                renames += 1
            if rest.startswith("execve(") and "depmod" in rest.split(",")[0]:
                depmod_pid, depmod_start = pid, ts
            if rest.startswith("+++ exited") or rest.startswith("+++ killed"):
                if pid == depmod_pid:
                    depmod_end = ts
                if pid == main_pid:
                    last = ts
    out = {"fsync_n": fsync_n, "fsync_seconds": fsync_s, "renames": renames,
           "span_traced": (last - first) if first is not None and last is not None else None,
           "depmod_traced": (depmod_end - depmod_start) if depmod_start and depmod_end else None}
    return out


# ------------------------------------------------------------------ --fleet
def fleet_summary(base, n, mode, ver):
    launch = json.load(open(os.path.join(base, "launch.json")))
    t0 = launch["t0"]
    agents = launch["agents"]
    ends = [a["end"] for a in agents]
    rcs = collections.Counter(str(a["rc"]) for a in agents)
    cpu = [a["user"] + a["sys"] for a in agents]
    events = []
    with open(os.path.join(base, "events.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                e = json.loads(line)
                events.append({"action": e.get("Action") or e.get("status"), "id": e.get("id", "")[:12],
                               "t": e["timeNano"] / 1e9 - t0})
    creates = [e for e in events if e["action"] == "create"]
    destroys = [e for e in events if e["action"] == "destroy"]
    records = [json.loads(line) for line in open(os.path.join(base, "records.jsonl")) if line.strip()]
    ran = [r for r in records
           if r["build"]["state"] == "succeeded" and not r["cached"]
           and r.get("artifact") and r["artifact"]["build_id"] == r["build"]["id"]]
    manifest = json.load(open(os.path.join(base, "manifest.json")))
    ko_sha = manifest["files"][0]["sha256"]
    shas = [line.strip() for line in open(os.path.join(base, "sha256.txt")) if line.strip()]
    present = [s for s in shas if s != "missing"]
    mentioned, waited, errors = set(), 0, 0
    for path in glob.glob(os.path.join(base, "agent-*", "stderr")):
        text = open(path, encoding="utf-8", errors="replace").read()
        ids = re.findall(r"building on the server \(build ([0-9a-f]+),", text)
        mentioned.update(ids)
        waited += bool(ids)
        errors += sum(1 for line in text.splitlines() if line.startswith("kmodforge-agent:"))
    build_end = max((e["t"] for e in destroys), default=None)
    out = {
        "mode": mode, "n": n, "version": ver,
        "wall": launch["wall"], "killed_after_timeout": launch["killed_after_timeout"],
        "first_exit": min(ends), "median_exit": median(ends), "p90_exit": p90(ends), "last_exit": max(ends),
        "exit_codes": dict(rcs),
        "agents_cpu": sum(cpu), "agents_cpu_median": median(cpu),
        "agents_user": sum(a["user"] for a in agents), "agents_sys": sum(a["sys"] for a in agents),
        "agent_maxrss_kib": max(a["maxrss_kib"] for a in agents),
        "server_cpu": launch["server_cpu"], "server_utime": launch["server_utime"],
        "server_stime": launch["server_stime"], "server_vmhwm_kib": launch["server_vmhwm_kib"],
        "server_vmhwm_kib_before": launch["server_vmhwm_kib_before"],
        "server_vmrss_kib_after": launch["server_vmrss_kib_after"], "machine_cpu": launch["machine_cpu"],
        "build_records": len(records), "builds_ran": len(ran),
        "build_ids_seen_by_agents": sorted(mentioned), "agents_that_waited_for_a_build": waited,
        "agent_error_lines": errors,
        "build_seconds": ran[0]["build"]["seconds"] if ran else None,
        "container_creates": len(creates), "container_events": events,
        "container_create_at": min((e["t"] for e in creates), default=None),
        "container_destroy_at": build_end,
        "first_exit_after_destroy": (min(ends) - build_end) if build_end is not None else None,
        "last_exit_after_destroy": (max(ends) - build_end) if build_end is not None else None,
        "distinct_sha256": len(set(present)), "missing_ko": len(shas) - len(present),
        "sha256": sorted(set(present)), "sha256_matches_manifest": set(present) == {ko_sha},
        "agents": agents,
    }
    return out


# ------------------------------------------------------------------ report
def main(raw_path, out_path):
    recs = [json.loads(line) for line in open(raw_path, encoding="utf-8") if line.strip()]
    facts = next(r for r in recs if r["kind"] == "facts")
    fdkms = next((r for r in recs if r["kind"] == "facts_dkms"), None)
    notes = [r for r in recs if r["kind"] == "note"]

    def timed(kind):
        return [r for r in recs if r["kind"] == kind and not str(r.get("run", "")).startswith("warmup")]

    single = {}
    for kind in ("sync", "noop_sync", "noop_sync_nocerts", "depmod_root", "dkms_install", "depmod_host"):
        rs = timed(kind)
        if rs:
            single[kind] = {"wall": stats([r["wall"] for r in rs]),
                            "cpu": stats([r["user"] + r["sys"] for r in rs])}
    if "sync" in single and "dkms_install" in single:
        single["ratio_dkms_over_sync"] = single["dkms_install"]["wall"]["median"] / single["sync"]["wall"]["median"]
    tr = [r for r in recs if r["kind"] == "sync_trace"]
    if tr:
        single["trace"] = {k: median([r[k] for r in tr if r.get(k) is not None])
                           for k in ("fsync_n", "fsync_seconds", "renames", "depmod_traced", "span_traced")}
    mg = [r["seconds"] for r in recs if r["kind"] == "manifest_get"]
    if mg:
        single["manifest_get_curl"] = stats(mg)
    first = next((r for r in recs if r["kind"] == "first_sync"), None)
    files = next((r for r in recs if r["kind"] == "single_files"), None)
    fleets = [r for r in recs if r["kind"] == "fleet"]

    summary = {"single": single, "first_sync": first, "fleet": [
        {k: v for k, v in f.items() if k not in ("agents", "container_events", "kind")} for f in fleets]}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"facts": facts, "facts_dkms": fdkms, "summary": summary, "records": recs}, f, indent=1)
        f.write("\n")
    markdown(facts, fdkms, notes, single, first, files, fleets)


def markdown(facts, fdkms, notes, single, first, files, fleets):
    p = print
    p("## kmodforge-agent benchmarks")
    p()
    p(f"- date: {facts['date']}; git {facts['git']}")
    p(f"- machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory']} RAM, host kernel "
      f"{facts['host_kernel']}, Docker {facts['docker']}; temp dirs on {facts['tmp_fs']}; {facts['depmod_version']}; "
      f"{facts.get('ca_certs', '?')} certificates in the system CA bundle")
    p(f"- command: `{facts['command']}` (kernel {facts['kernel']}; {facts['warmup']} untimed warm-up round)")
    if fdkms:
        p(f"- DKMS: {fdkms['dkms_version']}, host compiler {fdkms['host_gcc']}; /lib/modules on "
          f"{fdkms['lib_modules_fs']}; kernel image installed: {'yes' if fdkms['kernel_image_installed'] else 'no'}, "
          f"System.map: {'yes' if fdkms['system_map'] else 'no'}")
    for n in notes:
        if n.get("what") == "created_empty_modules_dep":
            p(f"- created empty `modules.dep`, `modules.order`, `modules.builtin` in {n['path']} (no kernel image "
              "installed), so both sides run depmod over the same one-module tree; removed at the end")
        elif n.get("what") == "apt_installed":
            p(f"- installed {n['packages']} with apt-get ({fmt(n['seconds'], 0)} s, untimed)")
        elif n.get("what") == "waited_for_foreign_jobs":
            p(f"- **not a quiet machine**: waited {n['seconds']} s for another server's job containers")
    p()
    if single:
        p(f"### (1) One already-built module, one kernel, loopback, depmod included ({single['sync']['wall']['n']} "
          "interleaved runs, milliseconds)")
        p()
        p("| command | median | min-max | CPU user+sys (median) |")
        p("|---|---|---|---|")
        rows = [
            ("sync", "`kmodforge-agent sync --kernel KREL` (manifest, download, verify, journaled install, depmod)"),
            ("dkms_install", "`dkms install -m kmf-hello -v 1.0 -k KREL` (already built)"),
            ("noop_sync", "`kmodforge-agent sync` with the module already installed (no-op)"),
            ("noop_sync_nocerts", "the same no-op with a one-certificate CA store (`SSL_CERT_FILE`, empty `SSL_CERT_DIR`)"),
            ("depmod_root", "`depmod -a -b ROOT KREL` alone (agent's tree, one module)"),
            ("depmod_host", "`depmod -a KREL` alone (host tree after `dkms install`)"),
        ]
        for key, label in rows:
            if key in single:
                w, c = single[key]["wall"], single[key]["cpu"]
                p(f"| {label} | **{ms(w['median'])}** | {ms(w['min'])}-{ms(w['max'])} | {ms(c['median'])} |")
        if "ratio_dkms_over_sync" in single:
            p()
            p(f"`dkms install` / agent sync (medians): **{single['ratio_dkms_over_sync']:.1f}x**.")
        if "trace" in single or "manifest_get_curl" in single:
            t = single.get("trace", {})
            p()
            p("Inside a sync: " + "; ".join(x for x in [
                f"{t['fsync_n']:.0f} fsyncs taking {ms(t['fsync_seconds'])} ms together (strace -T, median of "
                f"the traced runs)" if t else None,
                f"{t['renames']:.0f} renames" if t else None,
                f"manifest `GET` alone {ms(single['manifest_get_curl']['median'], 2)} ms (curl)"
                if "manifest_get_curl" in single else None,
            ] if x) + ".")
        if first:
            p()
            p(f"The untimed first sync (server build of the module, the agent polling it) took {fmt(first['wall'], 2)} s.")
        if files:
            p(f"Installed `.ko`: {files['agent_ko_bytes']} bytes from kmodforge (stripped), "
              f"{files['dkms_ko_bytes']} bytes from DKMS (signed with DKMS's MOK key).")
        p()
    if fleets:
        p("### (2) Fleet: N agents released at once, `sync --kernel KREL` of a version nothing has built")
        p()
        p("Seconds from the release of the agents; a fresh server per row. \"builds ran\": build records of the "
          "version / records that really built (succeeded, artifact built by that record) / container create events.")
        p()
        p("| mode | agents | builds ran | exit codes | same .ko sha256 | build container (create → destroy) "
          "| first / median / last agent exit | server CPU | server peak RSS | agents' CPU (sum) | machine CPU |")
        p("|---|---|---|---|---|---|---|---|---|---|---|")
        for f in fleets:
            codes = ", ".join(f"{k}: {v}" for k, v in sorted(f["exit_codes"].items()))
            same = ("yes" if f["distinct_sha256"] == 1 and f["sha256_matches_manifest"] and not f["missing_ko"]
                    else f"NO ({f['distinct_sha256']} distinct, {f['missing_ko']} missing)")
            cont = (f"{fmt(f['container_create_at'], 2)} → {fmt(f['container_destroy_at'], 2)}"
                    if f["container_create_at"] is not None else "n/a")
            label = "`sync`" if f["mode"] == "poll" else "`sync --verbose`"
            p(f"| {label} | {f['n']} | {f['build_records']} / {f['builds_ran']} / {f['container_creates']} | {codes} "
              f"| {same} | {cont} | {fmt(f['first_exit'], 2)} / {fmt(f['median_exit'], 2)} / "
              f"**{fmt(f['last_exit'], 2)}** | {fmt(f['server_cpu'], 2)} s | "
              f"{f['server_vmhwm_kib'] / 1024:.1f} MiB | {fmt(f['agents_cpu'], 2)} s | {fmt(f['machine_cpu'], 1)} s |")
        p()
        p("| mode | agents | server build record `seconds` | last exit − container destroy | agents that waited "
          "on the build | agent error lines | agent peak RSS | server RSS before → peak |")
        p("|---|---|---|---|---|---|---|---|")
        for f in fleets:
            label = "`sync`" if f["mode"] == "poll" else "`sync --verbose`"
            p(f"| {label} | {f['n']} | {fmt(f['build_seconds'], 2)} | {fmt(f['last_exit_after_destroy'], 2)} "
              f"| {f['agents_that_waited_for_a_build']} | {f['agent_error_lines']} | {f['agent_maxrss_kib'] / 1024:.1f} MiB "
              f"| {f['server_vmhwm_kib_before'] / 1024:.1f} → {f['server_vmhwm_kib'] / 1024:.1f} MiB |")
        p()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--strace":
        json.dump(parse_strace(sys.argv[2]), sys.stdout)
        print()
    elif len(sys.argv) == 6 and sys.argv[1] == "--fleet":
        json.dump(fleet_summary(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]), sys.stdout)
        print()
    elif len(sys.argv) == 3:
        main(sys.argv[1], sys.argv[2])
    else:
        sys.exit(__doc__)
