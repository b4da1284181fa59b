#!/usr/bin/env python3
"""compat/bootcheck.py -- boot-check every module of a compatibility run in its own kernel.

    compat/bootcheck.py --server http://127.0.0.1:8080 --token-file /var/lib/kmodforge/admin.token \
        [--results docs/compatibility.json]

After `compat/run.py` has built the corpus on a kmodforge server, this asks the same server for each
(package, kernel) that built there again, now with `"boot_check": true`. The request hits the artifact cache,
so nothing is rebuilt: the server boots Debian's `linux-image-<kernel>` under qemu, loads the package's modules
in dependency order and records the outcome in the manifest (README, "Boot-verified artifacts"). This script
collects those records and writes docs/BOOTCHECK.md (a row per package and kernel, a summary) and
docs/bootcheck.json (the raw records).

Every request carries `Authorization: Bearer <token>` with the token read from `--token-file FILE` (default:
$KMODFORGE_TOKEN_FILE; without either, no header is sent). `PUT /v1/kernels/{krel}?boot_check=true` needs scope
admin, so in practice this is an admin token, e.g. the server's `<data-dir>/admin.token`. The token is never printed.

A module that fails to load is sorted by the kernel's own answer:

  no device     insmod returned ENODEV/ENXIO/EIO-like "no such device" (rc 19, 6): the driver found no
                hardware it drives. Expected in a virtual machine for a driver of a specific device; the
                build itself is fine, and only the user can tell it from a broken one.
  symbols       "Unknown symbol" or "disagrees about version of symbol": the module does not fit this kernel.
  crashed       an Oops, BUG or panic during init, or the guest never completed (timeout).
  other         any other error code.

Exit status: 0 when every check ran (whatever its outcome); 1 when a check could not run (infrastructure,
harness error); 2 on a setup error (including no token, or one the server refuses). Standard library only;
needs no root.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as compat  # noqa: E402  (compat/run.py: Server, helpers)

REPO = compat.REPO
NO_DEVICE_RC = {19, 6}  # ENODEV, ENXIO
CLASS_ORDER = ["loaded", "no device", "symbols", "crashed", "other"]


def classify(module, check):
    """One of CLASS_ORDER for a module of a check record."""
    if module.get("loaded"):
        return "loaded"
    text = " ".join([module.get("error") or ""] + (module.get("messages") or []))
    if "Unknown symbol" in text or "disagrees about version of symbol" in text:
        return "symbols"
    if check.get("timed_out") or not check.get("completed") or any(
            w in text for w in ("Oops", "kernel BUG", "Kernel panic", "general protection fault")):
        return "crashed"
    if module.get("rc") in NO_DEVICE_RC or "No such device" in text:
        return "no device"
    return "other"


def check_one(srv, row, timeout, poll):
    n, v, k = row["name"], row["version"], row["kernel"]
    out = {"package": row["package"], "name": n, "version": v, "kernel": k, "state": None, "cached": None,
           "wall_seconds": None, "check": None, "failure": None, "error": None}
    t0 = time.monotonic()
    body = {"name": n, "version": v, "kernel": k, "arch": compat.ARCH, "boot_check": True}
    st, parsed, raw = srv.json("POST", "/v1/builds", body)
    if st not in (200, 202) or not isinstance(parsed, dict) or "build" not in parsed:
        out["state"] = "error"
        out["error"] = f"POST /v1/builds: {compat.error_text(st, parsed, raw)}"
        return out
    resp = parsed
    bid = resp["build"]["id"]
    while resp["build"]["state"] in ("queued", "running"):
        if time.monotonic() - t0 > timeout:
            out["state"] = "error"
            out["error"] = f"build {bid} not final after {timeout} s (client gave up)"
            return out
        time.sleep(poll)
        st, parsed, raw = srv.json("GET", f"/v1/builds/{compat.q(bid)}")
        if st != 200 or not isinstance(parsed, dict):
            out["state"] = "error"
            out["error"] = f"GET /v1/builds/{bid}: {compat.error_text(st, parsed, raw)}"
            return out
        resp = parsed
    out["wall_seconds"] = round(time.monotonic() - t0, 2)
    out["state"] = resp["build"]["state"]
    out["cached"] = bool(resp.get("cached"))
    out["build_id"] = bid
    f = resp["build"].get("failure")
    if f:
        out["failure"] = {"kind": f.get("kind"), "message": f.get("message")}
    check = (resp.get("artifact") or {}).get("boot_check")
    if check:
        check = dict(check)
        if check.get("passed"):
            check.pop("console_tail", None)  # a passed guest's console says nothing new
        for m in check.get("modules") or []:
            m["class"] = classify(m, check)
        out["check"] = check
    return out


def outcome(r):
    """A row's one-word outcome: passed, failed (with the worst module class), or error."""
    c = r.get("check")
    if r["state"] == "error" or c is None:
        return "error"
    if c.get("passed"):
        return "passed"
    # The first new module that did not load, in load order: the later ones often fail because of it
    # (tp-smapi: thinkpad_ec finds no device, then hdaps and tp_smapi miss its symbols).
    for m in c.get("modules") or []:
        if m.get("new") and m["class"] != "loaded":
            return f"failed: {m['class']}"
    return "failed: crashed" if c.get("timed_out") or not c.get("completed") else "failed: other"


def module_cell(check):
    mods = [m for m in check.get("modules") or [] if m.get("new")]
    loaded = sum(1 for m in mods if m.get("loaded"))
    return f"{loaded}/{len(mods)}"


NOISE = ("taints kernel", "signature and/or required key missing")


def first_message(m):
    """The module's own explanation: its last message but the taint notices, else insmod's error."""
    own = [x for x in m.get("messages") or []
           if x.startswith(m["name"] + ": ") and not any(n in x for n in NOISE)]
    return own[-1] if own else (m.get("error") or "")


def reused(r, started):
    """The check record predates this run: a check made earlier (the server never repeats one)."""
    at = (r.get("check") or {}).get("checked_at") or ""
    return bool(at) and at < started


def write_report(path, json_path, args, rows, kernels, command, started):
    counts = {}
    for r in rows:
        counts[outcome(r)] = counts.get(outcome(r), 0) + 1
    modules = {}
    for r in rows:
        for m in ((r.get("check") or {}).get("modules") or []):
            if m.get("new"):
                modules[m["class"]] = modules.get(m["class"], 0) + 1
    secs = sorted(r["check"]["seconds"] for r in rows if r.get("check") and r["check"].get("seconds"))
    lines = ["# Boot checks of the DKMS corpus", "",
             f"Generated by `{command}` on {compat.now_utc()}, after `compat/run.py` built the corpus on the same "
             "server (docs/COMPATIBILITY.md). Each (package, kernel) that built was requested again with "
             "`\"boot_check\": true`: a cache hit, so the figures below are the checks alone. The server booted "
             "Debian's own `linux-image-<kernel>` under qemu (TCG, no KVM) and loaded the package's modules in "
             "dependency order (README, \"Boot-verified artifacts\"). Raw records: "
             f"`{json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}`.", "",
             "## Summary", "",
             "| outcome | package × kernel |", "|---|---|"]
    for k in sorted(counts, key=lambda o: (o != "passed", o)):
        lines.append(f"| {k} | {counts[k]} |")
    lines += ["", "| module outcome | modules |", "|---|---|"]
    for cl in CLASS_ORDER:
        if cl in modules:
            lines.append(f"| {cl} | {modules[cl]} |")
    earlier = sum(1 for r in rows if reused(r, started))
    if earlier:
        lines += ["", f"{earlier} of the {len(rows)} checks were recorded before this run (the server checks an "
                      "artifact once and answers later requests from the record); the table marks them."]
    if secs:
        med = secs[len(secs) // 2]
        lines += ["", f"Check wall time (server side) over {len(secs)} checks: median {med:.2f} s, "
                      f"min {secs[0]:.2f} s, max {secs[-1]:.2f} s."]
    lines += ["", "Module outcomes: **loaded** (init returned 0, `/sys/module/<name>` is `live`); **no device** "
              "(init returned ENODEV/ENXIO: the driver found none of its hardware in the virtual machine, "
              "which is expected of a device driver and says nothing against the build); **symbols** "
              "(`Unknown symbol`, `disagrees about version of symbol`: the module does not fit the kernel); "
              "**crashed** (Oops, BUG or panic at init, or the guest did not complete); **other**.", "",
              "## Per package and kernel", "",
              "| package | kernel | outcome | modules loaded (new) | check s | guest s | initramfs | not loaded |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.get("check") or {}
        failed = []
        for m in c.get("modules") or []:
            if m.get("new") and not m.get("loaded"):
                failed.append(f"`{m['name']}` {m['class']}: rc {m.get('rc')}, "
                              f"{compat.md_escape(compat.shorten(first_message(m), 120))}")
        if r["state"] == "error":
            failed.append(compat.md_escape(r.get("error") or ""))
        elif c and not c.get("passed") and not failed:
            failed.append(compat.md_escape(compat.shorten(c.get("reason") or "", 160)))
        if reused(r, started):
            failed.append(f"(check recorded earlier, {c.get('checked_at')})")
        initramfs = f"{c['initramfs_bytes'] / 1e6:.1f} MB" if c.get("initramfs_bytes") else ""
        lines.append(
            f"| {r['package']} | {r['kernel']} | {outcome(r)} | {module_cell(c) if c else ''} | "
            f"{compat.fmt_s(c.get('seconds'))} | {compat.fmt_s(c.get('boot_seconds'))} | {initramfs} | "
            f"{'<br>'.join(failed)} |")
    lines.append("")
    path.write_text("\n".join(lines))
    json_path.write_text(json.dumps({"command": command, "started": started, "kernels": kernels, "rows": rows},
                                    indent=1) + "\n")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="kmodforge server URL, the one compat/run.py built on")
    ap.add_argument("--token-file", metavar="FILE", default=os.environ.get("KMODFORGE_TOKEN_FILE") or None,
                    help="file holding an admin bearer token (e.g. <data-dir>/admin.token), sent as "
                         "'Authorization: Bearer' on every request (default: $KMODFORGE_TOKEN_FILE; neither: no "
                         "header)")
    ap.add_argument("--results", default=str(REPO / "docs" / "compatibility.json"),
                    help="compat/run.py's raw results (default %(default)s)")
    ap.add_argument("--packages", help="comma-separated subset of the packages in --results")
    ap.add_argument("--out", default=str(REPO / "docs" / "BOOTCHECK.md"), help="report (default %(default)s)")
    ap.add_argument("--json-out", help="raw records (default: bootcheck.json next to --out)")
    ap.add_argument("--timeout", type=float, default=1800, help="per request, seconds (default %(default)s)")
    ap.add_argument("--poll", type=float, default=0.2, help="poll interval, seconds (default %(default)s)")
    ap.add_argument("--report-only", metavar="JSON",
                    help="write the report again from an earlier run's bootcheck.json (no requests)")
    return ap.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    json_out = Path(args.json_out).resolve() if args.json_out else out.parent / "bootcheck.json"
    if args.report_only:
        try:
            prev = json.loads(Path(args.report_only).read_text())
            rows, started, kernels, command = prev["rows"], prev["started"], prev["kernels"], prev["command"]
        except (OSError, ValueError, KeyError) as e:
            raise compat.Fatal(f"{args.report_only}: not a bootcheck.json with rows and started ({e})")
        for r in rows:
            for m in ((r.get("check") or {}).get("modules") or []):
                m["class"] = classify(m, r["check"])
        write_report(out, json_out, args, rows, kernels, command, started)
        compat.log(f"wrote {out} and {json_out} from {args.report_only}")
        return 0
    try:
        results = json.loads(Path(args.results).read_text())
        kmf_rows = results["kmodforge"]["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise compat.Fatal(f"{args.results}: not compat/run.py results ({e})")
    wanted = set(args.packages.split(",")) if args.packages else None
    todo = [r for r in kmf_rows if r.get("state") == "succeeded" and (wanted is None or r["package"] in wanted)]
    if not todo:
        raise compat.Fatal(f"{args.results}: no succeeded kmodforge build to check")
    srv = compat.Server(args.server, args.token_file)
    kernels = sorted({r["kernel"] for r in todo})
    for k in kernels:
        compat.log(f"PUT /v1/kernels/{k}?boot_check=true (builder and verifier images) ...")
        t0 = time.monotonic()
        st, parsed, raw = srv.json("PUT", f"/v1/kernels/{compat.q(k)}?boot_check=true", timeout=7200)
        if st != 200:
            raise compat.Fatal(f"PUT /v1/kernels/{k}?boot_check=true: {compat.error_text(st, parsed, raw)}"
                               f"{srv.auth_hint(st)}")
        compat.log(f"  ready in {time.monotonic() - t0:.1f} s")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = []
    for r in todo:
        row = check_one(srv, r, args.timeout, args.poll)
        rows.append(row)
        c = row.get("check") or {}
        compat.log(f"{row['package']} {row['kernel']}: {outcome(row)}"
                   f"{' (rebuilt: not cached)' if row['cached'] is False else ''}; "
                   f"{module_cell(c) if c else '-'} loaded; check {compat.fmt_s(c.get('seconds'))} s"
                   + (f"; {row['error']}" if row.get("error") else ""))
    command = "compat/bootcheck.py " + " ".join(argv)
    write_report(out, json_out, args, rows, kernels, command.strip(), started)
    compat.log(f"wrote {out} and {json_out}")
    return 1 if any(outcome(r) == "error" for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except compat.Fatal as e:
        print(f"compat/bootcheck.py: {e}", file=sys.stderr)
        sys.exit(2)
