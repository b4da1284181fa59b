#!/usr/bin/env python3
"""compat/run.py -- DKMS compatibility harness: real DKMS vs kmodforge on Debian's *-dkms packages.

    sudo compat/run.py --server http://127.0.0.1:8080 --token-file /var/lib/kmodforge/admin.token \
        --kernels 6.1.0-47-amd64,6.1.0-56-amd64

Every request carries `Authorization: Bearer <token>` with the token read from `--token-file FILE`
(default: $KMODFORGE_TOKEN_FILE, which sudo does not pass on by default); without either, no header is sent.
The harness prepares kernels and deletes modules, so it needs an `admin` token (the server writes one to
`<data-dir>/admin.token` on its first start). The token is never printed.

For every selected Debian `*-dkms` package (default: all of `apt-cache search -- -dkms` whose name ends in
`-dkms`, minus `dh-dkms`) and every kernel:

 1. fetch + extract the package with tests/fixtures/fetch-debian-dkms.sh, read its `Depends:` and its DKMS
    PACKAGE_NAME / PACKAGE_VERSION (dkms.conf evaluated with bash, as DKMS does);
 2. map `Depends:` to kmodforge module settings (`packages`, `build_depends`; runtime-only packages dropped);
 3. kmodforge: `PUT /v1/kernels/{krel}` (image preparation, timed apart), DELETE + re-add every module (so
    builds are cold), `PUT /v1/modules/{name}/settings`, then one build at a time, polled until final; every
    `.ko` is downloaded and read with the host's `modinfo`;
 4. real DKMS on this host (root): the baseline's method (compat/README.md, "The DKMS baseline") (`cp -a` to /usr/src,
    `dkms add`, timed `dkms build` per kernel, `modinfo` of every built module, `dkms remove --all`), or
    reuse a previous run (`--dkms-results FILE`) or the baseline JSON from another machine (`--skip-dkms`);
 5. compare per (package, kernel) by modinfo (never by bytes: DKMS signs, kmodforge does not) and write
    docs/COMPATIBILITY.md and docs/compatibility.json.

Exit status: 0 when every row's verdict is "same", "same (both fail)", "same (not applicable)" or
"kmodforge only"; 1 when any row is "DIFFERENT" or "harness error"; 2 on a setup error (bad option, server
unreachable, no token or one without scope admin, apt failure, missing settings endpoint, ...), reported in
one line.

Standard library only. See compat/README.md.
"""

import argparse
import datetime
import hashlib
import http.client
import io
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FETCH = REPO / "tests" / "fixtures" / "fetch-debian-dkms.sh"
DEFAULT_KERNELS = "6.1.0-47-amd64,6.1.0-56-amd64"
DEFAULT_BASELINE = str(REPO / "compat" / "dkms-baseline.json")
# compat/README.md, "The DKMS baseline": sum of the first run of each of the 60 builds.
BASELINE_TOTAL_S = 745.8
ARCH = "x86_64"
DKMS_TREE = Path("/var/lib/dkms")
SRC_TREE = Path("/usr/src")
DKMS_TIMEOUT = 900  # seconds, as the baseline: timeout -k 10 900 dkms build ...

# Depends that a module build does not need (the baseline did not install them either, compat/README.md,
# "The DKMS baseline"). Everything else in Depends (except dkms itself) is installed for the build.
RUNTIME_ONLY = {
    "udev": "device manager: openrazer-driver-dkms's udev rules, used at run time",
    "xserver-xorg-input-wacom": "X.org input driver that digimend's tablets use at run time",
    "xtables-addons-common": "the iptables userspace part of xtables-addons",
    "libxtables12": "iptables shared library for jool's userspace tools",
    "libc6": "C runtime library; libc6-dev, where listed, is kept",
    "sysvinit-utils": "init-script helpers for rtpengine's service",
    "lsb-base": "init-script helpers, the alternative of sysvinit-utils",
}

PASSING = {"same", "same (both fail)", "same (not applicable)", "kmodforge only"}
VERDICT_ORDER = ["same", "same (both fail)", "same (not applicable)", "kmodforge only", "DIFFERENT",
                 "harness error"]
# Stable failure kinds of the API (api/src/wire.rs FailureKind).
FAILURE_KINDS = {"compile_error", "patch_failed", "missing_module", "wrong_vermagic", "timeout", "out_of_memory",
                 "not_applicable", "invalid_conf", "unknown_kernel", "infrastructure", "dependency_failed",
                 "boot_check_failed"}
COMPRESSION_SUFFIXES = (".xz", ".gz", ".zst", ".bz2")


class Fatal(Exception):
    """A setup error: printed as one line, exit status 2."""


def log(msg=""):
    print(msg, flush=True)


def run(cmd, **kw):
    """subprocess.run with text output captured (stdout, stderr)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, text=True, errors="replace", **kw)


def last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def fmt_s(x):
    return "–" if x is None else f"{x:.2f}"


def md_escape(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def find_tool(name):
    return shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin:/usr/local/bin:/usr/local/sbin")


# --------------------------------------------------------------------------------------------------------------
# Packages: listing, fetching, Depends, dkms.conf evaluation


def corpus_listing():
    r = run(["apt-cache", "search", "--", "-dkms"])
    if r.returncode != 0:
        raise Fatal(f"apt-cache search -- -dkms failed (exit {r.returncode}): {last_line(r.stderr)}")
    names = set()
    for line in r.stdout.splitlines():
        name = line.split(" - ", 1)[0].strip()
        if name.endswith("-dkms") and name != "dh-dkms":
            names.add(name)
    if not names:
        raise Fatal("apt-cache search -- -dkms found no *-dkms package (run apt-get update?)")
    return sorted(names)


def deb_cache_dir():
    c = os.environ.get("KMODFORGE_DEB_CACHE")
    if c:
        return Path(c)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kmodforge" / "debs"


def find_deb(cache, pkg):
    """The .deb fetch-debian-dkms.sh used: the apt candidate's file, else the newest cached one."""
    r = run(["apt-cache", "policy", pkg])
    m = re.search(r"^\s*Candidate:\s*(\S+)", r.stdout, re.M)
    if m and m.group(1) != "(none)":
        fver = m.group(1).replace(":", "%3a")
        hits = sorted(cache.glob(f"{pkg}_{fver}_*.deb"))
        if hits:
            return hits[0]
    hits = sorted(cache.glob(f"{pkg}_*.deb"))
    if not hits:
        raise Fatal(f"{pkg}: no .deb in {cache} after fetching")
    if len(hits) > 1:
        r = run(["sort", "-V"], input="\n".join(str(h) for h in hits), stdin=None)
        return Path(r.stdout.split()[-1])
    return hits[0]


def deb_field(deb, field):
    r = run(["dpkg-deb", "-f", str(deb), field])
    if r.returncode != 0:
        raise Fatal(f"dpkg-deb -f {deb} {field} failed: {last_line(r.stderr)}")
    return " ".join(r.stdout.split())


EVAL_SCRIPT = r'''
exec 3>&1 >/dev/null 2>&1
kernelver=$1
arch=x86_64
kernel_source_dir=/lib/modules/$kernelver/build
dkms_tree=/var/lib/dkms
source_tree=/usr/src
cd "$2" || exit 3
. "$2/dkms.conf"
printf '%s\0%s\0' "$PACKAGE_NAME" "$PACKAGE_VERSION" >&3
'''


def dkms_name_version(tree, kernel):
    """PACKAGE_NAME and PACKAGE_VERSION as DKMS reads them (bash, stdout/stderr discarded)."""
    try:
        r = subprocess.run(["bash", "-c", EVAL_SCRIPT, "kmf-compat-eval", kernel, str(tree)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           timeout=120)
    except subprocess.TimeoutExpired:
        raise Fatal(f"{tree}/dkms.conf: evaluation with bash did not end within 120 s")
    parts = r.stdout.decode("utf-8", "replace").split("\0")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise Fatal(f"{tree}/dkms.conf: PACKAGE_NAME/PACKAGE_VERSION empty after evaluation with bash")
    return parts[0], parts[1]


def parse_depends(field):
    """Depends -> list of (raw clause, first alternative's bare package name)."""
    out = []
    for clause in field.split(","):
        clause = clause.strip()
        if not clause:
            continue
        first = clause.split("|")[0].strip()
        first = re.sub(r"\(.*?\)", "", first)  # version constraint
        first = re.sub(r"\[.*?\]", "", first)  # architecture restriction
        first = re.sub(r"<.*?>", "", first)    # build profile
        first = first.strip().split(":")[0].strip()  # :any, :native
        out.append((clause, first))
    return out


def fetch_packages(selection, work, kernel):
    """Fetches and extracts each package (and any *-dkms package it depends on). Returns {pkg: info}."""
    cache = deb_cache_dir()
    env = dict(os.environ, KMODFORGE_DEB_CACHE=str(cache))
    srcdir = work / "src"
    srcdir.mkdir(parents=True, exist_ok=True)
    pkgs = {}
    todo = list(selection)
    while todo:
        pkg = todo.pop(0)
        if pkg in pkgs:
            continue
        r = run(["bash", str(FETCH), pkg, str(srcdir)], env=env)
        if r.returncode != 0:
            raise Fatal(f"{pkg}: fetch-debian-dkms.sh failed (exit {r.returncode}): "
                        f"{last_line(r.stderr) or last_line(r.stdout)}")
        tree = Path(r.stdout.strip().splitlines()[-1])
        deb = find_deb(cache, pkg)
        depends = deb_field(deb, "Depends")
        name, version = dkms_name_version(tree, kernel)
        pkgs[pkg] = {
            "package": pkg,
            "debian_version": deb_field(deb, "Version"),
            "deb": str(deb),
            "tree": str(tree),
            "name": name,
            "version": version,
            "depends": depends,
            "auto_added": pkg not in selection,
        }
        for _, dep in parse_depends(depends):
            if dep.endswith("-dkms") and dep not in pkgs and dep not in todo:
                log(f"  {pkg} depends on {dep}: added to the selection")
                todo.append(dep)
    return pkgs


def map_settings(pkgs):
    """Adds info["settings"] and info["mapping"] (one entry per Depends clause) to every package."""
    for info in pkgs.values():
        packages, build_depends, mapping = [], [], []
        for clause, dep in parse_depends(info["depends"]):
            if dep == "dkms":
                action = "dropped (dkms itself)"
            elif dep in pkgs:
                dn = pkgs[dep]["name"]
                if dn not in build_depends:
                    build_depends.append(dn)
                action = f"build_depends: {dn}"
            elif dep.endswith("-dkms"):
                raise Fatal(f"{info['package']}: depends on {dep}, which could not be fetched")
            elif dep in RUNTIME_ONLY:
                action = "dropped (runtime only)"
            else:
                if dep not in packages:
                    packages.append(dep)
                action = f"packages: {dep}"
            mapping.append({"depends": clause, "name": dep, "action": action})
        settings = {}
        if packages:
            settings["packages"] = packages
        if build_depends:
            settings["build_depends"] = build_depends
        info["settings"] = settings
        info["mapping"] = mapping


def build_order(pkgs):
    """Package names, dependencies first, otherwise alphabetical."""
    by_name = {info["name"]: p for p, info in pkgs.items()}
    order, seen = [], set()

    def visit(p, stack):
        if p in seen:
            return
        if p in stack:
            raise Fatal(f"dependency cycle between *-dkms packages: {' -> '.join(stack + [p])}")
        for dn in pkgs[p]["settings"].get("build_depends", []):
            visit(by_name[dn], stack + [p])
        seen.add(p)
        order.append(p)

    for p in sorted(pkgs):
        visit(p, [])
    return order


# --------------------------------------------------------------------------------------------------------------
# modinfo


def modinfo_fields(path, fields=("version", "srcversion", "vermagic", "depends")):
    mi = find_tool("modinfo")
    if not mi:
        raise Fatal("modinfo not found (install kmod)")
    out = {}
    for f in fields:
        r = run([mi, "-F", f, str(path)])
        out[f] = r.stdout.strip() if r.returncode == 0 else None
    return out


def ko_base_name(fname):
    for suf in COMPRESSION_SUFFIXES:
        if fname.endswith(".ko" + suf):
            return fname[: -len(suf)]
    return fname


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# kmodforge side


def read_token_file(path):
    """The bearer token in `path`: one line, surrounding whitespace stripped. Fatal (naming the file, never its
    content) when it cannot be read or does not hold exactly one token."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise Fatal(f"token file {path}: {getattr(e, 'strerror', None) or e}")
    if not token or any(c.isspace() for c in token):
        raise Fatal(f"token file {path} must hold one token on one line")
    return token


class Server:
    def __init__(self, base, token_file=None):
        """`token_file`: a file holding the bearer token, read once here; None sends no Authorization header
        (enough for a server run with --anonymous-read, and for reads only)."""
        self.base = base.rstrip("/")
        self.token_file = token_file
        self._token = read_token_file(token_file) if token_file else None  # never printed

    def __repr__(self):
        return f"Server({self.base!r})"

    def auth_hint(self, status):
        """After a 401/403 answer: how to give the script a token (the server's message names the scope)."""
        if status == 401 and not self.token_file:
            return (" -- pass --token-file FILE (or set KMODFORGE_TOKEN_FILE; sudo does not pass it on unless "
                    "told to, e.g. sudo --preserve-env=KMODFORGE_TOKEN_FILE)")
        if status == 401:
            return f" -- the server refused the token in {self.token_file}"
        if status == 403:
            return f" -- the token in {self.token_file} lacks that scope (the server's admin.token may do everything)"
        return ""

    def check_admin(self):
        """Fails fast (Fatal) unless the token may do what an admin may: GET /v1/tokens needs scope admin, reads
        nothing secret and changes nothing. A server without that route (404: no authentication) passes."""
        st, parsed, raw = self.json("GET", "/v1/tokens", timeout=30)
        if st in (401, 403):
            raise Fatal(f"{self.base}: GET /v1/tokens (a check for scope admin): {error_text(st, parsed, raw)}"
                        f"{self.auth_hint(st)}")

    def _request(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if self._token:
            # Unredirected: urllib would copy an ordinary header to wherever a redirect points.
            req.add_unredirected_header("Authorization", f"Bearer {self._token}")
        return req

    def open(self, path, timeout):
        """GET `path` with the token, the answer left open for streaming (urlopen's errors are raised)."""
        return urllib.request.urlopen(self._request("GET", path), timeout=timeout)

    def request(self, method, path, body=None, ctype=None, timeout=120):
        """(status, bytes). HTTP errors are returned; a connection failure raises Fatal."""
        req = self._request(method, path, body)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Fatal(f"kmodforge server {self.base} unreachable ({method} {path}): {reason}")

    def json(self, method, path, obj=None, timeout=120):
        body = None if obj is None else json.dumps(obj).encode()
        st, data = self.request(method, path, body, "application/json" if body is not None else None, timeout)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return st, parsed, data


def q(s):
    return urllib.parse.quote(s, safe="")


def error_text(status, parsed, raw):
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        e = parsed["error"]
        return f"{status} {e.get('kind', '?')}: {e.get('message', '')}"
    return f"{status}: {raw[:200].decode('utf-8', 'replace').strip()}"


def tar_gz(tree):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for child in sorted(os.listdir(tree)):
            tf.add(os.path.join(tree, child), arcname=child)
    return buf.getvalue()


def prepare_kernels(srv, kernels):
    out = {}
    for k in kernels:
        log(f"  PUT /v1/kernels/{k} (blocks until the builder image is ready) ...")
        t0 = time.monotonic()
        st, parsed, raw = srv.json("PUT", f"/v1/kernels/{q(k)}", timeout=7200)
        secs = time.monotonic() - t0
        if st != 200:
            raise Fatal(f"PUT /v1/kernels/{k}: {error_text(st, parsed, raw)}{srv.auth_hint(st)}")
        image = (parsed or {}).get("image") or {}
        out[k] = {"seconds": round(secs, 2), "image": image.get("tag"), "image_id": image.get("id"),
                  "compiler": (parsed or {}).get("compiler")}
        log(f"    ready in {secs:.1f} s: {image.get('tag')} ({(parsed or {}).get('compiler')})")
    return out


WARM_MODULE = "kmf-image-warmup"


def warm_images(srv, pkgs, order, kernels, work):
    """Builds the builder images with each package set the corpus asks for, before the timed builds (DKMS's
    side has its Depends installed beforehand too): one throw-away module whose MAKE is `true` per package set,
    built for every kernel side by side; its build fails (it makes no module) once the image exists."""
    sets = sorted({tuple(pkgs[p]["settings"]["packages"]) for p in order
                   if (pkgs[p].get("settings") or {}).get("packages")})
    if not sets:
        return 0.0
    tree = work / "warm-src"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "dkms.conf").write_text(f'PACKAGE_NAME="{WARM_MODULE}"\nPACKAGE_VERSION="1"\nMAKE[0]="true"\n'
                                    f'BUILT_MODULE_NAME[0]="kmf_image_warmup"\nDEST_MODULE_LOCATION[0]="/updates"\n')
    t0 = time.monotonic()
    for i, packages in enumerate(sets):
        version = f"1.{i}"
        st, data = srv.request("PUT", f"/v1/modules/{WARM_MODULE}/{version}?replace=true", tar_gz(tree),
                               "application/gzip", timeout=600)
        if st not in (200, 201):
            raise Fatal(f"warm-up module: PUT answered {st}: {data[:300]!r}")
        st, parsed, raw = srv.json("PUT", f"/v1/modules/{WARM_MODULE}/settings", {"packages": list(packages)})
        if st != 200:
            raise Fatal(f"warm-up module settings: {error_text(st, parsed, raw)}")
        threads = []
        for k in kernels:
            def one(k=k):
                st, parsed, raw = srv.json("POST", "/v1/builds", {"name": WARM_MODULE, "version": version,
                                                                  "kernel": k, "arch": ARCH})
                bid = ((parsed or {}).get("build") or {}).get("id") if isinstance(parsed, dict) else None
                while bid:
                    time.sleep(0.5)
                    st, parsed, raw = srv.json("GET", f"/v1/builds/{q(bid)}")
                    if st != 200 or parsed["build"]["state"] not in ("queued", "running"):
                        break
            threads.append(threading.Thread(target=one, daemon=True))
            threads[-1].start()
        for t in threads:
            t.join()
        log(f"  images with {' '.join(packages)}: ready for {', '.join(kernels)}")
    for i in range(len(sets)):
        srv.json("DELETE", f"/v1/modules/{WARM_MODULE}/1.{i}")
    return round(time.monotonic() - t0, 1)


def register(srv, pkgs, order, keep_cache):
    """DELETE (unless keep_cache) + PUT every module, then its settings. Returns {pkg: error or None}."""
    errors = {}
    for p in order:
        info = pkgs[p]
        n, v = info["name"], info["version"]
        path = f"/v1/modules/{q(n)}/{q(v)}"
        if not keep_cache:
            st, parsed, raw = srv.json("DELETE", path)
            if st not in (200, 204, 404):
                errors[p] = f"DELETE {path}: {error_text(st, parsed, raw)}"
                log(f"  {p}: {errors[p]}")
                continue
        body = tar_gz(info["tree"])
        # After the DELETE, `replace=true` (admin): a version that was built is pinned to its source digest, and
        # a newer Debian revision can bring other content under the same DKMS version (409 immutable_version).
        put = path if keep_cache else f"{path}?replace=true"
        st, data = srv.request("PUT", put, body, "application/gzip", timeout=600)
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if st not in (200, 201):
            errors[p] = f"PUT {path}: {error_text(st, parsed, data)}"
            log(f"  {p}: {errors[p]}")
            continue
        info["register"] = {"status": st, "digest": parsed.get("digest"), "created": parsed.get("created"),
                            "files": parsed.get("files"), "bytes": parsed.get("bytes"),
                            "declared": parsed.get("declared")}
        info["warnings"] = parsed.get("warnings") or []
        log(f"  {p}: {n}/{v} registered ({st}, {parsed.get('files')} files, {len(body)} bytes tar.gz)"
            + "".join(f"\n    warning: {w}" for w in info["warnings"]))
    for p in order:
        if p in errors:
            continue
        info = pkgs[p]
        spath = f"/v1/modules/{q(info['name'])}/settings"
        if info["settings"]:
            st, parsed, raw = srv.json("PUT", spath, info["settings"])
            ok = st == 200 and isinstance(parsed, dict) and "packages" in parsed and "build_depends" in parsed
            if not ok:
                kind = ((parsed or {}).get("error") or {}).get("kind") if isinstance(parsed, dict) else None
                hint = ""
                # An older server routes PUT /v1/modules/{name}/settings to "add version 'settings'" and
                # answers 400 not_a_tar (or 404 unknown_module for GET/DELETE).
                if st in (401, 403):
                    hint = srv.auth_hint(st)
                elif st in (404, 405) or kind in ("not_a_tar", "unknown_module", "bad_archive", "invalid_archive"):
                    hint = (" -- this kmodforge-server does not implement PUT /v1/modules/{name}/settings; "
                            "run a server that has the per-module settings API")
                elif st == 200:
                    hint = " -- the answer is not a settings object"
                raise Fatal(f"PUT {spath} {json.dumps(info['settings'])}: {error_text(st, parsed, raw)}{hint}")
            info["settings_stored"] = parsed
            log(f"  {p}: settings {json.dumps(info['settings'])} stored")
        else:
            # Reset settings left by earlier runs. 404 = none stored (or an older server without settings).
            st, parsed, raw = srv.json("DELETE", spath)
            if st not in (200, 204, 404):
                log(f"  {p}: warning: DELETE {spath}: {error_text(st, parsed, raw)}")
    return errors


class LogFollower(threading.Thread):
    """Follows GET /v1/builds/{id}/log and stamps the server's own "[kmodforge] " lines with the client clock,
    to tell the builder image (with the module's packages) and BUILD_DEPENDS time apart from the build."""

    def __init__(self, srv, bid, t0, timeout):
        super().__init__(daemon=True)
        self.srv = srv
        self.path = f"/v1/builds/{q(bid)}/log"
        self.t0, self.timeout = t0, timeout
        self.marks = []  # (seconds since POST, line)

    def run(self):
        try:
            with self.srv.open(self.path, self.timeout) as resp:
                for raw in resp:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if line.startswith("[kmodforge] "):
                        self.marks.append((round(time.monotonic() - self.t0, 2), line[:300]))
        except (OSError, ValueError, http.client.HTTPException):
            pass

    def phases(self):
        image = deps = None
        for t, line in self.marks:
            if image is None and line.startswith("[kmodforge] builder image "):
                image = t
            if line.startswith("[kmodforge] BUILD_DEPENDS ") and image is not None:
                deps = round(t - image, 2)
        return {"log_marks": self.marks, "image_seconds": image, "deps_seconds": deps}


def kmf_build(srv, info, kernel, work, poll, build_timeout):
    n, v = info["name"], info["version"]
    row = {"package": info["package"], "name": n, "version": v, "kernel": kernel, "state": None,
           "cached": False, "build_id": None, "wall_seconds": None, "server_seconds": None,
           "build_seconds": None, "failure": None, "files": [], "warnings": [], "error": None}
    t0 = time.monotonic()
    st, parsed, raw = srv.json("POST", "/v1/builds", {"name": n, "version": v, "kernel": kernel, "arch": ARCH})
    if st not in (200, 202) or not isinstance(parsed, dict) or "build" not in parsed:
        row["wall_seconds"] = round(time.monotonic() - t0, 2)
        err = ((parsed or {}).get("error") or {}) if isinstance(parsed, dict) else {}
        if err.get("kind") in FAILURE_KINDS:
            # Refused at submission with a build failure kind: a kmodforge outcome, not a harness problem.
            row["state"] = "not_applicable" if err["kind"] == "not_applicable" else "failed"
            row["failure"] = {"kind": err["kind"], "message": err.get("message"),
                              "log_tail": err.get("log_tail") or "", "http_status": st}
        else:
            row["state"] = "error"
            row["error"] = f"POST /v1/builds: {error_text(st, parsed, raw)}"
        return row
    resp = parsed
    bid = resp["build"]["id"]
    row["build_id"] = bid
    row["cached"] = bool(resp.get("cached"))
    follower = None
    if resp["build"]["state"] in ("queued", "running"):
        follower = LogFollower(srv, bid, t0, build_timeout)
        follower.start()
    while resp["build"]["state"] in ("queued", "running"):
        if time.monotonic() - t0 > build_timeout:
            row["wall_seconds"] = round(time.monotonic() - t0, 2)
            row["state"] = "error"
            row["error"] = f"build {bid} not final after {build_timeout} s (client gave up)"
            return row
        time.sleep(poll)
        st, parsed, raw = srv.json("GET", f"/v1/builds/{q(bid)}")
        if st != 200 or not isinstance(parsed, dict) or "build" not in parsed:
            row["wall_seconds"] = round(time.monotonic() - t0, 2)
            row["state"] = "error"
            row["error"] = f"GET /v1/builds/{bid}: {error_text(st, parsed, raw)}"
            return row
        resp = parsed
    row["wall_seconds"] = round(time.monotonic() - t0, 2)
    if follower:
        follower.join(10)
        row.update(follower.phases())
    b = resp["build"]
    row["state"] = b["state"]
    row["server_seconds"] = b.get("seconds")
    row["warnings"] = b.get("warnings") or []
    f = b.get("failure")
    if f:
        tail = (f.get("log_tail") or "").splitlines()[-15:]
        row["failure"] = {"kind": f.get("kind"), "message": f.get("message"), "log_tail": "\n".join(tail)}
    logdir = work / "logs" / "kmodforge"
    logdir.mkdir(parents=True, exist_ok=True)
    st, data = srv.request("GET", f"/v1/builds/{q(bid)}/log", timeout=300)
    if st == 200:
        lf = logdir / f"{info['package']}_{kernel}.log"
        lf.write_bytes(data)
        row["log_file"] = str(lf)
        if row["failure"]:
            text = "\n".join(ln for ln in data.decode("utf-8", "replace").splitlines()
                             if not ln.startswith("[kmodforge] "))
            row["failure"]["first_error"] = first_error_line(text) or None
    art = resp.get("artifact")
    if b["state"] == "succeeded" and art:
        row["build_seconds"] = art.get("build_seconds")
        row["artifact_key"] = art.get("key")
        row["manifest_packages"] = art.get("packages") or []
        row["dependencies"] = art.get("dependencies") or []
        kodir = work / "ko" / "kmodforge" / info["package"] / kernel
        if kodir.exists():
            shutil.rmtree(kodir)
        kodir.mkdir(parents=True)
        for af in art.get("files") or []:
            fname = af["file"]
            mi = af.get("modinfo") or {}
            entry = {"file": fname, "size": af.get("size"), "sha256": af.get("sha256"),
                     "dest_location": af.get("dest_location"),
                     "manifest_modinfo": {"version": mi.get("version"), "srcversion": mi.get("srcversion"),
                                          "vermagic": mi.get("vermagic"),
                                          "depends": ",".join(mi.get("depends") or [])},
                     "modinfo": None, "download": None}
            st, data = srv.request("GET", f"/v1/artifacts/{q(n)}/{q(v)}/{q(kernel)}/files/{q(fname)}",
                                   timeout=600)
            how = "artifact"
            if st != 200 or hashlib.sha256(data).hexdigest() != af.get("sha256"):
                # The (name, version, kernel) manifest can be a newer one: fall back to the content address.
                st, data = srv.request("GET", f"/v1/blobs/{q(af.get('sha256') or '')}", timeout=600)
                how = "blob"
            if st == 200 and hashlib.sha256(data).hexdigest() == af.get("sha256"):
                kf = kodir / fname
                kf.write_bytes(data)
                entry["download"] = how
                entry["modinfo"] = modinfo_fields(kf)
            else:
                entry["download"] = f"failed ({st})"
            row["files"].append(entry)
    return row


def run_kmodforge(srv, pkgs, order, kernels, work, args):
    results = {"server": srv.base, "kernels": {}, "register_errors": {}, "rows": []}
    st, parsed, raw = srv.json("GET", "/healthz", timeout=10)
    if st != 200:
        raise Fatal(f"kmodforge server {srv.base}: GET /healthz answered {error_text(st, parsed, raw)}")
    results["server_version"] = (parsed or {}).get("version")
    log(f"kmodforge: server {srv.base} (version {results['server_version']})")
    results["kernels"] = prepare_kernels(srv, kernels)
    log("kmodforge: registering modules"
        + ("" if args.keep_cache else " (DELETE + PUT: every build below is cold)"))
    results["register_errors"] = register(srv, pkgs, order, args.keep_cache)
    if args.warm_images:
        log("kmodforge: builder images with the packages' build dependencies, before the timed builds")
        results["warm_images_seconds"] = warm_images(srv, pkgs, order, kernels, work)
    def one(p, k):
        if p in results["register_errors"]:
            row = {"package": p, "name": pkgs[p]["name"], "version": pkgs[p]["version"], "kernel": k,
                   "state": "error", "error": results["register_errors"][p], "files": [],
                   "wall_seconds": None, "server_seconds": None, "failure": None, "cached": False}
        else:
            row = kmf_build(srv, pkgs[p], k, work, args.poll, args.build_timeout)
        what = row["state"] + (" (cached)" if row.get("cached") else "")
        if row.get("failure"):
            what += f": {row['failure'].get('kind')}: {row['failure'].get('message')}"
        if row.get("error") and not row.get("failure"):
            what += f": {row['error']}"
        log(f"  {p} {k}: {what}; {fmt_s(row.get('wall_seconds'))} s client, "
            f"{fmt_s(row.get('server_seconds'))} s server, {len(row['files'])} .ko")
        return row

    t0 = time.monotonic()
    if args.side_by_side and len(kernels) > 1:
        # One client per kernel, each through the packages in build order (a dependency before its
        # dependants); the server runs the builds for different kernels side by side (KMODFORGE_MAX_BUILDS).
        log(f"kmodforge: building, the {len(kernels)} kernels side by side")
        per_kernel = {k: [] for k in kernels}

        def stream(k):
            for p in order:
                per_kernel[k].append(one(p, k))

        threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in kernels]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        by_key = {(r["package"], r["kernel"]): r for rows in per_kernel.values() for r in rows}
        results["rows"] = [by_key[(p, k)] for p in order for k in kernels if (p, k) in by_key]
        results["mode"] = "side_by_side"
    else:
        log("kmodforge: building, one at a time")
        for p in order:
            for k in kernels:
                results["rows"].append(one(p, k))
        results["mode"] = "one_at_a_time"
    results["elapsed_seconds"] = round(time.monotonic() - t0, 1)
    log(f"kmodforge: all builds done in {results['elapsed_seconds']} s ({results['mode'].replace('_', ' ')})")
    return results


# --------------------------------------------------------------------------------------------------------------
# DKMS side


def dpkg_installed(pkg):
    r = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg])
    return r.returncode == 0 and r.stdout.startswith("ii")


def dpkg_version(pkg):
    r = run(["dpkg-query", "-W", "-f=${Version}", pkg])
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def apt_install(wanted, no_apt):
    missing = [p for p in wanted if not dpkg_installed(p)]
    if not missing:
        log(f"DKMS: already installed: {' '.join(wanted)}")
        return []
    if no_apt:
        raise Fatal(f"not installed and --no-apt given: {' '.join(missing)}")
    log(f"DKMS: apt-get install -y {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(["apt-get", "install", "-y", "-q"] + missing, env=env)
    if r.returncode != 0:
        raise Fatal(f"apt-get install {' '.join(missing)} failed (exit {r.returncode}): "
                    f"{last_line(r.stderr) or last_line(r.stdout)}")
    return missing


def first_error_line(text):
    lines = (text or "").splitlines()
    for pat in (r"\berror:", r"\*\*\*", r"(?i)\berror\b"):
        for ln in lines:
            if re.search(pat, ln):
                return ln.strip()
    return last_line(text)


def parse_time_file(path):
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        wall, rss = lines[-1].split()[:2]
        return float(wall), int(rss)
    except (OSError, ValueError, IndexError):
        return None, None


def dkms_package(info, kernels, work):
    """The baseline's method for one package; returns one row per kernel."""
    p, n, v = info["package"], info["name"], info["version"]
    src = SRC_TREE / f"{n}-{v}"
    logdir = work / "logs" / "dkms"
    logdir.mkdir(parents=True, exist_ok=True)
    base = {"package": p, "debian_version": info["debian_version"], "name": n, "version": v}
    rows = []

    def skipped(reason):
        log(f"  {p}: SKIPPED: {reason}")
        return [dict(base, kernel=k, status=None, seconds=None, modules=[], failure=reason, skipped=True)
                for k in kernels]

    if (DKMS_TREE / n / v).exists():
        return skipped(f"{DKMS_TREE / n / v} exists: {n}/{v} is already known to dkms on this host; "
                       f"remove it (dkms remove -m {n} -v {v} --all) or use another machine")
    backup = SRC_TREE / f".{n}-{v}.kmodforge-compat-backup"
    in_place = False
    moved = False
    if backup.exists():
        return skipped(f"{backup} exists (left by an interrupted run): move it back to {src} first")
    if src.exists() or src.is_symlink():
        same = run(["diff", "-r", "-q", "--no-dereference", str(src), info["tree"]])
        if same.returncode == 0:
            in_place = True
            log(f"  {p}: {src} already exists and is identical to the package's tree: used in place, kept")
        else:
            os.rename(src, backup)
            moved = True
            log(f"  {p}: {src} already exists and differs: moved to {backup} for the run, restored afterwards")
    note = "source tree already in /usr/src (identical), used in place" if in_place else None
    try:
        if not in_place:
            r = run(["cp", "-a", info["tree"], str(src)])
            if r.returncode != 0:
                raise Fatal(f"cp -a {info['tree']} {src} failed: {last_line(r.stderr)}")
        t0 = time.monotonic()
        add = run(["dkms", "add", "-m", n, "-v", v])
        add_s = round(time.monotonic() - t0, 2)
        if add.returncode != 0:
            msg = f"dkms add failed (exit {add.returncode}): {last_line(add.stderr) or last_line(add.stdout)}"
            log(f"  {p}: {msg}")
            return [dict(base, kernel=k, status=add.returncode, seconds=None, modules=[], failure=msg,
                         add_seconds=add_s) for k in kernels]
        for k in kernels:
            tfile = logdir / f"{p}_{k}.time"
            ofile = logdir / f"{p}_{k}.dkms.log"
            with open(ofile, "w") as out:
                r = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(tfile), "timeout", "-k", "10",
                                    str(DKMS_TIMEOUT), "dkms", "build", "-m", n, "-v", v, "-k", k],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            wall, rss = parse_time_file(tfile)
            output = ofile.read_text(errors="replace")
            row = dict(base, kernel=k, status=r.returncode, seconds=wall, peak_rss_kib=rss, modules=[],
                       failure=None, make_log_tail=None, add_seconds=add_s, note=note)
            mdir = DKMS_TREE / n / v / k / ARCH / "module"
            if mdir.is_dir():
                for f in sorted(os.listdir(mdir)):
                    fp = mdir / f
                    if not fp.is_file():
                        continue
                    mi = modinfo_fields(fp)
                    row["modules"].append({"file": ko_base_name(f), "file_on_disk": f,
                                           "size": fp.stat().st_size, "sha256": sha256_file(fp), **mi})
            if r.returncode != 0:
                mlog = DKMS_TREE / n / v / "build" / "make.log"
                if r.returncode == 124:
                    row["failure"] = f"timeout: dkms build did not end within {DKMS_TIMEOUT} s"
                elif mlog.is_file() and r.returncode != 77:
                    text = mlog.read_text(errors="replace")
                    shutil.copy(mlog, logdir / f"{p}_{k}.make.log")
                    row["failure"] = first_error_line(text)
                    row["make_log_tail"] = "\n".join(text.splitlines()[-15:])
                else:
                    row["failure"] = first_error_line(output)
            else:
                mlog = DKMS_TREE / n / v / k / ARCH / "log" / "make.log"
                if mlog.is_file():
                    shutil.copy(mlog, logdir / f"{p}_{k}.make.log")
            rows.append(row)
            log(f"  {p} {k}: dkms build status {r.returncode}, {fmt_s(wall)} s, {len(row['modules'])} modules"
                + (f": {row['failure']}" if row["failure"] else ""))
    finally:
        rm = run(["dkms", "remove", "-m", n, "-v", v, "--all"])
        if rm.returncode != 0 and (DKMS_TREE / n / v).exists():
            log(f"  {p}: warning: dkms remove -m {n} -v {v} --all failed: {last_line(rm.stderr)}")
        if not in_place:
            shutil.rmtree(src, ignore_errors=True)
            if src.is_symlink():
                src.unlink()
        if moved:
            os.rename(backup, src)
    return rows


def prepare_dkms(pkgs, order, kernels, no_apt):
    """Root check and apt-get install of dkms, the headers and the union of the mapped packages."""
    if os.geteuid() != 0:
        raise Fatal("the DKMS side needs root (run with sudo, or use --skip-dkms / --dkms-results FILE)")
    wanted = ["dkms", "time"] + [f"linux-headers-{k}" for k in kernels]
    for p in order:
        for dep in pkgs[p]["settings"].get("packages", []):
            if dep not in wanted:
                wanted.append(dep)
    installed = apt_install(wanted, no_apt)
    return {
        "source": "this machine",
        "hostname": platform.node(),
        "dkms_version": dpkg_version("dkms"),
        "headers": {k: dpkg_version(f"linux-headers-{k}") for k in kernels},
        "apt_installed_now": installed,
        "build_packages": wanted,
        "nproc": os.cpu_count(),
        "host_kernel": platform.release(),
        "method": "the DKMS baseline's method (compat/README.md): cp -a to /usr/src/N-V; dkms add; per kernel "
                  "/usr/bin/time -f '%e %M' timeout -k 10 900 dkms build -m N -v V -k K </dev/null; "
                  "modinfo of module/*; dkms remove -m N -v V --all; rm -rf /usr/src/N-V",
    }


def run_dkms(meta, pkgs, order, kernels, work):
    meta = dict(meta, measured_at=now_utc().isoformat(timespec="seconds"))
    log(f"DKMS: dkms {meta['dkms_version']}, building one package at a time")
    rows = []
    for p in order:
        rows.extend(dkms_package(pkgs[p], kernels, work))
    return {"meta": meta, "rows": rows}


def load_dkms_results(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise Fatal(f"--dkms-results {path}: cannot read: {e}")
    if isinstance(data, dict) and "dkms" in data and "rows" not in data:
        data = data["dkms"]
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise Fatal(f"--dkms-results {path}: not a DKMS results file (no \"rows\")")
    data.setdefault("meta", {})
    orig = data["meta"].get("source") or "this machine"
    m = data["meta"]
    data["meta"]["source"] = (orig if orig.startswith("baseline") else
                              f"reused from {path} (DKMS run on host {m.get('hostname', '?')} "
                              f"at {m.get('measured_at', '?')})")
    return data


def load_baseline(path):
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise Fatal(f"--baseline {path}: cannot read: {e}")
    out = []
    for r in rows:
        mods = [{"file": ko_base_name(m["file"]), "file_on_disk": m["file"], "size": m.get("size"),
                 "sha256": m.get("sha256"), "version": m.get("version") or "",
                 "srcversion": m.get("srcversion") or "", "vermagic": m.get("vermagic") or "",
                 "depends": m.get("depends") or ""} for m in r.get("modules") or []]
        out.append({"package": r["package"], "debian_version": r.get("debian_version"), "name": r.get("name"),
                    "version": r.get("version"), "kernel": r["kernel"], "status": r.get("status"),
                    "seconds": (r.get("runs_seconds") or [r.get("seconds")])[0],
                    "seconds_median": r.get("seconds"), "peak_rss_kib": r.get("peak_rss_kib"),
                    "modules": mods, "failure": r.get("first_error") or r.get("failure"),
                    "make_log_tail": r.get("make_log_tail")})
    meta = {"source": f"baseline from another machine ({path})", "dkms_version": "3.0.10-8+deb12u1",
            "headers": {"6.1.0-47-amd64": "6.1.170-3", "6.1.0-56-amd64": "6.1.192-2"}, "nproc": 2,
            "note": "compat/dkms-baseline.json: another VM, 2 vCPU, measured 2026-11-24; seconds = first run"}
    return {"meta": meta, "rows": out}


# --------------------------------------------------------------------------------------------------------------
# Comparison and report


def norm(x):
    return (x or "").strip()


def compare_field(pairs):
    """pairs: [(file, dkms value, kmodforge value)] -> (cell text, any mismatch)."""
    results = []
    for f, d, k in pairs:
        d, k = norm(d), norm(k)
        results.append((f, "–" if not d and not k else ("yes" if d == k else "no"), d, k))
    bad = [r for r in results if r[1] == "no"]
    if bad:
        shown = "; ".join(f"{f}: DKMS `{d or '–'}` / kmodforge `{k or '–'}`" for f, _, d, k in bad[:4])
        more = f"; +{len(bad) - 4} more" if len(bad) > 4 else ""
        return f"**no** ({shown}{more})", True
    yes = sum(1 for r in results if r[1] == "yes")
    if yes == 0:
        return "–", False
    if yes < len(results):
        return f"yes ({yes} of {len(results)}; others – on both)", False
    return "yes", False


def dkms_ok(d):
    return d is not None and d.get("status") == 0


def dkms_failed(d):
    return d is not None and d.get("status") not in (0, 77, None)


def dkms_outcome(d):
    if d is None:
        return "no result"
    if d.get("skipped"):
        return "skipped"
    st = d.get("status")
    if st == 124:
        return "124 (timeout)"
    return "–" if st is None else str(st)


def kmf_outcome(k):
    if k is None:
        return "no result"
    st = k.get("state")
    if st == "succeeded":
        return "succeeded" + (" (cached)" if k.get("cached") else "")
    if st == "failed":
        return f"failed: {(k.get('failure') or {}).get('kind')}"
    if st == "error":
        return "harness error"
    return str(st)


def kmf_modinfo(f):
    """Real modinfo of the downloaded file; the manifest's when the download failed."""
    return f.get("modinfo") or f.get("manifest_modinfo") or {}


def shorten(text, n=160):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def compare_row(info, k, d, krow, dkms_label):
    row = {"package": info["package"], "kernel": k, "name": info["name"], "version": info["version"],
           "dkms": dkms_outcome(d), "kmodforge": kmf_outcome(krow),
           "dkms_seconds": d.get("seconds") if d else None,
           "kmodforge_seconds": krow.get("wall_seconds") if krow else None,
           "kmodforge_server_seconds": krow.get("server_seconds") if krow else None,
           "notes": []}
    kfiles = {f["file"]: f for f in (krow or {}).get("files") or []}
    dfiles = {m["file"]: m for m in (d or {}).get("modules") or []}
    row["kmodforge_files"] = sorted(kfiles)
    row["dkms_files"] = sorted(dfiles)
    only_k = sorted(set(kfiles) - set(dfiles))
    only_d = sorted(set(dfiles) - set(kfiles))
    row["only_kmodforge"], row["only_dkms"] = only_k, only_d
    common = sorted(set(kfiles) & set(dfiles))
    vcell, vbad = compare_field([(f, dfiles[f].get("version"), kmf_modinfo(kfiles[f]).get("version"))
                                 for f in common])
    scell, sbad = compare_field([(f, dfiles[f].get("srcversion"), kmf_modinfo(kfiles[f]).get("srcversion"))
                                 for f in common])
    if not common:
        vcell = scell = "n/a"
    row["version_match"], row["srcversion_match"] = vcell, scell
    kstate = (krow or {}).get("state")
    if krow is None or kstate == "error":
        verdict = "harness error"
        if krow is None:
            row["notes"].append("kmodforge: no result")
    elif d is None or d.get("skipped"):
        verdict = "harness error"
        if d is None:
            row["notes"].append(f"DKMS: no result for this package/kernel in {dkms_label}")
    elif dkms_ok(d) and kstate == "succeeded":
        if only_k or only_d or vbad or sbad:
            verdict = "DIFFERENT"
            if only_k or only_d:
                row["notes"].append(".ko names differ")
            if vbad or sbad:
                row["notes"].append("modinfo differs")
        else:
            verdict = "same"
    elif dkms_failed(d) and kstate == "failed":
        verdict = "same (both fail)"
    elif d.get("status") == 77 and kstate == "not_applicable":
        verdict = "same (not applicable)"
    elif dkms_failed(d) and kstate == "succeeded":
        verdict = "kmodforge only"
        deps = info["settings"].get("build_depends") or []
        if deps:
            row["notes"].append(
                f"DKMS built the package alone (baseline method), without the source of {', '.join(deps)} "
                f"in /usr/src; kmodforge built {', '.join(deps)} first (build_depends from Depends)")
        else:
            row["notes"].append("DKMS failed but kmodforge built: check the DKMS failure below")
    else:
        verdict = "DIFFERENT"
        row["notes"].append("outcomes differ")
    if d and d.get("status") != 0:
        row["dkms_cause"] = d.get("failure")
    if krow and (krow.get("failure") or krow.get("error")):
        f = krow.get("failure") or {}
        if f:
            row["kmodforge_cause"] = f"{f.get('kind')}: {f.get('message')}"
            if f.get("first_error") and f["kind"] in ("compile_error", "missing_module", "patch_failed",
                                                       "dependency_failed"):
                row["kmodforge_cause"] += f"; first error: {f['first_error']}"
        else:
            row["kmodforge_cause"] = krow.get("error")
    if verdict != "same":
        if row.get("dkms_cause"):
            row["notes"].append(f"DKMS: {shorten(row['dkms_cause'])}")
        if row.get("kmodforge_cause"):
            f = (krow or {}).get("failure") or {}
            row["notes"].append(f"kmodforge: {shorten(f.get('first_error') or row['kmodforge_cause'])}")
    if krow and krow.get("cached"):
        row["notes"].append("kmodforge answered from its cache")
    img = (krow or {}).get("image_seconds")
    row["kmodforge_image_seconds"] = img if img and img >= 1.0 else 0.0
    if row["kmodforge_image_seconds"]:
        row["notes"].append(f"kmodforge s incl. {img:.1f} s to get the builder image with the module's packages")
    dep = (krow or {}).get("deps_seconds")
    if dep and dep >= 1.0:
        row["notes"].append(f"kmodforge s incl. {dep:.1f} s for BUILD_DEPENDS")
    if d and d.get("note"):
        row["notes"].append(d["note"])
    if info.get("auto_added"):
        row["notes"].append("added to the selection as a build dependency")
    row["notes"] = list(dict.fromkeys(row["notes"]))
    row["verdict"] = verdict
    return row


def ko_cell(row):
    names = row["kmodforge_files"]
    only_k, only_d = set(row["only_kmodforge"]), row["only_dkms"]
    if not names and not row["dkms_files"]:
        return "–"
    if not names:
        return f"– (DKMS: {len(row['dkms_files'])})"
    if not row["dkms_files"]:
        return ", ".join(names) if len(names) <= 6 else f"{len(names)} files"
    if len(names) <= 6:
        parts = [f"{n} (kmodforge only)" if n in only_k else n for n in names]
    else:
        parts = [f"{len(names)} files"] + [f"{n} (kmodforge only)" for n in names if n in only_k]
    parts += [f"~~{n}~~ (DKMS only)" for n in only_d]
    return ", ".join(parts)


def machine_facts(kernels, kmf, dkms):
    facts = {
        "date_utc": now_utc().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "host_kernel": platform.release(),
        "debian_version": None,
        "headers": {k: dpkg_version(f"linux-headers-{k}") for k in kernels},
        "dkms_version_host": dpkg_version("dkms"),
        "kmodforge_commit": None,
        "kmodforge_server": kmf.get("server"),
        "kmodforge_server_version": kmf.get("server_version"),
        "dkms_results": dkms["meta"].get("source"),
    }
    try:
        facts["debian_version"] = Path("/etc/debian_version").read_text().strip()
    except OSError:
        pass
    r = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if r.returncode == 0:
        c = r.stdout.strip()
        # diff-index only reads (it does not refresh the index).
        dirty = run(["git", "-C", str(REPO), "diff-index", "--quiet", "HEAD", "--"]).returncode
        facts["kmodforge_commit"] = c + (" (+ uncommitted changes)" if dirty == 1 else "")
    return facts


def write_report(args, pkgs, order, kernels, kmf, dkms, rows, facts, command):
    lines = []
    w = lines.append
    dlabel = dkms["meta"].get("source", "?")
    from_baseline = dlabel.startswith("baseline")
    w("# DKMS compatibility: real DKMS vs kmodforge on Debian's `*-dkms` packages")
    w("")
    w(f"Generated {facts['date_utc']} by `compat/run.py` (see `compat/README.md`). Command:")
    w("")
    w("```sh")
    w(command)
    w("```")
    w("")
    w("| item | value |")
    w("|---|---|")
    w(f"| machine | {facts['hostname']}, nproc {facts['nproc']}, host kernel {facts['host_kernel']}, "
      f"Debian {facts['debian_version']} |")
    for k in kernels:
        w(f"| kernel `{k}` | `linux-headers-{k}` {facts['headers'].get(k) or 'not installed on this host'}"
          f"; kmodforge image `{(kmf['kernels'].get(k) or {}).get('image')}`, compiler "
          f"`{(kmf['kernels'].get(k) or {}).get('compiler')}` |")
    dver = dkms["meta"].get("dkms_version")
    w(f"| DKMS results | **{md_escape(dlabel)}**; dkms {dver} |")
    if from_baseline:
        w(f"| baseline note | {md_escape(dkms['meta'].get('note', ''))}; its headers: "
          + ", ".join(f"{k} {v}" for k, v in (dkms['meta'].get('headers') or {}).items()) + " |")
    w(f"| kmodforge | commit `{facts['kmodforge_commit']}`, server {facts['kmodforge_server']} "
      f"(version {facts['kmodforge_server_version']}) |")
    w(f"| kmodforge builds | {'cold: every module DELETEd and re-added first' if not args.keep_cache else 'warm: --keep-cache (cache hits possible)'}; "
      f"{'the kernels side by side (one client per kernel)' if kmf.get('mode') == 'side_by_side' else 'one build at a time'}; "
      "time = client wall from `POST /v1/builds` to the final state |")
    w(f"| packages | {len(order)}: {', '.join(order)} |")
    w("")
    w("Builder image preparation (`PUT /v1/kernels/{krel}`, not counted as build time): "
      + ", ".join(f"{k} {fmt_s(v.get('seconds'))} s" for k, v in kmf["kernels"].items()) + ".")
    w("")
    w("Comparison is by `modinfo` (`version`, `srcversion`) and `.ko` file names, never by bytes: DKMS strips and "
      "signs its modules, kmodforge does not sign. \"–\" = the field is empty on both sides; \"n/a\" = no module "
      "on both sides to compare.")
    w("")
    w("## Results")
    w("")
    w("| package | kernel | DKMS | kmodforge | .ko (kmodforge) | version | srcversion | DKMS s | kmodforge s | verdict | note |")
    w("|---|---|---|---|---|---|---|---:|---:|---|---|")
    for r in rows:
        verdict = r["verdict"] if r["verdict"] in PASSING else f"**{r['verdict']}**"
        w(f"| {r['package']} | {r['kernel']} | {md_escape(r['dkms'])} | {md_escape(r['kmodforge'])} | "
          f"{md_escape(ko_cell(r))} | {md_escape(r['version_match'])} | "
          f"{md_escape(r['srcversion_match'])} | {fmt_s(r['dkms_seconds'])} | {fmt_s(r['kmodforge_seconds'])} | "
          f"{verdict} | {md_escape('; '.join(r['notes']))} |")
    w("")
    w("## Summary")
    w("")
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICT_ORDER}
    w("| verdict | rows |")
    w("|---|---:|")
    for v in VERDICT_ORDER:
        if counts[v] or v in PASSING:
            w(f"| {v} | {counts[v]} |")
    w(f"| **total** | **{len(rows)}** |")
    w("")
    w("Total wall time (seconds; sums over the rows above, failures included):")
    w("")
    w("| | " + " | ".join(kernels) + " | all |")
    w("|---|" + "---:|" * (len(kernels) + 1))

    def sums(key):
        per = [sum(r[key] or 0 for r in rows if r["kernel"] == k) for k in kernels]
        return per + [sum(per)]

    dname = "DKMS, " + ("baseline from another machine (first runs)" if from_baseline
                        else ("on this machine" if dlabel == "this machine" else dlabel))
    w(f"| {md_escape(dname)} | " + " | ".join(f"{x:.1f}" for x in sums("dkms_seconds")) + " |")
    w("| kmodforge, client wall (POST to final state) | "
      + " | ".join(f"{x:.1f}" for x in sums("kmodforge_seconds")) + " |")
    if any(r["kmodforge_image_seconds"] for r in rows):
        w("| kmodforge, client wall minus builder-image-with-packages time | "
          + " | ".join(f"{a - b:.1f}" for a, b in zip(sums("kmodforge_seconds"), sums("kmodforge_image_seconds")))
          + " |")
    if kmf.get("elapsed_seconds") is not None:
        mode = kmf.get("mode", "one_at_a_time")
        side = kmf.get("mode") == "side_by_side"
        warm = kmf.get("warm_images_seconds")
        w(f"| kmodforge, elapsed for all builds ({'kernels side by side' if side else 'one at a time'}"
          + (f"; images with build dependencies made beforehand, {warm:.0f} s, not counted" if warm else "") + ") | "
          + " | ".join("–" for _ in kernels) + f" | {kmf['elapsed_seconds']:.1f} |")
    w("| kmodforge, server job time (`build.seconds`) | "
      + " | ".join(f"{x:.1f}" for x in sums("kmodforge_server_seconds")) + " |")
    base = load_baseline_sums(args.baseline, [r["package"] for r in rows], kernels)
    if base is not None and not from_baseline:
        w("| DKMS baseline (other machine), same packages, first runs | "
          + " | ".join("–" if x is None else f"{x:.1f}" for x in base) + " |")
    w("")
    w(f"For reference, the baseline's whole corpus (30 packages x 2 kernels, first runs) took {BASELINE_TOTAL_S} s "
      "with DKMS 3.0.10 on a 2-vCPU VM (compat/README.md, \"The DKMS baseline\").")
    w("")
    w("### Build dependency mapping (Depends -> kmodforge settings)")
    w("")
    w("| package | dkms name / version | Depends | settings |")
    w("|---|---|---|---|")
    for p in order:
        info = pkgs[p]
        w(f"| {p} | {info['name']} / {info['version']} | {md_escape(info['depends'] or '–')} | "
          f"{md_escape(json.dumps(info['settings']) if info['settings'] else '–')} |")
    w("")
    w("Dropped as runtime-only (not needed to build a module; the baseline did not install them either): "
      + "; ".join(f"`{k}` ({v})" for k, v in RUNTIME_ONLY.items()) + ".")
    warns = [(p, wn) for p in order for wn in pkgs[p].get("warnings") or []]
    if warns:
        w("")
        w("### Warnings from `PUT /v1/modules`")
        w("")
        for p, wn in warns:
            w(f"- {p}: {md_escape(wn)}")
    w("")
    w("### Failures and explanations")
    w("")
    any_fail = False
    for r in rows:
        items = []
        if r["dkms"] != "0":
            items.append(f"DKMS status {r['dkms']}: `{md_escape(r.get('dkms_cause') or '?')}`")
        if not r["kmodforge"].startswith("succeeded"):
            items.append(f"kmodforge: `{md_escape(r.get('kmodforge_cause') or r['kmodforge'])}`")
        elif r["dkms"] == "0" and (r["only_kmodforge"] or r["only_dkms"]):
            items.append(f"only kmodforge: {', '.join(r['only_kmodforge']) or '–'}; "
                         f"only DKMS: {', '.join(r['only_dkms']) or '–'}")
        if items or r["verdict"] != "same":
            any_fail = True
            other = [n for n in r["notes"] if not n.startswith(("DKMS: ", "kmodforge: "))]
            w(f"- **{r['package']} {r['kernel']}** ({r['verdict']}): " + "; ".join(items)
              + (f". {'; '.join(other)}" if other else ""))
    if not any_fail:
        w("None.")
    w("")
    w(f"Raw results: `{args.json_out}` (kmodforge rows with every `.ko`'s modinfo, DKMS rows, this comparison).")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    return counts


def load_baseline_sums(path, packages, kernels):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    pk = set(packages)
    per = []
    for k in kernels:
        sel = [r for r in data if r["package"] in pk and r["kernel"] == k]
        per.append(sum((r.get("runs_seconds") or [r.get("seconds") or 0])[0] for r in sel) if sel else None)
    known = [x for x in per if x is not None]
    return per + [sum(known) if known else None]


def chown_like_sudo(paths):
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid:
        return
    for p in paths:
        try:
            os.chown(p, int(uid), int(gid))
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="compat/run.py",
        description="Build Debian's *-dkms packages with real DKMS and with a running kmodforge server, "
                    "compare the modules by modinfo, and write docs/COMPATIBILITY.md + docs/compatibility.json.",
        epilog="Exit status: 0 all rows same / same (both fail) / same (not applicable) / kmodforge only; "
               "1 some row DIFFERENT or harness error; 2 setup error. See compat/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="kmodforge server URL, already running (e.g. http://127.0.0.1:8080)")
    ap.add_argument("--token-file", metavar="FILE", default=os.environ.get("KMODFORGE_TOKEN_FILE") or None,
                    help="file holding an admin bearer token (e.g. <data-dir>/admin.token), sent as "
                         "'Authorization: Bearer' on every request (default: $KMODFORGE_TOKEN_FILE; neither: no "
                         "header)")
    ap.add_argument("--kernels", default=DEFAULT_KERNELS,
                    help=f"comma-separated kernel releases (default {DEFAULT_KERNELS})")
    ap.add_argument("--packages", help="comma-separated *-dkms packages (default: all of apt-cache search -- -dkms "
                                       "ending in -dkms, minus dh-dkms); *-dkms packages they depend on are added")
    ap.add_argument("--work", default="/var/tmp/kmodforge-compat",
                    help="work dir: extracted trees, logs, downloaded .ko, dkms-results.json (default %(default)s)")
    ap.add_argument("--out", default=str(REPO / "docs" / "COMPATIBILITY.md"), help="Markdown report (default %(default)s)")
    ap.add_argument("--json-out", help="raw results JSON (default: compatibility.json next to --out)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--dkms-results", metavar="FILE",
                   help="reuse the DKMS results of a previous run (its dkms-results.json or compatibility.json) "
                        "instead of running DKMS")
    g.add_argument("--skip-dkms", action="store_true",
                   help="do not run DKMS; compare against the baseline JSON (labelled 'baseline from another machine')")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="baseline JSON (default %(default)s)")
    ap.add_argument("--keep-cache", action="store_true",
                    help="do not DELETE modules before re-adding them (builds may be cache hits); default: cold")
    ap.add_argument("--no-apt", action="store_true",
                    help="do not apt-get install anything for the DKMS side; fail if something is missing")
    ap.add_argument("--poll", type=float, default=0.2, help="GET /v1/builds/{id} interval in seconds (default %(default)s)")
    ap.add_argument("--warm-images", action="store_true",
                    help="kmodforge side: build the builder images with the packages' build dependencies "
                         "(settings.packages) before the timed builds, as DKMS's side has them installed")
    ap.add_argument("--side-by-side", action="store_true",
                    help="kmodforge side: build for the kernels side by side (one client per kernel, each going "
                         "through the packages in order) instead of one build at a time; the report gives the "
                         "elapsed time of all builds")
    ap.add_argument("--build-timeout", type=float, default=7200,
                    help="client-side limit per kmodforge build, seconds (default %(default)s)")
    args = ap.parse_args(argv)
    args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not args.kernels:
        ap.error("--kernels is empty")
    for k in args.kernels:
        if not re.fullmatch(r"[A-Za-z0-9._+~-]+", k):
            ap.error(f"bad kernel release: {k}")
    if args.packages:
        args.packages = [p.strip() for p in args.packages.split(",") if p.strip()]
        for p in args.packages:
            if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*-dkms", p):
                ap.error(f"not a *-dkms package name: {p}")
    if not args.json_out:
        args.json_out = str(Path(args.out).parent / "compatibility.json")
    return args


def main(argv):
    args = parse_args(argv)
    command = "compat/run.py " + shlex.join(argv)
    if os.environ.get("SUDO_USER"):
        command = "sudo " + command
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-cache", "apt-get", "dpkg-deb", "bash"):
        if not find_tool(tool):
            raise Fatal(f"{tool} not found (a Debian host is needed)")
    if not FETCH.is_file():
        raise Fatal(f"{FETCH} missing")
    srv = Server(args.server, args.token_file)
    st, parsed, raw = srv.json("GET", "/healthz", timeout=10)  # fail fast before any download
    if st != 200:
        raise Fatal(f"kmodforge server {args.server}: GET /healthz answered {error_text(st, parsed, raw)}")
    srv.check_admin()  # PUT /v1/kernels and DELETE /v1/modules need scope admin: fail before any download too
    if not args.skip_dkms and not args.dkms_results and os.geteuid() != 0:
        raise Fatal("the DKMS side needs root: run with sudo, or use --skip-dkms / --dkms-results FILE")

    selection = args.packages or corpus_listing()
    log(f"packages: fetching {len(selection)} into {work / 'src'}")
    pkgs = fetch_packages(selection, work, args.kernels[0])
    map_settings(pkgs)
    order = build_order(pkgs)
    log("Depends -> kmodforge settings:")
    for p in order:
        info = pkgs[p]
        log(f"  {p} ({info['debian_version']}) = {info['name']}/{info['version']}: "
            f"{json.dumps(info['settings']) if info['settings'] else 'no settings'}")
        for m in info["mapping"]:
            log(f"      {m['depends']}: {m['action']}")

    # DKMS build dependencies are installed first, so an apt failure stops the run before any build.
    dkms = dkms_meta = None
    if args.skip_dkms:
        dkms = load_baseline(args.baseline)
    elif args.dkms_results:
        dkms = load_dkms_results(args.dkms_results)
    else:
        dkms_meta = prepare_dkms(pkgs, order, args.kernels, args.no_apt)

    kmf = run_kmodforge(srv, pkgs, order, args.kernels, work, args)

    if dkms is None:
        dkms = run_dkms(dkms_meta, pkgs, order, args.kernels, work)
        dpath = work / "dkms-results.json"
        dpath.write_text(json.dumps(dkms, indent=1) + "\n")
        log(f"DKMS results: {dpath} (reuse with --dkms-results {dpath})")
    else:
        log(f"DKMS: not run; results: {dkms['meta']['source']}")

    dindex = {(r["package"], r["kernel"]): r for r in dkms["rows"]}
    kindex = {(r["package"], r["kernel"]): r for r in kmf["rows"]}
    rows = [compare_row(pkgs[p], k, dindex.get((p, k)), kindex.get((p, k)), dkms["meta"].get("source", ""))
            for p in order for k in args.kernels]
    facts = machine_facts(args.kernels, kmf, dkms)
    counts = write_report(args, pkgs, order, args.kernels, kmf, dkms, rows, facts, command)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps({
        "command": command, "facts": facts, "kernels": args.kernels,
        "packages": {p: pkgs[p] for p in order}, "runtime_only": RUNTIME_ONLY,
        "kmodforge": kmf, "dkms": dkms, "comparison": rows, "verdicts": counts,
    }, indent=1) + "\n")
    chown_like_sudo([args.out, args.json_out])
    log("")
    log("verdicts: " + ", ".join(f"{v} {c}" for v, c in counts.items() if c))
    log(f"report: {args.out}; raw: {args.json_out}")
    bad = [r for r in rows if r["verdict"] not in PASSING]
    for r in bad:
        log(f"  {r['verdict']}: {r['package']} {r['kernel']}: DKMS {r['dkms']}, kmodforge {r['kmodforge']}; "
            + "; ".join(r["notes"]))
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fatal as e:
        print(f"compat/run.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("compat/run.py: interrupted", file=sys.stderr)
        sys.exit(130)
