#!/usr/bin/env python3
"""bench/bootcheck.py -- what a boot check costs (issue 5).

    bench/bootcheck.py [--runs N] [--kernels "KREL ..."] [--packages "NAME ..."] [--keep]

For each run, kernel and package (interleaved: run 1 does every kernel and package, then run 2, ...), the
package's source is uploaded with a marker file that makes its digest new, so the build is cold, and built with
`"boot_check": true`. From the server's own records it reads: the job's wall time (`build.seconds`: sandbox,
evaluation, make, collection, then the check), the check's wall time (`boot_check.seconds`: verifier container,
staging, depmod, initramfs, qemu), the guest's time (`boot_check.boot_seconds`: qemu start to exit), the
initramfs size and the modules loaded (built + from the kernel's tree). Medians over the runs; the share is the
median of the per-run ratios check / job, both measured in the same job.

Packages: `hello` (tests/fixtures/hello, 1 module), and Debian `*-dkms` packages by name (fetched with
tests/fixtures/fetch-debian-dkms.sh): v4l2loopback-dkms (1 module + mc, videodev), ddcci-dkms (2 modules).
A warm-up build per kernel first makes the builder and verifier images (their time is reported apart).

`--many PACKAGE` (e.g. lttng-modules-dkms, 46 modules) adds the module-count end of the scale: the package is
built once per kernel with a check through the server, then its modules.tar is checked `--runs` more times by
running the verifier container directly, exactly as the server runs it (docker run of the same image, same
sandbox flags, bootcheck on stdin), since the server checks an artifact only once.

Starts its own release server (cargo build --release -p kmodforge-server) on a free port with a temp data dir,
and sends every request with the admin token that server writes to <data dir>/admin.token on its first start
(`Authorization: Bearer`; never printed). Each upload is `PUT /v1/modules/{name}/{version}?replace=true`: a
version that was built stays pinned to its source digest after the DELETE, and the marker changes the digest.
stdout: Markdown tables for docs/BENCHMARKS.md; stderr: progress; raw data: bench/results/bootcheck-<ts>.json.
"""

import argparse
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, keep):
        self.data = tempfile.mkdtemp(prefix="kmf-bench-bootcheck-")
        self.keep = keep
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMODFORGE_")}
        env.update(
            KMODFORGE_LISTEN=f"127.0.0.1:{self.port}",
            KMODFORGE_DATA_DIR=self.data,
            KMODFORGE_LOG=os.environ.get("KMODFORGE_LOG", "warn"),
        )
        self.log = open(os.path.join(self.data, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(REPO, "target/release/kmodforge-server")], env=env, stdout=self.log, stderr=self.log
        )
        for _ in range(300):
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1).read()  # the one public route
                break
            except Exception:
                time.sleep(0.1)
        else:
            self.fail("the server did not start (see %s/server.log)" % self.data)
        # The admin token the server wrote on its first start (before it listened): sent with every request.
        try:
            with open(os.path.join(self.data, "admin.token")) as f:
                self.token = f.read().strip()
        except OSError as e:
            self.fail(f"no admin token from the server ({e.strerror}: {e.filename})")
        if not self.token:
            self.fail(f"{self.data}/admin.token is empty")

    def fail(self, msg):
        """Stops the server (its data dir stays, for server.log) and exits."""
        self.proc.terminate()
        self.proc.wait()
        raise SystemExit(f"bench: {msg}")

    def request(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return req

    def call(self, method, path, body=None, ctype="application/json"):
        req = self.request(method, path, body)
        if body is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get_bytes(self, path):
        with urllib.request.urlopen(self.request("GET", path), timeout=600) as r:
            return r.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not self.keep:
            shutil.rmtree(self.data, ignore_errors=True)


def source_dir(package, work):
    if package == "hello":
        return os.path.join(REPO, "tests/fixtures/hello"), "kmf-hello", "1.0"
    out = subprocess.run(
        ["bash", os.path.join(REPO, "tests/fixtures/fetch-debian-dkms.sh"), package, os.path.join(work, "src")],
        check=True, capture_output=True, text=True,
        env=dict(os.environ, KMODFORGE_DEB_CACHE=os.path.join(REPO, "target/kmodforge-e2e/debs")),
    )
    path = out.stdout.strip()
    base = os.path.basename(path)
    name, version = base.rsplit("-", 1)
    return path, name, version


def tar_with_marker(path, marker):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(path, arcname=".")
        data = marker.encode()
        info = tarfile.TarInfo("kmf-bench-marker")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(server, name, version, kernel, tar):
    status, body = server.call("PUT", f"/v1/modules/{name}/{version}?replace=true", tar, "application/gzip")
    if status not in (200, 201):
        raise SystemExit(f"bench: PUT {name}/{version}: {status} {body}")
    req = json.dumps({"name": name, "version": version, "kernel": kernel, "boot_check": True}).encode()
    status, body = server.call("POST", "/v1/builds", req)
    if status not in (200, 202):
        raise SystemExit(f"bench: POST build: {status} {body}")
    bid = body["build"]["id"]
    while not body["build"]["state"] in ("succeeded", "failed", "not_applicable"):
        time.sleep(0.2)
        _, body = server.call("GET", f"/v1/builds/{bid}")
    if body["build"]["state"] != "succeeded":
        raise SystemExit(f"bench: build {bid} of {name}/{version} for {kernel}: {body['build']['failure']}")
    return body


def direct_check(image, kernel, tar):
    """One `bootcheck` run as the server runs it; (wall seconds, report)."""
    t0 = time.time()
    p = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", "none", "--read-only", "--user", "1000:1000",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "--tmpfs", "/tmp:rw,exec,nosuid,nodev,size=536870912,mode=1777", "--memory", "4g", "--memory-swap", "4g",
         "-e", f"KMF_KREL={kernel}", "-e", "KMF_BOOT_TIMEOUT=90", image, "/usr/local/lib/kmodforge/bootcheck"],
        input=tar, capture_output=True,
    )
    wall = time.time() - t0
    report = json.loads(p.stdout)
    if p.returncode != 0:
        raise SystemExit(f"bench: direct bootcheck failed ({p.returncode}): {report.get('reason')}")
    return wall, report


def remove(server, name, version):
    server.call("DELETE", f"/v1/modules/{name}/{version}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kernels", default="6.1.0-47-amd64 6.1.0-56-amd64")
    ap.add_argument("--packages", default="hello v4l2loopback-dkms ddcci-dkms")
    ap.add_argument("--many", default="", help="a many-module package, checked directly (see above)")
    ap.add_argument("--many-kernels", default="6.1.0-47-amd64",
                    help="kernels for --many (lttng-modules 2.13.9 does not build for 6.1.0-56)")
    ap.add_argument("--skip-matrix", action="store_true", help="only the --many part")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    kernels = args.kernels.split()
    packages = args.packages.split()

    say("building the release server")
    subprocess.run(["cargo", "build", "--release", "-p", "kmodforge-server"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="kmf-bench-src-")
    sources = {p: source_dir(p, work) for p in packages + ([args.many] if args.many else [])}
    server = Server(args.keep)
    rows = []
    warm = []
    try:
        for kernel in kernels:
            # Warm-up: builder image, verifier image and /usr volumes of this kernel.
            path, name, version = sources[packages[0]]
            t0 = time.time()
            build(server, name, version, kernel, tar_with_marker(path, f"warmup {kernel}"))
            warm.append({"kernel": kernel, "seconds": round(time.time() - t0, 2)})
            say(f"warm-up for {kernel}: {warm[-1]['seconds']} s (images included)")
            remove(server, name, version)
        many = []
        for kernel in args.many_kernels.split() if args.many else []:
            path, name, version = sources[args.many]
            body = build(server, name, version, kernel, tar_with_marker(path, f"many {kernel}"))
            m = body["artifact"]
            c = m["boot_check"]
            tar = server.get_bytes(f"/v1/artifacts/{name}/{version}/{kernel}/modules.tar")
            say(f"{args.many} for {kernel}: job {body['build']['seconds']:.1f} s, server check {c['seconds']:.2f} s")
            for run in range(1, args.runs + 1):
                wall, rep = direct_check(c["verifier_image"]["id"], kernel, tar)
                many.append({
                    "run": run, "kernel": kernel, "package": args.many, "wall": round(wall, 2),
                    "boot_seconds": rep["seconds"], "prepare_seconds": rep["prepare_seconds"],
                    "initramfs_bytes": rep["initramfs_bytes"],
                    "new": sum(1 for x in rep["modules"] if x["new"]),
                    "in_kernel": sum(1 for x in rep["modules"] if not x["new"]),
                    "job_seconds": body["build"]["seconds"], "server_check_seconds": c["seconds"],
                })
                say(f"direct check {run}: {wall:.2f} s (guest {rep['seconds']} s)")
            remove(server, name, version)
        for run in range(1, 0 if args.skip_matrix else args.runs + 1):
            for kernel in kernels:
                for package in packages:
                    path, name, version = sources[package]
                    body = build(server, name, version, kernel, tar_with_marker(path, f"run {run} {kernel}"))
                    m = body["artifact"]
                    c = m["boot_check"]
                    row = {
                        "run": run, "kernel": kernel, "package": package,
                        "job_seconds": body["build"]["seconds"],
                        "build_seconds": m["build_seconds"],
                        "check_seconds": c["seconds"],
                        "boot_seconds": c["boot_seconds"],
                        "initramfs_bytes": c["initramfs_bytes"],
                        "new": sum(1 for x in c["modules"] if x["new"]),
                        "in_kernel": sum(1 for x in c["modules"] if not x["new"]),
                        "boot_image": c["boot_image"],
                    }
                    rows.append(row)
                    say(f"run {run} {kernel} {package}: job {row['job_seconds']:.2f} s, "
                        f"check {row['check_seconds']:.2f} s (guest {row['boot_seconds']:.2f} s)")
                    remove(server, name, version)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    os.makedirs(os.path.join(REPO, "bench/results"), exist_ok=True)
    raw = os.path.join(REPO, "bench/results", time.strftime("bootcheck-%Y%m%d-%H%M%S.json"))
    with open(raw, "w") as f:
        json.dump({"warmup": warm, "rows": rows, "many": many}, f, indent=1)

    print(f"Command: `bench/bootcheck.py {' '.join(sys.argv[1:])}` ({platform.node()}, {os.cpu_count()} CPUs, "
          f"qemu TCG, no KVM); raw data {os.path.relpath(raw, REPO)}\n")
    print("| kernel | package | modules (built + in-kernel) | initramfs | cold job with check | check | guest (qemu) | check / job |")
    print("|---|---|---|---|---|---|---|---|")
    med = statistics.median
    for kernel in kernels:
        for package in packages:
            rs = [r for r in rows if r["kernel"] == kernel and r["package"] == package]
            if not rs:
                continue
            share = med([r["check_seconds"] / r["job_seconds"] for r in rs])
            print(f"| {kernel} | {package} | {rs[0]['new']} + {rs[0]['in_kernel']} | "
                  f"{med([r['initramfs_bytes'] for r in rs]) / 1e6:.2f} MB | {med([r['job_seconds'] for r in rs]):.2f} s | "
                  f"{med([r['check_seconds'] for r in rs]):.2f} s | {med([r['boot_seconds'] for r in rs]):.2f} s | "
                  f"{share * 100:.0f} % |")
    if many:
        print()
        print("| kernel | package (checked directly, as the server runs it) | modules (built + in-kernel) | initramfs | "
              "container run | staging + depmod | guest (qemu) | cold job with its one server check | that check |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kernel in sorted({r["kernel"] for r in many}):
            rs = [r for r in many if r["kernel"] == kernel]
            print(f"| {kernel} | {rs[0]['package']} | {rs[0]['new']} + {rs[0]['in_kernel']} | "
                  f"{med([r['initramfs_bytes'] for r in rs]) / 1e6:.2f} MB | {med([r['wall'] for r in rs]):.2f} s | "
                  f"{med([r['prepare_seconds'] for r in rs]):.2f} s | {med([r['boot_seconds'] for r in rs]):.2f} s | "
                  f"{rs[0]['job_seconds']:.1f} s | {rs[0]['server_check_seconds']:.2f} s |")
    print()
    for w in warm:
        print(f"- warm-up for {w['kernel']} (builder + verifier images, /usr volumes, first build and check): {w['seconds']} s")


if __name__ == "__main__":
    main()
