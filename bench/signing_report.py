#!/usr/bin/env python3
"""Summarises bench/signing.sh's results (JSON lines) as markdown.

    bench/signing_report.py RESULTS.jsonl
"""
import json
import statistics
import sys


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    print("### Module signing (in the server process; RSA 3072, sha256)\n")
    print("| module | bytes | signed bytes | runs | median ms | p90 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["what"] == "module":
            print(f"| {r['module']} | {r['bytes']} | {r['signed_bytes']} | {r['runs']} | "
                  f"{r['median_ms']:.3f} | {r['p90_ms']:.3f} |")
    for r in rows:
        if r["what"] == "sign-file":
            print(f"\nSame key and module through the kernel's `scripts/sign-file`: byte-identical: **{r['identical']}**")
    print("\n### Manifests (Ed25519)\n")
    print("| step | runs | median µs | p90 µs |")
    print("|---|---|---|---|")
    for r in rows:
        if r["what"] == "manifest":
            print(f"| server: statement + signature | {r['runs']} | {r['median_us']:.1f} | {r['p90_us']:.1f} |")
        if r["what"] == "verify":
            print(f"| agent: verify + parse + compare | {r['runs']} | {r['median_us']:.1f} | {r['p90_us']:.1f} |")
    checks = [r for r in rows if r["what"] == "bootcheck"]
    print("\n### Boot check of one module, with and without signature enforcement (seconds)\n")
    print("| config | runs | passed | boot image | median guest s | median wall s | probes refused |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for name in ("plain", "enforced"):
        rs = [r for r in checks if r["config"] == name]
        if not rs:
            continue
        boot = statistics.median(r["boot_s"] or 0 for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        med[name] = (boot, wall)
        passed = sum(1 for r in rs if r["passed"])
        probes = sorted({str(r["probes_rejected"]) for r in rs})
        print(f"| {name} | {len(rs)} | {passed}/{len(rs)} | {rs[0]['boot_image']} | {boot:.2f} | {wall:.2f} | {', '.join(probes)} |")
    if len(med) == 2:
        (pb, pw), (eb, ew) = med["plain"], med["enforced"]
        print(f"\nenforced vs plain: guest {eb / pb:.2f}x (+{eb - pb:.1f} s), wall {ew / pw:.2f}x (+{ew - pw:.1f} s)")
    for r in checks:
        if not r["passed"]:
            print(f"\nfailed check ({r['config']}): {r['reason']}")


if __name__ == "__main__":
    main()
