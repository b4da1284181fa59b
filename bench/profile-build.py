#!/usr/bin/env python3
"""bench/profile-build.py -- where a kmodforge build's time goes (issue 16), one package at a time.

  bench/profile-build.py --package PKG [--package PKG ...] [--kernel KREL] [--runs N] [--jobs N]
                         [--server-bin PATH] [--ab NAME=VALUE ...] [--no-host] [--interval S] [--out DIR]

For each package and run, interleaved: one cold build through a kmodforge server of this tree (started
here on a fresh data dir, like bench/run.sh; each --ab adds a server with NAME=VALUE in its environment,
the servers rotating which goes first), then the same make command with plain `make` on the host with the
same headers (the Debian package linux-headers-KREL installed on the host, the versions the builder image
has). While a server build runs, a sampler reads every --interval seconds (0.5):

  the job container's cgroup (v1 or v2, found from the container id): CPU usage/user/system, CFS periods
  and throttling, memory usage and peak, memory.stat (file/cache, anon/rss, shmem = the tmpfs mounts),
  failcnt / memory.events, page faults, workingset refaults, block I/O, and the PSI pressure files
  (cpu/memory/io "some"/"full" stall time; on a v1 machine from the unified hierarchy);
  the CPU time (/proc/PID/stat) of the fuse-overlayfs process serving the container's rootfs, of its
  containerd-shim, of dockerd and containerd, and of the kmodforge server; the machine's busy time
  (/proc/stat); and each process of the container: how many sit blocked in write(2) (state S, syscall 1,
  i.e. waiting on a full pipe: make -> kmf's tee -> the exec stream -> the server).

Output: one JSON record per build in OUT/profile.jsonl (every sample in OUT/samples-*.json) and Markdown
tables on stdout (one row per build, then medians). Progress on stderr.
Needs: root (for /proc/PID/syscall of the container's processes), Docker, python3, the builder image of
KREL (prepared untimed through the server), linux-headers-KREL on the host (unless --no-host), and an apt
index that knows the *-dkms packages (tests/fixtures/fetch-debian-dkms.sh; r8152 comes from
bench/r8152-source.sh when PKG is "r8152").
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")
# Module settings the packages need (the builder image gets these Debian packages; as compat/run.py maps
# their Depends:). Override or add with --settings PKG=JSON.
SETTINGS = {"openafs-modules-dkms": {"packages": ["perl", "libc6-dev"]}}
KMF_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def say(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def die(msg):
    print(f"\nprofile-build: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def kv(text):
    out = {}
    for line in (text or "").splitlines():
        p = line.split()
        if len(p) == 2:
            try:
                out[p[0]] = int(p[1])
            except ValueError:
                pass
    return out


def psi(text):
    """'some avg10=.. total=US' lines -> {'some': us, 'full': us}"""
    out = {}
    for line in (text or "").splitlines():
        p = line.split()
        if p and p[0] in ("some", "full"):
            for f in p[1:]:
                if f.startswith("total="):
                    out[p[0]] = int(f[6:])
    return out


def proc_cpu(pid):
    """user+system seconds of one process (all its threads), or None."""
    s = read(f"/proc/{pid}/stat")
    if not s:
        return None
    f = s[s.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / HZ


def machine_busy():
    f = read("/proc/stat").splitlines()[0].split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / HZ


def pids_of(pattern):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cmd = read(f"/proc/{d}/cmdline")
        if cmd and pattern(cmd.replace("\0", " ")):
            out.append(int(d))
    return out


# ------------------------------------------------------------------ cgroups
class Cgroup:
    """The cgroup files of one container, v1 (per controller) or v2."""

    def __init__(self, cid):
        self.cid = cid
        self.v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        if self.v2:
            cands = [f"/sys/fs/cgroup/system.slice/docker-{cid}.scope", f"/sys/fs/cgroup/docker/{cid}"]
            self.base = next((c for c in cands if os.path.isdir(c)), None)
            self.unified = self.base
        else:
            self.base = f"/sys/fs/cgroup/%s/docker/{cid}"
            u = f"/sys/fs/cgroup/unified/docker/{cid}"
            self.unified = u if os.path.isdir(u) else None

    def f(self, ctrl, name):
        if self.v2:
            return read(f"{self.base}/{name}") if self.base else None
        return read(f"{self.base % ctrl}/{name}")

    def procs(self):
        t = self.f("pids", "cgroup.procs") if not self.v2 else self.f("", "cgroup.procs")
        return [int(x) for x in (t or "").split()]

    def sample(self):
        s = {}
        if self.v2:
            c = kv(self.f("", "cpu.stat"))
            if not c:
                return None
            s["cpu_usage"] = c.get("usage_usec", 0) / 1e6
            s["cpu_user"] = c.get("user_usec", 0) / 1e6
            s["cpu_system"] = c.get("system_usec", 0) / 1e6
            s["nr_periods"] = c.get("nr_periods", 0)
            s["nr_throttled"] = c.get("nr_throttled", 0)
            s["throttled_s"] = c.get("throttled_usec", 0) / 1e6
            s["mem_current"] = int(self.f("", "memory.current") or 0)
            pk = self.f("", "memory.peak")
            if pk:
                s["mem_peak"] = int(pk)
            m = kv(self.f("", "memory.stat"))
            s.update(mem_file=m.get("file", 0), mem_anon=m.get("anon", 0), mem_shmem=m.get("shmem", 0),
                     pgfault=m.get("pgfault", 0), pgmajfault=m.get("pgmajfault", 0),
                     refault=m.get("workingset_refault_file", 0) + m.get("workingset_refault_anon", 0),
                     pgscan=m.get("pgscan", 0), pgsteal=m.get("pgsteal", 0))
            e = kv(self.f("", "memory.events"))
            s.update(mem_events_high=e.get("high", 0), mem_events_max=e.get("max", 0), oom_kill=e.get("oom_kill", 0))
            rb = wb = 0
            for line in (self.f("", "io.stat") or "").splitlines():
                for fld in line.split()[1:]:
                    k, _, v = fld.partition("=")
                    if k == "rbytes":
                        rb += int(v)
                    elif k == "wbytes":
                        wb += int(v)
            s.update(io_read=rb, io_write=wb)
        else:
            u = self.f("cpuacct", "cpuacct.usage")
            if u is None:
                return None
            s["cpu_usage"] = int(u) / 1e9
            s["cpu_user"] = int(self.f("cpuacct", "cpuacct.usage_user") or 0) / 1e9
            s["cpu_system"] = int(self.f("cpuacct", "cpuacct.usage_sys") or 0) / 1e9
            c = kv(self.f("cpu", "cpu.stat"))
            s.update(nr_periods=c.get("nr_periods", 0), nr_throttled=c.get("nr_throttled", 0),
                     throttled_s=c.get("throttled_time", 0) / 1e9)
            s["mem_current"] = int(self.f("memory", "memory.usage_in_bytes") or 0)
            s["mem_peak"] = int(self.f("memory", "memory.max_usage_in_bytes") or 0)
            m = kv(self.f("memory", "memory.stat"))
            s.update(mem_file=m.get("total_cache", 0), mem_anon=m.get("total_rss", 0),
                     mem_shmem=m.get("total_shmem", 0), pgfault=m.get("total_pgfault", 0),
                     pgmajfault=m.get("total_pgmajfault", 0),
                     refault=m.get("total_workingset_refault_file", 0) + m.get("total_workingset_refault_anon", 0),
                     failcnt=int(self.f("memory", "memory.failcnt") or 0))
            o = kv(self.f("memory", "memory.oom_control"))
            s["oom_kill"] = o.get("oom_kill", 0)
            rb = wb = 0
            for line in (self.f("blkio", "blkio.throttle.io_service_bytes_recursive") or "").splitlines():
                p = line.split()
                if len(p) == 3 and p[1] == "Read":
                    rb += int(p[2])
                elif len(p) == 3 and p[1] == "Write":
                    wb += int(p[2])
            s.update(io_read=rb, io_write=wb)
        if self.unified:
            for r in ("cpu", "memory", "io"):
                p = psi(read(f"{self.unified}/{r}.pressure"))
                for k, v in p.items():
                    s[f"psi_{r}_{k}"] = v / 1e6
        return s


def blocked_writers(pids):
    """Processes of the container sleeping in write(2) (a full pipe), by command name; and the states."""
    blocked, states = {}, {}
    for pid in pids:
        st = read(f"/proc/{pid}/stat")
        if not st:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        state = st[st.rindex(")") + 2]
        states[state] = states.get(state, 0) + 1
        if state == "S":
            sc = read(f"/proc/{pid}/syscall") or ""
            if sc.split(" ", 1)[0] == "1":
                blocked[comm] = blocked.get(comm, 0) + 1
    return blocked, states


# ------------------------------------------------------------------ sampler
class Sampler(threading.Thread):
    """Samples every container of one server (its owner label), the processes around them, the server."""

    def __init__(self, owner, server_pid, interval):
        super().__init__(daemon=True)
        self.owner, self.server_pid, self.interval = owner, server_pid, interval
        self.stop_ev = threading.Event()
        self.seen = {}      # container id -> info (or None: not ours)
        self.samples = []
        self.daemons = {n: pids_of(lambda c, n=n: c.split(" ")[0].endswith(n))
                        for n in ("dockerd", "containerd")}
        self.daemons["containerd"] = [p for p in self.daemons["containerd"] if p not in self.daemons["dockerd"]]

    def discover(self):
        root = "/sys/fs/cgroup/cpuacct/docker"
        if not os.path.isdir(root):
            root = "/sys/fs/cgroup/system.slice" if os.path.isdir("/sys/fs/cgroup/system.slice") else "/sys/fs/cgroup/docker"
        try:
            names = os.listdir(root)
        except OSError:
            return
        for n in names:
            cid = re.sub(r"^docker-|\.scope$", "", n)
            if not re.fullmatch(r"[0-9a-f]{64}", cid) or cid in self.seen:
                continue
            try:
                out = subprocess.run(["docker", "inspect", "-f", "{{json .}}", cid], capture_output=True,
                                     text=True, timeout=10).stdout
                d = json.loads(out)
            except (subprocess.SubprocessError, ValueError):
                continue
            labels = d.get("Config", {}).get("Labels") or {}
            if labels.get("kmodforge.owner") != self.owner:
                self.seen[cid] = None
                continue
            merged = (d.get("GraphDriver", {}).get("Data") or {}).get("MergedDir", "")
            layer = merged.rsplit("/", 2)[-2] if merged.endswith("/merged") else None
            # "fuse-overlayfs ..." as dockerd starts it; "/usr/bin/fuse-overlayfs ..." through the wrapper of
            # bench/fuse-overlayfs-opts.sh.
            fuse = pids_of(lambda c: os.path.basename(c.split(" ", 1)[0]) == "fuse-overlayfs"
                           and layer and f"/{layer}/merged" in c)
            shim = pids_of(lambda c: "containerd-shim" in c and cid in c)
            self.seen[cid] = {"name": d.get("Name", "").lstrip("/"), "cgroup": Cgroup(cid), "fuse": fuse,
                              "shim": shim, "driver": d.get("Driver"),
                              "mounts": [{"type": m.get("Type"), "dst": m.get("Destination")} for m in d.get("Mounts", [])],
                              "tmpfs": list((d.get("HostConfig", {}).get("Tmpfs") or {}).keys()),
                              "nano_cpus": d.get("HostConfig", {}).get("NanoCpus")}

    def one(self):
        t = time.time()
        self.discover()
        s = {"t": t, "busy": machine_busy(), "server": proc_cpu(self.server_pid),
             "dockerd": sum(proc_cpu(p) or 0 for p in self.daemons["dockerd"]),
             "containerd": sum(proc_cpu(p) or 0 for p in self.daemons["containerd"]), "containers": {}}
        for cid, info in self.seen.items():
            if not info:
                continue
            cg = info["cgroup"].sample()
            if cg is None:
                continue
            pids = info["cgroup"].procs()
            cg["blocked_write"], cg["states"] = blocked_writers(pids)
            cg["nprocs"] = len(pids)
            cg["fuse"] = sum(proc_cpu(p) or 0 for p in info["fuse"])
            cg["shim"] = sum(proc_cpu(p) or 0 for p in info["shim"])
            s["containers"][cid] = cg
        self.samples.append(s)

    def run(self):
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            try:
                self.one()
            except Exception as e:  # a sample must never kill the measurement
                say(f"sampler: {e!r}")
            self.stop_ev.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.one()


def summarize(sampler, t_start, t_end, phases):
    """One build's resource figures from its samples."""
    ss = [s for s in sampler.samples if t_start - 1 <= s["t"] <= t_end + 1]
    if len(ss) < 2:
        return {}
    first, last = ss[0], ss[-1]
    out = {"samples": len(ss), "interval": sampler.interval,
           "machine_busy_s": last["busy"] - first["busy"],
           "server_cpu_s": (last["server"] or 0) - (first["server"] or 0),
           "dockerd_cpu_s": last["dockerd"] - first["dockerd"],
           "containerd_cpu_s": last["containerd"] - first["containerd"]}
    conts = {}
    for s in ss:
        for cid, c in s["containers"].items():
            conts.setdefault(cid, []).append((s["t"], c))
    tot = dict.fromkeys(("cpu_usage", "cpu_user", "cpu_system", "nr_periods", "nr_throttled", "throttled_s",
                         "pgfault", "pgmajfault", "refault", "failcnt", "oom_kill", "io_read", "io_write",
                         "psi_cpu_some", "psi_memory_some", "psi_memory_full", "psi_io_some", "psi_io_full",
                         "fuse", "shim", "mem_events_max", "pgscan"), 0)
    peak = dict.fromkeys(("mem_peak", "mem_shmem", "mem_file", "mem_anon", "nprocs"), 0)
    blocked = {}
    blocked_samples = 0
    busy_samples = 0
    per_phase = {}
    for cid, lst in conts.items():
        # Container counters start at 0 when it is created: the last value is the total (minus what
        # happened after the last sample before its cgroup was removed: up to one interval).
        c = lst[-1][1]
        for k in tot:
            tot[k] += c.get(k, 0) or 0
        for _, c in lst:
            peak["mem_peak"] = max(peak["mem_peak"], c.get("mem_peak", c.get("mem_current", 0)))
            for k in ("mem_shmem", "mem_file", "mem_anon", "nprocs"):
                peak[k] = max(peak[k], c.get(k, 0))
            if c.get("nprocs", 0) > 1:
                busy_samples += 1
            if c["blocked_write"]:
                blocked_samples += 1
                for k, v in c["blocked_write"].items():
                    blocked[k] = blocked.get(k, 0) + v
        # CPU per phase: deltas between consecutive samples, by the phase the later sample falls in.
        prev = {"cpu_usage": 0.0, "fuse": 0.0, "nr_throttled": 0}   # counters start at 0 with the container
        for t, c in lst:
            ph = phase_at(phases, t)
            d = per_phase.setdefault(ph, {"container_cpu_s": 0.0, "fuse_cpu_s": 0.0, "throttled": 0})
            d["container_cpu_s"] += c["cpu_usage"] - prev["cpu_usage"]
            d["fuse_cpu_s"] += c["fuse"] - prev["fuse"]
            d["throttled"] += c["nr_throttled"] - prev["nr_throttled"]
            prev = c
    out.update({f"container_{k}": v for k, v in tot.items()})
    out.update({f"peak_{k}": v for k, v in peak.items()})
    out["containers"] = len(conts)
    out["container_info"] = [{k: v for k, v in i.items() if k != "cgroup"} for i in sampler.seen.values() if i]
    out["blocked_write_samples"] = blocked_samples
    out["busy_samples"] = busy_samples
    out["blocked_write_by_comm"] = blocked
    out["per_phase"] = per_phase
    out["outside_cpu_s"] = (out["container_fuse"] + out["container_shim"] + out["dockerd_cpu_s"]
                            + out["containerd_cpu_s"] + out["server_cpu_s"])
    out["unaccounted_cpu_s"] = out["machine_busy_s"] - out["container_cpu_usage"] - out["outside_cpu_s"]
    return out


def phase_at(phases, t):
    name = "before"
    for p, start in phases:
        if t >= start:
            name = p
    return name


# ------------------------------------------------------------------ server
class Server:
    def __init__(self, binary, work, jobs, env_extra, label):
        self.label = label
        self.data = tempfile.mkdtemp(prefix=f"data-{label}.", dir=work)
        self.data = os.path.realpath(self.data)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, KMODFORGE_JOBS=str(jobs), KMODFORGE_LOG=os.environ.get("KMODFORGE_LOG", "info"))
        env.update(env_extra)
        self.env_extra = env_extra
        self.log = open(os.path.join(work, f"server-{label}.log"), "ab")
        self.proc = subprocess.Popen([binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=2).read()
                break
            except (urllib.error.URLError, OSError):
                if self.proc.poll() is not None:
                    die(f"server {label} exited at start-up (see {self.log.name})")
                time.sleep(0.1)
        else:
            die(f"server {label} did not answer /healthz")
        self.token = read(os.path.join(self.data, "admin.token")).strip()
        import hashlib
        self.owner = hashlib.sha256(self.data.encode()).hexdigest()[:16]

    def req(self, method, path, body=None, ctype=None, timeout=3600):
        r = urllib.request.Request(self.base + path, data=body, method=method)
        r.add_header("Authorization", f"Bearer {self.token}")
        if ctype:
            r.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(r, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


FUSE_OPTS_FILE = "/run/kmf-fuse-opts"


@contextlib.contextmanager
def fuse_opts(srv):
    """An arm with KMF_BENCH_FUSE_OPTS=OPTS: its job containers' roots mounted by fuse-overlayfs with `-o OPTS`
    (the wrapper of bench/fuse-overlayfs-opts.sh reads the file at each container start)."""
    opts = srv.env_extra.get("KMF_BENCH_FUSE_OPTS")
    if not opts:
        yield
        return
    with open(FUSE_OPTS_FILE, "w") as f:
        f.write(opts)
    try:
        yield
    finally:
        os.unlink(FUSE_OPTS_FILE)


def fresh_tree(src, work, tag):
    out = os.path.join(work, "trees", tag)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(src, out, symlinks=True)
    with open(os.path.join(out, "dkms.conf"), "a") as f:
        f.write(f"\n# kmodforge-profile nonce {tag} {time.time_ns()}\n")
    tgz = out + ".tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        for name in sorted(os.listdir(out)):
            t.add(os.path.join(out, name), arcname=name)
    return out, tgz


def warm_server(srv, src, name, ver, kernel, work, tag):
    """Untimed: a build of the package whose MAKE is `true` (it fails fast, "module not found"): the server
    prepares the builder image with the module's packages and checks its /usr volumes once per image and
    process (two short containers), which would otherwise land in the first timed build."""
    tree = os.path.join(work, "trees", tag)
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(src, tree, symlinks=True)
    with open(os.path.join(tree, "dkms.conf"), "a") as f:
        f.write(f'\nMAKE[0]="true"\n# kmodforge-profile warm-up {time.time_ns()}\n')
    tgz = tree + ".tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        for n in sorted(os.listdir(tree)):
            t.add(os.path.join(tree, n), arcname=n)
    srv.req("DELETE", f"/v1/modules/{name}/{ver}")
    with open(tgz, "rb") as f:
        code, body = srv.req("PUT", f"/v1/modules/{name}/{ver}?replace=true", f.read(), "application/gzip")
    if code != 201:
        die(f"PUT module {name}/{ver}: {code} {body[:300]!r}")
    t0 = time.time()
    code, body = srv.req("POST", "/v1/builds", json.dumps({"name": name, "version": ver, "kernel": kernel}).encode(),
                         "application/json")
    if code != 202:
        die(f"warm-up POST /v1/builds: {code} {body[:300]!r}")
    bid = json.loads(body)["build"]["id"]
    while True:
        d = json.loads(srv.req("GET", f"/v1/builds/{bid}")[1])
        if d["build"]["state"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    say(f"  warm-up {srv.label}: {time.time() - t0:.1f} s ({d['build']['state']}, as expected: MAKE is true)")


def server_build(srv, pkg, name, ver, kernel, tree, tgz, interval, work, tag):
    code, body = srv.req("DELETE", f"/v1/modules/{name}/{ver}")
    if code not in (204, 404):
        die(f"DELETE module: {code} {body[:300]!r}")
    with open(tgz, "rb") as f:
        code, body = srv.req("PUT", f"/v1/modules/{name}/{ver}?replace=true", f.read(), "application/gzip")
    if code != 201:
        die(f"PUT module {name}/{ver}: {code} {body[:300]!r}")
    sampler = Sampler(srv.owner, srv.proc.pid, interval)
    sampler.start()
    time.sleep(interval)
    t0 = time.time()
    code, body = srv.req("POST", "/v1/builds", json.dumps({"name": name, "version": ver, "kernel": kernel}).encode(),
                         "application/json")
    if code != 202:
        sampler.stop()
        die(f"POST /v1/builds: {code} {body[:300]!r} (not cold?)")
    bid = json.loads(body)["build"]["id"]
    lines = []
    r = urllib.request.Request(f"{srv.base}/v1/builds/{bid}/log")
    r.add_header("Authorization", f"Bearer {srv.token}")
    log_bytes = 0
    with urllib.request.urlopen(r, timeout=7200) as resp:
        for raw in resp:
            log_bytes += len(raw)
            lines.append((time.time(), raw.decode("utf-8", "replace").rstrip("\n")))
    t_log = time.time()
    while True:
        code, body = srv.req("GET", f"/v1/builds/{bid}")
        d = json.loads(body)
        if d["build"]["state"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    t_final = time.time()
    time.sleep(interval)
    sampler.stop()
    if d["build"]["state"] != "succeeded":
        for _, l in lines[-30:]:
            print(l, file=sys.stderr)
        die(f"{pkg} ({tag}) ended {d['build']['state']}")
    make_cmd = next((l.split("make command: ", 1)[1] for _, l in lines if "[kmodforge] make command: " in l), None)
    # Phases from the client-stamped log: the job's own notes mark the boundaries.
    phases = [("submit", t0)]
    for t, l in lines:
        if "[kmodforge] make command: " in l:
            phases.append(("make", t))
        elif "[kmodforge] build step took" in l:
            phases.append(("collect+store", t))
    phases.append(("after", t_final))
    notes = {}
    for _, l in lines:
        m = re.search(r"sandbox started in ([\d.]+) s, source unpacked and dkms.conf evaluated in ([\d.]+) s", l)
        if m:
            notes["container_start_s"], notes["unpack_eval_s"] = float(m[1]), float(m[2])
        m = re.search(r"build step took ([\d.]+) s", l)
        if m:
            notes["build_step_s"] = float(m[1])
    ph_t = {p: round(b - a, 3) for (p, a), (_, b) in zip(phases, phases[1:])}
    # Inside the build step, from kmf's own lines: its make (from "# command:" to the first "kmf: x.ko ->"
    # line, i.e. make itself, as the client saw its output) and what follows (check, copy, strip -g of each .ko).
    t_cmd = next((t for t, l in lines if l.startswith("# command: ")), None)
    t_kmf = next((t for t, l in lines if t_cmd and t >= t_cmd and re.match(r"kmf: .*\.ko -> ", l)), None)
    t_step = next((t for t, l in lines if "[kmodforge] build step took" in l), None)
    if t_cmd and t_kmf:
        notes["make_only_s"] = round(t_kmf - t_cmd, 3)
    if t_kmf and t_step:
        notes["after_make_s"] = round(t_step - t_kmf, 3)
    with open(os.path.join(work, f"log-{tag}.tsv"), "w") as f:
        for t, l in lines:
            f.write(f"{t:.3f}\t{l}\n")
    res = summarize(sampler, t0, t_final, phases)
    with open(os.path.join(work, f"samples-{tag}.json"), "w") as f:
        json.dump([{k: v for k, v in s.items()} for s in sampler.samples], f)
    return {
        "arm": srv.label, "env": srv.env_extra, "package": pkg, "run": tag, "build_id": bid,
        "wall_s": round(t_final - t0, 3), "log_end_s": round(t_log - t0, 3),
        "job_s": d["build"].get("seconds"), "build_seconds": (d.get("artifact") or {}).get("build_seconds"),
        "log_bytes": log_bytes, "log_lines": len(lines), "phase_wall_s": ph_t, **notes, **res,
    }, make_cmd


# ------------------------------------------------------------------ plain make on the host
def host_record(arm, pkg, tag, wall, ru, busy, log_bytes):
    """The record of a build run on the host (make or DKMS): wall time and its rusage."""
    return {"arm": arm, "package": pkg, "run": tag, "wall_s": round(wall, 3), "cpu_user_s": ru.ru_utime,
            "cpu_system_s": ru.ru_stime, "cpu_s": ru.ru_utime + ru.ru_stime, "minflt": ru.ru_minflt,
            "majflt": ru.ru_majflt, "maxrss_kib": ru.ru_maxrss, "machine_busy_s": busy, "log_bytes": log_bytes}


def host_make(pkg, name, ver, kernel, tree, make_cmd, work, tag):
    """The make command kmodforge ran, as DKMS runs it on the host: cwd the build dir, output to make.log."""
    dkms = os.path.join(work, "host-dkms")
    build = os.path.join(dkms, name, ver, "build")
    shutil.rmtree(os.path.join(dkms, name), ignore_errors=True)
    shutil.copytree(tree, build, symlinks=True)
    shim = os.path.join(work, "shim")
    os.makedirs(shim, exist_ok=True)
    if not os.path.exists(os.path.join(shim, "uname")):
        os.symlink(os.path.join(REPO, "images/builder/uname"), os.path.join(shim, "uname"))
    ksrc = f"/lib/modules/{kernel}/build"
    cmd = make_cmd.replace("/var/lib/dkms", dkms)
    env = {"PATH": f"{shim}:{KMF_PATH}", "HOME": "/tmp", "LANG": "C", "KERNELDIR": ksrc, "KDIR": ksrc,
           "KSRC": ksrc, "KVER": kernel, "KERNEL_VERSION": kernel, "KMF_KREL": kernel, "KMF_ARCH": "x86_64"}
    logf = open(os.path.join(build, "make.log"), "w")
    t0 = time.monotonic()
    busy0 = machine_busy()
    p = subprocess.Popen(["bash", "-c", 'set +u +o pipefail; eval "$MK"'], cwd=build, env=dict(env, MK=cmd),
                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    busy = machine_busy() - busy0
    logf.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(read(os.path.join(build, "make.log"))[-3000:], file=sys.stderr)
        die(f"host make of {pkg} ({tag}) failed (exit {rc}): {cmd}")
    return dict(host_record("host", pkg, tag, wall, ru, busy, os.path.getsize(os.path.join(build, "make.log"))),
                make=cmd)


def host_dkms(pkg, name, ver, kernel, tree, work, tag):
    """The real DKMS on the host: `dkms add` (untimed, as the server's upload is), then `dkms build` timed."""
    usr_src = f"/usr/src/{name}-{ver}"

    def dkms(*args, check=True):
        r = subprocess.run(["dkms", *args], capture_output=True, text=True)
        if check and r.returncode:
            die(f"dkms {' '.join(args)} of {pkg} ({tag}) failed (exit {r.returncode}): {(r.stdout + r.stderr)[-3000:]}")
        return r

    dkms("remove", "-m", name, "-v", ver, "--all", check=False)
    shutil.rmtree(f"/var/lib/dkms/{name}", ignore_errors=True)
    shutil.rmtree(usr_src, ignore_errors=True)
    shutil.copytree(tree, usr_src, symlinks=True)
    try:
        dkms("add", "-m", name, "-v", ver)
        t0 = time.monotonic()
        busy0 = machine_busy()
        p = subprocess.Popen(["dkms", "build", "-m", name, "-v", ver, "-k", kernel], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        busy = machine_busy() - busy0
        rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            die(f"dkms build of {pkg} ({tag}) failed (exit {rc}): {out.decode(errors='replace')[-3000:]}")
        log = read(f"/var/lib/dkms/{name}/{ver}/build/make.log", "")
    finally:
        dkms("remove", "-m", name, "-v", ver, "--all", check=False)
        shutil.rmtree(f"/var/lib/dkms/{name}", ignore_errors=True)
        shutil.rmtree(usr_src, ignore_errors=True)
    return host_record("host dkms", pkg, tag, wall, ru, busy, len(log))


# ------------------------------------------------------------------ report
def mib(b):
    return f"{b / 1048576:.0f}"


def row_server(r):
    pp = r.get("per_phase", {})
    mk = pp.get("make", {})
    return (f"| {r['package']} | {r['arm']} | {r['run']} | {r['wall_s']:.1f} | {r.get('build_step_s', 0):.1f} | "
            f"{r['container_cpu_usage']:.1f} ({r['container_cpu_user']:.1f} / {r['container_cpu_system']:.1f}) | "
            f"{mk.get('container_cpu_s', 0):.1f} | "
            f"{r['container_fuse']:.2f} | {r['container_shim'] + r['dockerd_cpu_s'] + r['containerd_cpu_s']:.2f} | "
            f"{r['server_cpu_s']:.2f} | {r['unaccounted_cpu_s']:.1f} | {r['machine_busy_s']:.1f} | "
            f"{r['container_nr_throttled']}/{r['container_nr_periods']} ({r['container_throttled_s']:.1f} s) | "
            f"{mib(r['peak_mem_shmem'])} / {mib(r['peak_mem_peak'])} | "
            f"{r.get('container_failcnt', r.get('container_mem_events_max', 0))} / {r['container_refault']} / "
            f"{r['container_psi_memory_some']:.2f} | "
            f"{r['container_pgfault'] / 1e6:.2f}M / {r['container_pgmajfault']} | "
            f"{r['container_psi_cpu_some']:.1f} / {r['container_psi_io_some']:.2f} | "
            f"{r['blocked_write_samples']}/{r['samples']} | {r['log_bytes'] / 1024:.0f} |")


def row_host(r):
    return (f"| {r['package']} | {HOST_ARMS[r['arm']]} | {r['run']} | {r['wall_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['cpu_s']:.1f} ({r['cpu_user_s']:.1f} / {r['cpu_system_s']:.1f}) | {r['cpu_s']:.1f} | - | - | - | "
            f"{r['machine_busy_s'] - r['cpu_s']:.1f} | {r['machine_busy_s']:.1f} | - | - | - | "
            f"{r['minflt'] / 1e6:.2f}M / {r['majflt']} | - | - | {r['log_bytes'] / 1024:.0f} |")


HOST_ARMS = {"host": "host make", "host dkms": "host dkms build"}

HEAD = ("| package | arm | run | wall s | make step s | CPU in container s (user / sys) | of it in make step s | "
        "fuse-overlayfs CPU s | shim + dockerd + containerd CPU s | server CPU s | other CPU s | machine busy s | "
        "throttled periods (time) | peak shmem / memory MiB | failcnt / refaults / PSI mem s | page faults (major) | "
        "PSI cpu / io some s | samples with a writer blocked | log KiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def report(records):
    print(HEAD)
    for r in records:
        print(row_server(r) if r["arm"] not in HOST_ARMS else row_host(r))
    print()
    print("Phases of the server builds (wall from the client-stamped log; CPU of the container and of its "
          "fuse-overlayfs process in each):\n")
    print("| package | arm | run | submit -> make starts s (CPU, fuse) | make step s (CPU, fuse) | "
          "collect + store -> final s (CPU, fuse) | container start s | unpack + eval s | of the make step: make s, "
          "after make (check, strip -g) s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if r["arm"] in HOST_ARMS:
            continue
        cells = []
        for ph in ("submit", "make", "collect+store"):
            c = r.get("per_phase", {}).get(ph, {})
            cells.append(f"{r['phase_wall_s'].get(ph, 0):.2f} ({c.get('container_cpu_s', 0):.2f}, {c.get('fuse_cpu_s', 0):.2f})")
        print(f"| {r['package']} | {r['arm']} | {r['run']} | {' | '.join(cells)} | {r.get('container_start_s', '-')} | "
              f"{r.get('unpack_eval_s', '-')} | {r.get('make_only_s', '-')}, {r.get('after_make_s', '-')} |")
    print()
    ratio_table(records)
    print("Medians per package and arm:\n")
    print("| package | arm | runs | wall s | make step s | CPU in container (host: make) s | fuse-overlayfs s | "
          "outside (fuse, shim, daemons, server) s | other s | throttled periods | ratio wall / host make |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    groups = {}
    for r in records:
        groups.setdefault((r["package"], r["arm"]), []).append(r)
    for (pkg, arm), rs in groups.items():
        med = lambda k: statistics.median(x.get(k, 0) or 0 for x in rs)
        host = groups.get((pkg, "host"))
        ratio = (med("wall_s") / statistics.median(x["wall_s"] for x in host)) if host else float("nan")
        if arm in HOST_ARMS:
            print(f"| {pkg} | {HOST_ARMS[arm]} | {len(rs)} | {med('wall_s'):.1f} | {med('wall_s'):.1f} | {med('cpu_s'):.1f} | - | - | "
                  f"{statistics.median(x['machine_busy_s'] - x['cpu_s'] for x in rs):.1f} | - | {ratio:.2f} |")
        else:
            print(f"| {pkg} | {arm} | {len(rs)} | {med('wall_s'):.1f} | {med('build_step_s'):.1f} | "
                  f"{med('container_cpu_usage'):.1f} | {med('container_fuse'):.2f} | {med('outside_cpu_s'):.2f} | "
                  f"{med('unaccounted_cpu_s'):.1f} | {med('container_nr_throttled'):.0f} | {ratio:.2f} |")


def ratio_rows(records, base, base_label, arms, arm_runs):
    """One ratio table: per package, each arm's median wall time against the `base` arm's median."""
    print(f"| package | {base_label} s (runs) | "
          + " | ".join(f"{a} s{' (runs)' if arm_runs else ''} | ratio" for a in arms) + " |")
    print("|---|---|" + "---|---|" * len(arms))
    for pkg in dict.fromkeys(r["package"] for r in records):
        walls = lambda arm: [r["wall_s"] for r in records if r["package"] == pkg and r["arm"] == arm]
        b = walls(base)
        h = statistics.median(b) if b else float("nan")
        cells = [f"{h:.2f} ({len(b)})"]
        for arm in arms:
            w = walls(arm)
            m = statistics.median(w) if w else float("nan")
            cells.append(f"{m:.2f}{f' ({len(w)})' if arm_runs else ''} | {m / h:.2f}")
        print(f"| {pkg} | " + " | ".join(cells) + " |")
    print()


def ratio_table(records):
    """The benchmark's headline: per package, each arm's median wall time against plain make's (and, with
    --dkms, each server arm's against the real DKMS's)."""
    arms = [a for a in dict.fromkeys(r["arm"] for r in records) if a != "host"]
    arms.sort(key=lambda a: a != "host dkms")  # DKMS first, then the server arms
    print("Cold builds against plain make on the host (medians; ratio = arm / host make):\n")
    ratio_rows(records, "host", "host make", arms, arm_runs=True)
    if "host dkms" in arms:
        print("The same against the real DKMS on the host (`dkms build`; ratio = arm / dkms build):\n")
        ratio_rows(records, "host dkms", "dkms build", [a for a in arms if a != "host dkms"], arm_runs=False)


def fetch_source(pkg, work):
    if pkg == "r8152":
        d = os.path.join(work, "src", "r8152")
        out = subprocess.run([os.path.join(REPO, "bench/r8152-source.sh"), d], capture_output=True, text=True)
        if out.returncode:
            die(f"bench/r8152-source.sh failed: {out.stderr[-500:]}")
        cands = [os.path.join(d, x) for x in os.listdir(d)] if os.path.isdir(d) else []
        d = d if os.path.exists(os.path.join(d, "dkms.conf")) else next(c for c in cands if os.path.exists(os.path.join(c, "dkms.conf")))
        return d
    out = subprocess.run([os.path.join(REPO, "tests/fixtures/fetch-debian-dkms.sh"), pkg, os.path.join(work, "src")],
                         capture_output=True, text=True)
    if out.returncode:
        die(f"cannot fetch {pkg}: {out.stderr[-500:]}")
    return out.stdout.strip()


def conf_value(d, key):
    m = re.search(rf'^{key}="?([^"\n]*)"?\s*$', read(os.path.join(d, "dkms.conf")), re.M)
    if not m or "$" in m[1]:
        die(f"{d}/dkms.conf: no literal {key}")
    return m[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", action="append", required=True)
    ap.add_argument("--kernel", default="6.1.0-47-amd64")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--runs-for", action="append", default=[], metavar="PKG=N",
                    help="runs for one package (a long build: openafs-modules-dkms=1)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("KMODFORGE_JOBS", os.cpu_count())))
    ap.add_argument("--server-bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
                                                         "release/kmodforge-server"))
    ap.add_argument("--ab", action="append", default=[],
                    help="'NAME=VALUE [NAME=VALUE ...]': one more server with these in its environment, interleaved (repeatable)")
    ap.add_argument("--no-host", action="store_true")
    ap.add_argument("--no-default-arm", action="store_true",
                    help="no arm for the server without --ab variables (a long build measured with --ab arms only)")
    ap.add_argument("--dkms", action="store_true",
                    help="also the real DKMS on the host (`dkms add`, then `dkms build` timed) in every run")
    ap.add_argument("--warmup", type=int, default=0, help="untimed full server+host builds per package first "
                    "(a fast `MAKE=true` warm-up build per server and package always runs)")
    ap.add_argument("--settings", action="append", default=[], help="PKG=JSON module settings (PUT /v1/modules/NAME/settings)")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("run as root (the sampler reads /proc/PID/syscall of the container's processes)")
    if not os.access(a.server_bin, os.X_OK):
        die(f"{a.server_bin} does not exist: cargo build --release -p kmodforge-server (or --server-bin)")
    if a.no_default_arm and not a.ab:
        die("--no-default-arm needs at least one --ab arm")
    if a.dkms and not shutil.which("dkms"):
        die("--dkms: no dkms on this host (apt-get install dkms)")
    if not a.no_host and not os.path.isdir(f"/lib/modules/{a.kernel}/build/"):
        die(f"no host headers for {a.kernel}: apt-get install linux-headers-{a.kernel} (or --no-host)")
    if any("KMF_BENCH_FUSE_OPTS=" in ab for ab in a.ab):
        st = subprocess.run([os.path.join(REPO, "bench/fuse-overlayfs-opts.sh"), "status"], capture_output=True, text=True)
        if not st.stdout.startswith("installed"):
            die("an arm sets KMF_BENCH_FUSE_OPTS: bench/fuse-overlayfs-opts.sh install first")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = a.out or os.path.join(REPO, "bench/results", f"profile-{stamp}")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kmf-profile.")
    facts = {"kind": "facts", "date": stamp, "nproc": os.cpu_count(), "host_kernel": os.uname().release,
             "cpu": next((l.split(": ", 1)[1] for l in read("/proc/cpuinfo").splitlines() if l.startswith("model name")), "?"),
             "memory_gib": round(int(read("/proc/meminfo").split()[1]) / 1048576, 1),
             "docker": subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True).stdout.strip(),
             "storage_driver": subprocess.run(["docker", "info", "-f", "{{.Driver}}"], capture_output=True, text=True).stdout.strip(),
             "cgroup": "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1",
             "git": subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
             "command": " ".join(["bench/profile-build.py"] + sys.argv[1:]), "jobs": a.jobs, "kernel": a.kernel,
             "load_before": read("/proc/loadavg").split()[:3]}
    say(f"machine: {facts}")
    servers = [] if a.no_default_arm else [Server(a.server_bin, work, a.jobs, {}, "server")]
    for ab in a.ab:
        env = dict(kv.partition("=")[::2] for kv in ab.split())
        servers.append(Server(a.server_bin, work, a.jobs, env, "server+" + "+".join(ab.split())))
    records = [facts]
    jl = open(os.path.join(out, "profile.jsonl"), "a")
    jl.write(json.dumps(facts) + "\n")
    try:
        say(f"preparing the builder image of {a.kernel} (untimed)")
        for s in servers:
            code, body = s.req("PUT", f"/v1/kernels/{a.kernel}")
            if code != 200:
                die(f"PUT /v1/kernels/{a.kernel}: {code} {body[:300]!r}")
        settings = dict(SETTINGS)
        for kvs in a.settings:
            k, _, v = kvs.partition("=")
            settings[k] = json.loads(v)
        for pkg in a.package:
            src = fetch_source(pkg, work)
            name, ver = conf_value(src, "PACKAGE_NAME"), conf_value(src, "PACKAGE_VERSION")
            if pkg in settings:
                for s in servers:
                    code, body = s.req("PUT", f"/v1/modules/{name}/settings", json.dumps(settings[pkg]).encode(),
                                       "application/json")
                    if code != 200:
                        die(f"PUT /v1/modules/{name}/settings: {code} {body[:300]!r}")
            make_cmd = None
            for s in servers:
                with fuse_opts(s):
                    warm_server(s, src, name, ver, a.kernel, work, f"{pkg}-warm-{s.label}")
            if not a.no_host:
                # The host's copy of the headers into the page cache, as the warm-up did for the volumes.
                subprocess.run(["tar", "-chf", "/dev/null", f"/lib/modules/{a.kernel}/build/",
                                f"/usr/src/linux-headers-{a.kernel}", f"/usr/src/linux-headers-{a.kernel.rsplit('-', 1)[0]}-common"],
                               capture_output=True)
            runs = next((int(x.partition("=")[2]) for x in a.runs_for if x.partition("=")[0] == pkg), a.runs)
            for i in range(a.warmup + runs):
                warm = i < a.warmup
                tag = f"{pkg}-{'warmup' if warm else 'run'}{i + 1 if warm else i - a.warmup + 1}"
                # Each run starts with the next server: with two, they alternate.
                order = servers[i % len(servers):] + servers[:i % len(servers)]
                for s in order:
                    tree, tgz = fresh_tree(src, work, f"{tag}-{len(records)}")
                    say(f"{pkg} {tag}: {s.label} build")
                    with fuse_opts(s):
                        rec, mc = server_build(s, pkg, name, ver, a.kernel, tree, tgz, a.interval, out, f"{tag}-{s.label}")
                    make_cmd = make_cmd or mc
                    say(f"  {s.label}: {rec['wall_s']} s (make step {rec.get('build_step_s')} s, container CPU "
                        f"{rec.get('container_cpu_usage', 0):.1f} s, throttled {rec.get('container_nr_throttled')})")
                    if not warm:
                        records.append(rec)
                        jl.write(json.dumps(rec) + "\n")
                        jl.flush()
                if not a.no_host:
                    if not make_cmd:
                        die("no 'make command:' line in the build log")
                    rec = host_make(pkg, name, ver, a.kernel, tree, make_cmd, work, tag)
                    say(f"  host make: {rec['wall_s']} s (CPU {rec['cpu_s']:.1f} s)")
                    if not warm:
                        records.append(rec)
                        jl.write(json.dumps(rec) + "\n")
                        jl.flush()
                if a.dkms:
                    rec = host_dkms(pkg, name, ver, a.kernel, tree, work, tag)
                    say(f"  host dkms build: {rec['wall_s']} s (CPU {rec['cpu_s']:.1f} s)")
                    if not warm:
                        records.append(rec)
                        jl.write(json.dumps(rec) + "\n")
                        jl.flush()
    finally:
        for s in servers:
            s.stop()
        jl.close()
        if os.environ.get("KEEP"):
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"Command: `{facts['command']}`  \nMachine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory_gib']} GiB, "
          f"kernel {facts['host_kernel']}, Docker {facts['docker']} ({facts['storage_driver']}, cgroup {facts['cgroup']}), "
          f"git {facts['git']}, {stamp}\n")
    report([r for r in records if r.get("kind") != "facts"])
    say(f"raw: {out}/profile.jsonl")


if __name__ == "__main__":
    main()
