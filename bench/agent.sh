#!/usr/bin/env bash
# bench/agent.sh -- kmodforge-agent benchmarks (issue 3), in one run (see bench/README.md for bench/run.sh).
#
#   bench/agent.sh [--runs N] [--warmup N] [--fleet "N ..."] [--fleet-modes "poll verbose"]
#                  [--kernel KREL] [--timeout S] [--no-dkms] [--no-build] [--keep]
#
#   (1) one already-built module for one kernel, over loopback, including depmod:
#       `kmodforge-agent sync --kernel KREL` (a real install) vs `dkms install` of the same module,
#       interleaved, N timed runs each after --warmup untimed ones; plus a no-op sync and depmod alone
#   (2) fleet: N agents (own root, own config) started at the same moment with `sync --kernel KREL`
#       for a module version nothing has built yet, on a fresh server per N: builds that ran, container
#       create events, wall time until the last agent exits, exit codes, sha256 of every installed .ko,
#       server CPU and peak RSS, the agents' summed CPU. Mode "poll" is plain `sync` (the agent polls the
#       build every second); "verbose" is `sync --verbose` (each agent follows the build log).
#
# stdout: machine facts, the command line and Markdown tables. stderr: progress.
# Raw data: bench/results/agent-<timestamp>.json. Needs root for (1)'s DKMS side (apt-get install of
# dkms and the kernel's headers if missing; /usr/src, /var/lib/dkms, /lib/modules/KREL). Everything this
# script creates on the host is removed at exit (the installed packages stay).
# Every server it starts gets a fresh data dir; curl sends the admin token that server writes to
# <data dir>/admin.token (curl -H @header-file), each agent's config names that file (`token_file`). The token
# is never printed. KMODFORGE_SERVER and KMODFORGE_TOKEN_FILE are unset: they would override the agents' config.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
shopt -s inherit_errexit
export LC_ALL=C
unset KMODFORGE_SERVER KMODFORGE_TOKEN_FILE   # the agent reads both; the configs below name our server and token

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
CMDLINE="bench/agent.sh${*:+ $*}"

RUNS=7 WARMUP=1 FLEET="50 200" MODES="poll verbose" KERNEL=6.1.0-47-amd64 TIMEOUT=600
DKMS=1 BUILD=1 KEEP=0
MODULE=kmf-hello MODVER=1.0 KO=kmf_hello.ko

while (($#)); do
    case $1 in
        --runs) posint "$1" "${2:-}"; RUNS=$2; shift 2 ;;
        --warmup) posint "$1" "${2:-}"; WARMUP=$2; shift 2 ;;
        --fleet) FLEET=${2?--fleet needs a list of sizes}; shift 2 ;;
        --fleet-modes) MODES=${2:?--fleet-modes needs "poll", "verbose" or both}; shift 2 ;;
        --kernel) KERNEL=${2:?--kernel needs a kernel release}; shift 2 ;;
        --timeout) posint "$1" "${2:-}"; TIMEOUT=$2; shift 2 ;;
        --no-dkms) DKMS=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
((RUNS >= 1)) || die "--runs must be at least 1"
for n in $FLEET; do posint --fleet "$n"; ((n >= 1)) || die "--fleet sizes must be at least 1"; done
for m in $MODES; do [[ $m == poll || $m == verbose ]] || die "--fleet-modes: unknown mode '$m'"; done

for tool in docker curl python3 tar sha256sum strace; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
((BUILD == 0)) || command -v cargo >/dev/null || die "cargo is not installed (or pass --no-build)"
docker info >/dev/null 2>&1 || die "the Docker engine is unreachable ('docker info' failed; is dockerd running, DOCKER_HOST right?)"
((DKMS == 0 || EUID == 0)) || die "the DKMS side needs root (or pass --no-dkms)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmodforge-agent-bench.XXXXXX")
RESULTS="$BENCH_DIR/results"
RAW="$WORK/raw.jsonl"
SERVER_BIN="$REPO/target/release/kmodforge-server"
AGENT_BIN="$REPO/target/release/kmodforge-agent"
DEPMOD=/sbin/depmod
SERVER_PID="" PORT="" BASE="" DATA="" EVENTS_PID=""
AUTH_HEADER="$WORK/auth.header"   # "Authorization: Bearer <admin token>", rewritten by each start_server
KDIR=/lib/modules/$KERNEL
DKMS_SETUP=0 DKMS_SNAPSHOT="" MOK_EXISTED=1 SRC_CREATED=0
CHECKS_FAILED=()
: >"$RAW"

cleanup() {
    local rc=$?
    [[ -z $EVENTS_PID ]] || { kill "$EVENTS_PID" 2>/dev/null || true; wait "$EVENTS_PID" 2>/dev/null || true; }
    stop_server
    ((DKMS_SETUP == 0)) || dkms_cleanup
    if ((KEEP)); then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    ((rc == 0)) || printf 'bench: FAILED (exit %s)\n' "$rc" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# record KIND key=value ...: one raw JSON line (numbers stay numbers)
record() {
    python3 - "$@" >>"$RAW" <<'PY'
import json, sys
kind, *pairs = sys.argv[1:]
out = {"kind": kind}
for p in pairs:
    k, _, v = p.partition("=")
    out[k] = v
    if k.endswith("id") or k in ("run", "version", "command", "git", "mode", "sha256"):
        continue
    try:
        out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    except ValueError:
        pass
print(json.dumps(out))
PY
}
# record_json KIND FILE [key=value ...]: the JSON object in FILE with "kind" (and the string values) added
record_json() {
    python3 -c 'import json,sys; d={"kind": sys.argv[1], **json.load(open(sys.argv[2]))}; d.update(a.split("=", 1) for a in sys.argv[3:]); print(json.dumps(d))' \
        "$@" >>"$RAW"
}
check() {   # check WHAT CONDITION-RESULT(0/1) DETAIL
    if [[ $2 == 1 ]]; then return 0; fi
    CHECKS_FAILED+=("$1: $3")
    say "  CHECK FAILED: $1: $3"
}

# timed.py OUT LOG [VAR=value ...] CMD...: runs CMD (stdout+stderr appended to LOG) and writes to OUT one JSON object:
# wall (perf_counter around posix_spawn + wait4), user/sys (rusage of the child and its waited-for
# children, e.g. depmod), rc. Python's own start-up is outside the timed window.
cat >"$WORK/timed.py" <<'PY'
import json, os, sys, time
out, log, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
env = dict(os.environ)
while argv and "=" in argv[0] and not argv[0].startswith("/"):   # leading VAR=value: like env(1)
    k, _, v = argv.pop(0).partition("=")
    env[k] = v
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
acts = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)]
t0 = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, env, file_actions=acts)
_, status, ru = os.wait4(pid, 0)
t1 = time.perf_counter()
rc = os.waitstatus_to_exitcode(status)
json.dump({"wall": t1 - t0, "user": ru.ru_utime, "sys": ru.ru_stime, "rc": rc, "maxrss_kib": ru.ru_maxrss}, open(out, "w"))
PY

# timed LABEL OUTJSON CMD...: timed.py, dies when CMD fails
timed() {
    local label=$1 out=$2; shift 2
    python3 "$WORK/timed.py" "$out" "$WORK/commands.log" "$@"
    local rc; rc=$(jget "$out" 'd["rc"]')
    [[ $rc == 0 ]] || { tail -n 20 "$WORK/commands.log" >&2; die "$label failed (exit $rc): $*"; }
}

# A kmodforge server sweeps the job containers it left (its owner label); with other servers on the same
# engine the container counts below would be ambiguous, so wait until no foreign job container exists.
wait_for_foreign_jobs() {
    local waited=0 n
    while n=$(docker ps -aq --filter label=kmodforge.job | wc -l) && ((n > 0)); do
        ((waited % 30 == 0)) && say "waiting: $n kmodforge.job container(s) of another server exist (the machine is not quiet)"
        ((waited < 900)) || die "kmodforge.job containers of another server still exist after 900 s; stop it first"
        sleep 1; waited=$((waited + 1))
    done
    ((waited == 0)) || record note "what=waited_for_foreign_jobs" "seconds=$waited"
}

start_server() {
    wait_for_foreign_jobs
    PORT=$(free_port)
    BASE="http://127.0.0.1:$PORT"
    DATA=$(mktemp -d "$WORK/data.XXXX")
    KMODFORGE_LOG=${KMODFORGE_LOG:-info} \
        "$SERVER_BIN" --listen "127.0.0.1:$PORT" --data-dir "$DATA" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 200); do
        curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$WORK/server.log" >&2; die "the server exited at start-up"; }
        ((i < 200)) || { tail -n 20 "$WORK/server.log" >&2; die "the server did not answer $BASE/healthz within 20 s"; }
        sleep 0.1
    done
    write_auth_header "$DATA" "$AUTH_HEADER"   # a fresh data dir: a new admin token
    # Untimed: the builder image of KERNEL (present; rebuilt by the server only if images/builder changed).
    local code t
    read -r code t < <(api PUT "/v1/kernels/$KERNEL" "$WORK/kernel.json" --max-time 3600)
    [[ $code == 200 ]] || die "PUT /v1/kernels/$KERNEL: HTTP $code $(head -c 500 "$WORK/kernel.json")"
    IMAGE_ID=$(jget "$WORK/kernel.json" 'd["image"]["id"]')
}

# api METHOD PATH OUTFILE [curl args...]: prints "HTTP_CODE TIME_TOTAL" (with the admin token)
api() {
    local method=$1 path=$2 out=$3; shift 3
    curl -sS --max-time 600 -H @"$AUTH_HEADER" -X "$method" -o "$out" -w '%{http_code} %{time_total}\n' "$@" "$BASE$path"
}

register_hello() {   # register_hello VERSION: the hello fixture under kmf-hello/VERSION
    local ver=$1 code t
    read -r code t < <(api PUT "/v1/modules/$MODULE/$ver" "$WORK/put.json" --data-binary @"$WORK/hello.tar.gz")
    [[ $code == 201 ]] || die "PUT /v1/modules/$MODULE/$ver: HTTP $code (expected 201) $(cat "$WORK/put.json")"
}

# make_root DIR: a host root with an empty, depmod-ready tree of KERNEL
make_root() {
    mkdir -p "$1/lib/modules/$KERNEL"
    : >"$1/lib/modules/$KERNEL/modules.dep"
    : >"$1/lib/modules/$KERNEL/modules.order"
    : >"$1/lib/modules/$KERNEL/modules.builtin"
}

# write_config FILE ROOT VERSION (token_file: the running server's admin token)
write_config() {
    cat >"$1" <<EOF
server = "$BASE"
token_file = "$DATA/admin.token"
root = "$2"
running_kernel = "$KERNEL"
build_wait_secs = $TIMEOUT

[[module]]
name = "$MODULE"
version = "$3"
EOF
}

# ------------------------------------------------------------------ machine facts
facts() {
    local mem cpu dockerv gitrev
    mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    dockerv=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
    gitrev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
    git -C "$REPO" diff --quiet HEAD -- server api agent 2>/dev/null || gitrev="$gitrev (+ uncommitted changes in server/api/agent)"
    record facts "nproc=$(nproc)" "memory=$mem" "cpu=${cpu:-?}" "host_kernel=$(uname -r)" \
        "docker=$dockerv" "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "git=$gitrev" "command=$CMDLINE" \
        "runs=$RUNS" "warmup=$WARMUP" "fleet=$FLEET" "modes=$MODES" "kernel=$KERNEL" "timeout=$TIMEOUT" \
        "tmp_fs=$(df -T "$WORK" | awk 'NR==2 {print $2}')" \
        "depmod_version=$($DEPMOD --version 2>&1 | head -n 1)" \
        "clk_tck=$(getconf CLK_TCK)" \
        "ca_certs=$(grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt 2>/dev/null || echo 0)" \
        "kmodforge_env=$(env | grep '^KMODFORGE_' | grep -v '^KMODFORGE_\(DATA_DIR\|LISTEN\)=' | tr '\n' ' ' || true)"
    say "machine: $(nproc) CPUs ($cpu), $mem, kernel $(uname -r), Docker $dockerv, git $gitrev"
}

# ------------------------------------------------------------------ (1) DKMS set-up and clean-up
dkms_setup() {
    local t0
    if ! dpkg-query -W -f '${Status}\n' dkms "linux-headers-$KERNEL" 2>/dev/null | grep -c '^install ok installed$' | grep -qx 2; then
        say "installing dkms and linux-headers-$KERNEL (apt-get, untimed)"
        t0=$(now)
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dkms "linux-headers-$KERNEL" \
            >"$WORK/apt.log" 2>&1 || {
            DEBIAN_FRONTEND=noninteractive apt-get update >>"$WORK/apt.log" 2>&1 || true
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dkms "linux-headers-$KERNEL" \
                >>"$WORK/apt.log" 2>&1 || { tail -n 20 "$WORK/apt.log" >&2; die "apt-get install dkms linux-headers-$KERNEL failed"; }
        }
        record note "what=apt_installed" "packages=dkms linux-headers-$KERNEL" "seconds=$(python3 -c "print($(now) - $t0)")"
    fi
    command -v dkms >/dev/null || die "dkms is not installed"
    if dkms status -m "$MODULE" 2>/dev/null | grep -q .; then
        say "removing a leftover $MODULE from DKMS (an interrupted earlier run?)"
        dkms remove -m "$MODULE" -v "$MODVER" --all >/dev/null 2>&1 || true
    fi
    [[ ! -e /usr/src/$MODULE-$MODVER ]] || die "/usr/src/$MODULE-$MODVER exists; remove it first (not ours)"
    [[ -d $KDIR ]] || die "$KDIR does not exist after installing linux-headers-$KERNEL"
    # Everything under KDIR now is the headers package's (build, source links) or was there before us.
    DKMS_SNAPSHOT="$WORK/kdir-before.txt"
    find "$KDIR" -mindepth 1 | sort >"$DKMS_SNAPSHOT"
    [[ -e /var/lib/dkms/mok.key ]] || MOK_EXISTED=0
    DKMS_SETUP=1
    local image=0
    [[ -e $KDIR/kernel || -e /boot/vmlinuz-$KERNEL ]] && image=1
    if [[ ! -e $KDIR/modules.dep ]]; then
        # No kernel image installed: give the tree what depmod needs, as the agent's roots get.
        : >"$KDIR/modules.dep"; : >"$KDIR/modules.order"; : >"$KDIR/modules.builtin"
        record note "what=created_empty_modules_dep" "path=$KDIR" "kernel_image_installed=$image"
    fi
    cp -a "$REPO/tests/fixtures/hello" "/usr/src/$MODULE-$MODVER"; SRC_CREATED=1
    dkms add -m "$MODULE" -v "$MODVER" >>"$WORK/dkms.log" 2>&1 || die "dkms add failed (see --keep: dkms.log)"
    say "dkms build -m $MODULE -v $MODVER -k $KERNEL (untimed)"
    dkms build -m "$MODULE" -v "$MODVER" -k "$KERNEL" >>"$WORK/dkms.log" 2>&1 \
        || { tail -n 30 "$WORK/dkms.log" >&2; die "dkms build failed"; }
    record facts_dkms "dkms_version=$(dkms --version 2>&1 | head -n 1)" "kernel_image_installed=$image" \
        "system_map=$([[ -e /boot/System.map-$KERNEL ]] && echo 1 || echo 0)" \
        "host_gcc=$(gcc --version 2>/dev/null | head -n 1)" \
        "lib_modules_fs=$(df -T "$KDIR" | awk 'NR==2 {print $2}')"
}

dkms_cleanup() {
    DKMS_SETUP=0
    dkms remove -m "$MODULE" -v "$MODVER" --all >/dev/null 2>&1 || true
    ((SRC_CREATED == 0)) || rm -rf "/usr/src/$MODULE-$MODVER"
    ((MOK_EXISTED == 1)) || rm -f /var/lib/dkms/mok.key /var/lib/dkms/mok.pub
    if [[ -n $DKMS_SNAPSHOT && -f $DKMS_SNAPSHOT && -d $KDIR ]]; then
        # Remove every path under KDIR that was not there before (files first, then the empty dirs).
        local p
        while IFS= read -r p; do
            if [[ -d $p && ! -L $p ]]; then rmdir "$p" 2>/dev/null || true; else rm -f "$p"; fi
        done < <(comm -13 "$DKMS_SNAPSHOT" <(find "$KDIR" -mindepth 1 | sort) | sort -r)
    fi
}

# ------------------------------------------------------------------ (1) single sync vs dkms install
single() {
    local root="$WORK/single/root" cfg="$WORK/single/agent.toml" d="$WORK/single/runs"
    mkdir -p "$d"
    make_root "$root"
    write_config "$cfg" "$root" "$MODVER"
    register_hello "$MODVER"
    say "(1) building $MODULE/$MODVER for $KERNEL on the server (untimed, first sync)"
    timed "first sync" "$d/first.json" "$AGENT_BIN" --config "$cfg" sync --kernel "$KERNEL"
    record_json first_sync "$d/first.json"
    mkdir -p "$WORK/no-certs"
    awk '{print} /-----END CERTIFICATE-----/ {exit}' /etc/ssl/certs/ca-certificates.crt >"$WORK/one-ca.pem"
    local total=$((WARMUP + RUNS)) i tag side
    for ((i = 1; i <= total; i++)); do
        if ((i <= WARMUP)); then tag="warmup$i"; else tag="run$((i - WARMUP))"; fi
        local order="kmf dkms"
        ((DKMS)) || order="kmf"
        ((DKMS && i % 2 == 0)) && order="dkms kmf"
        for side in $order; do
            if [[ $side == kmf ]]; then
                timed "agent uninstall" "$d/u.json" "$AGENT_BIN" --config "$cfg" uninstall "$MODULE/$MODVER" --all
                [[ ! -e $root/lib/modules/$KERNEL/updates/dkms/$KO ]] || die "uninstall left $KO in place"
                timed "agent sync" "$d/sync-$tag.json" "$AGENT_BIN" --config "$cfg" sync --kernel "$KERNEL"
                tail -n 1 "$WORK/commands.log" | grep -q 'installed (' \
                    || die "sync did not report an install: $(tail -n 1 "$WORK/commands.log")"
                [[ -f $root/lib/modules/$KERNEL/updates/dkms/$KO ]] || die "sync did not install $KO"
                grep -q "$KO" "$root/lib/modules/$KERNEL/modules.dep" || die "depmod did not index $KO"
                timed "agent no-op sync" "$d/noop-$tag.json" "$AGENT_BIN" --config "$cfg" sync --kernel "$KERNEL"
                tail -n 1 "$WORK/commands.log" | grep -q 'unchanged' \
                    || die "second sync was not a no-op: $(tail -n 1 "$WORK/commands.log")"
                # the same no-op with a one-certificate CA store: the agent's HTTP client (reqwest + rustls)
                # loads and parses every system root certificate at start-up, even for an http:// server
                # (an empty store is refused: "No CA certificates were loaded from the system")
                timed "agent no-op sync, one-cert CA store" "$d/noopnc-$tag.json" \
                    SSL_CERT_FILE="$WORK/one-ca.pem" SSL_CERT_DIR="$WORK/no-certs" \
                    "$AGENT_BIN" --config "$cfg" sync --kernel "$KERNEL"
                tail -n 1 "$WORK/commands.log" | grep -q 'unchanged' \
                    || die "no-op sync with a one-cert CA store: $(tail -n 1 "$WORK/commands.log")"
                timed "depmod (agent root)" "$d/depmod-$tag.json" "$DEPMOD" -a -b "$root" "$KERNEL"
                record_json sync "$d/sync-$tag.json" "run=$tag"
                record_json noop_sync "$d/noop-$tag.json" "run=$tag"
                record_json depmod_root "$d/depmod-$tag.json" "run=$tag"
                record_json noop_sync_nocerts "$d/noopnc-$tag.json" "run=$tag"
                say "  $tag: agent sync $(jget "$d/sync-$tag.json" '"%.3f" % d["wall"]') s, no-op $(jget "$d/noop-$tag.json" '"%.3f" % d["wall"]') s, depmod $(jget "$d/depmod-$tag.json" '"%.4f" % d["wall"]') s"
            else
                timed "dkms uninstall" "$d/du.json" dkms uninstall -m "$MODULE" -v "$MODVER" -k "$KERNEL"
                [[ ! -e $KDIR/updates/dkms/$KO ]] || die "dkms uninstall left $KO in place"
                timed "dkms install" "$d/dkms-$tag.json" dkms install -m "$MODULE" -v "$MODVER" -k "$KERNEL"
                [[ -f $KDIR/updates/dkms/$KO ]] || die "dkms install did not install $KO"
                grep -q "$KO" "$KDIR/modules.dep" || die "DKMS's depmod did not index $KO"
                timed "depmod (host)" "$d/hdepmod-$tag.json" "$DEPMOD" -a "$KERNEL"
                record_json dkms_install "$d/dkms-$tag.json" "run=$tag"
                record_json depmod_host "$d/hdepmod-$tag.json" "run=$tag"
                say "  $tag: dkms install $(jget "$d/dkms-$tag.json" '"%.3f" % d["wall"]') s"
            fi
        done
    done
    # Where a sync's time goes: the same uninstall + sync under strace (fsync/fdatasync durations, depmod's
    # lifetime); strace slows every syscall, so only the durations it reports are used, not its wall time.
    say "(1) $RUNS traced syncs (strace -f -T: fsync and depmod share)"
    for ((i = 1; i <= RUNS; i++)); do
        timed "agent uninstall" "$d/u.json" "$AGENT_BIN" --config "$cfg" uninstall "$MODULE/$MODVER" --all
        strace -f -ttt -T -q -o "$d/strace-$i.txt" \
            -e trace=execve,fsync,fdatasync,syncfs,sync_file_range,renameat2,rename,exit_group \
            "$AGENT_BIN" --config "$cfg" sync --kernel "$KERNEL" >>"$WORK/commands.log" 2>&1 \
            || die "traced sync failed"
        python3 "$BENCH_DIR/agent_report.py" --strace "$d/strace-$i.txt" >"$d/strace-$i.json"
        record_json sync_trace "$d/strace-$i.json"
    done
    # The no-op sync does a manifest GET; time that request alone (curl), for the breakdown.
    local code t
    for ((i = 1; i <= RUNS; i++)); do
        read -r code t < <(api GET "/v1/artifacts/$MODULE/$MODVER/$KERNEL" "$WORK/manifest.json")
        [[ $code == 200 ]] || die "GET manifest: HTTP $code"
        record manifest_get "seconds=$t"
    done
    # the installed .ko and the DKMS-built one (DKMS's is signed with its MOK key, the server's is stripped)
    record single_files "agent_ko_bytes=$(stat -c %s "$root/lib/modules/$KERNEL/updates/dkms/$KO")" \
        "dkms_ko_bytes=$( ((DKMS)) && stat -c %s "$KDIR/updates/dkms/$KO" || echo 0)"
}

# ------------------------------------------------------------------ (2) fleet
# launch.py N T0FILE OUT SERVER_PID TIMEOUT DIR: forks N children that block on one pipe; closing it
# releases them at once, each execs DIR/agent-<i>/cmd (argv in a JSON file). Every exit is reaped with
# wait4 (exit time, status, rusage incl. depmod); agents still running after TIMEOUT s are killed (by pid).
cat >"$WORK/launch.py" <<'PY'
import json, os, signal, sys, time
n, out, server_pid, timeout, base = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
tck = os.sysconf("SC_CLK_TCK")

def server_cpu():
    f = open(f"/proc/{server_pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck, int(f[11]) / tck, int(f[12]) / tck   # utime, stime

def machine_cpu():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return (sum(f[:8]) - idle) / tck

def hwm():
    for line in open(f"/proc/{server_pid}/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            yield line.split(":")[0], int(line.split()[1])

r, w = os.pipe()
pids = {}
for i in range(n):
    d = f"{base}/agent-{i}"
    argv = json.load(open(f"{d}/argv.json"))
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)   # EOF when the parent closes its end: every agent starts now
            fo = os.open(f"{d}/stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fe = os.open(f"{d}/stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fi = os.open("/dev/null", os.O_RDONLY)
            os.dup2(fi, 0); os.dup2(fo, 1); os.dup2(fe, 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    pids[pid] = i
os.close(r)
time.sleep(0.3)            # let every child reach its read()
hwm0 = dict(hwm())
cpu0, m0 = server_cpu(), machine_cpu()
t0 = time.time()
os.close(w)
agents, killed = {}, False
deadline = time.monotonic() + timeout
while pids:
    pid, status, ru = os.wait4(-1, os.WNOHANG)
    if pid == 0:
        if time.monotonic() > deadline and not killed:
            for p in pids:
                os.kill(p, signal.SIGKILL)
            killed = True
        time.sleep(0.002)
        continue
    t = time.time()
    i = pids.pop(pid)
    agents[i] = {"i": i, "end": t - t0, "rc": os.waitstatus_to_exitcode(status),
                 "user": ru.ru_utime, "sys": ru.ru_stime, "maxrss_kib": ru.ru_maxrss}
t_last = time.time()
cpu1, m1 = server_cpu(), machine_cpu()
hwm1 = dict(hwm())
json.dump({"t0": t0, "wall": t_last - t0, "killed_after_timeout": killed,
           "server_cpu": cpu1[0] - cpu0[0], "server_utime": cpu1[1] - cpu0[1], "server_stime": cpu1[2] - cpu0[2],
           "server_cpu_total_after": cpu1[0], "machine_cpu": m1 - m0,
           "server_vmhwm_kib_before": hwm0.get("VmHWM"), "server_vmhwm_kib": hwm1.get("VmHWM"),
           "server_vmrss_kib_after": hwm1.get("VmRSS"),
           "agents": [agents[i] for i in sorted(agents)]}, open(out, "w"))
PY

fleet() {
    local n=$1 mode=$2 ver="fleet-$2-$1-$STAMP" base="$WORK/fleet-$2-$1" i
    say "(2) fleet of $n agents ($mode), $MODULE/$ver: fresh server"
    stop_server; start_server
    register_hello "$ver"
    mkdir -p "$base"
    for ((i = 0; i < n; i++)); do
        local d="$base/agent-$i"
        mkdir -p "$d"
        make_root "$d/root"
        write_config "$d/agent.toml" "$d/root" "$ver"
        if [[ $mode == verbose ]]; then
            printf '["%s", "--config", "%s", "sync", "--kernel", "%s", "--verbose"]\n' "$AGENT_BIN" "$d/agent.toml" "$KERNEL" >"$d/argv.json"
        else
            printf '["%s", "--config", "%s", "sync", "--kernel", "%s"]\n' "$AGENT_BIN" "$d/agent.toml" "$KERNEL" >"$d/argv.json"
        fi
    done
    # Container events of the phase (every build container has the label kmodforge=1).
    local since; since=$(date +%s.%N)
    timeout $((TIMEOUT + 60)) docker events --since "$since" --filter type=container --filter label=kmodforge \
        --format '{{json .}}' >"$base/events.jsonl" 2>"$base/events.err" &
    EVENTS_PID=$!
    sleep 0.5
    say "  releasing $n agents"
    python3 "$WORK/launch.py" "$n" "$base/launch.json" "$SERVER_PID" "$TIMEOUT" "$base"
    sleep 1.5   # let the engine deliver the last events (destroy comes before the build is reported final)
    kill "$EVENTS_PID" 2>/dev/null || true; wait "$EVENTS_PID" 2>/dev/null || true; EVENTS_PID=""
    # Builds: every record of this version; a build that really ran is succeeded and its artifact's
    # build_id is its own id (a cache hit or a joined job carries another build's manifest).
    local code t
    read -r code t < <(api GET "/v1/builds?limit=1000" "$base/builds.json")
    [[ $code == 200 ]] || die "GET /v1/builds: HTTP $code"
    local id
    : >"$base/records.jsonl"
    for id in $(jget "$base/builds.json" '" ".join(b["id"] for b in d if b["version"] == "'"$ver"'")'); do
        read -r code t < <(api GET "/v1/builds/$id" "$base/b.json")
        [[ $code == 200 ]] || die "GET /v1/builds/$id: HTTP $code"
        python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$base/b.json" >>"$base/records.jsonl"
    done
    read -r code t < <(api GET "/v1/artifacts/$MODULE/$ver/$KERNEL" "$base/manifest.json")
    [[ $code == 200 ]] || die "GET manifest of $MODULE/$ver: HTTP $code"
    for ((i = 0; i < n; i++)); do
        local ko="$base/agent-$i/root/lib/modules/$KERNEL/updates/dkms/$KO"
        if [[ -f $ko ]]; then sha256sum "$ko" | cut -d' ' -f1; else echo missing; fi
    done >"$base/sha256.txt"
    cat "$base"/agent-*/stderr >"$base/stderr-all.txt" 2>/dev/null || true
    python3 "$BENCH_DIR/agent_report.py" --fleet "$base" "$n" "$mode" "$ver" >"$base/summary.json"
    record_json fleet "$base/summary.json"
    local s="$base/summary.json"
    check "fleet $mode $n: builds that ran" "$(jget "$s" 'int(d["builds_ran"] == 1)')" "$(jget "$s" 'd["builds_ran"]') (expected 1)"
    check "fleet $mode $n: container create events" "$(jget "$s" 'int(d["container_creates"] == 1)')" "$(jget "$s" 'd["container_creates"]') (expected 1)"
    check "fleet $mode $n: exit codes" "$(jget "$s" 'int(d["exit_codes"] == {"0": d["n"]})')" "$(jget "$s" 'd["exit_codes"]')"
    check "fleet $mode $n: installed .ko" "$(jget "$s" 'int(d["distinct_sha256"] == 1 and d["sha256_matches_manifest"] and d["missing_ko"] == 0)')" \
        "$(jget "$s" '"%s distinct sha256, %s missing, matches manifest: %s" % (d["distinct_sha256"], d["missing_ko"], d["sha256_matches_manifest"])')"
    say "  $n agents ($mode): last exit after $(jget "$s" '"%.2f" % d["wall"]') s; builds ran: $(jget "$s" 'd["builds_ran"]'); container creates: $(jget "$s" 'd["container_creates"]'); exit codes $(jget "$s" 'd["exit_codes"]'); server CPU $(jget "$s" '"%.2f" % d["server_cpu"]') s"
    ((KEEP)) || rm -rf "$base"/agent-*
}

# ------------------------------------------------------------------ main
facts
if ((BUILD)); then
    say "building the release server and agent (cargo build --release -p kmodforge-server -p kmodforge-agent)"
    (cd "$REPO" && cargo build --release -p kmodforge-server -p kmodforge-agent) >"$WORK/cargo.log" 2>&1 \
        || { tail -n 30 "$WORK/cargo.log" >&2; die "cargo build --release failed"; }
fi
[[ -x $SERVER_BIN && -x $AGENT_BIN ]] || die "$SERVER_BIN or $AGENT_BIN does not exist (build them, or drop --no-build)"
[[ -x $DEPMOD ]] || die "$DEPMOD does not exist (the agent runs it)"
tar -C "$REPO/tests/fixtures/hello" -czf "$WORK/hello.tar.gz" .

start_server
record prepare "kernel=$KERNEL" "image_id=$IMAGE_ID"
((DKMS == 0)) || dkms_setup
say "(1) single sync vs dkms install: $WARMUP warm-up + $RUNS timed run(s), interleaved"
single
((DKMS == 0)) || dkms_cleanup
for mode in $MODES; do
    for n in $FLEET; do fleet "$n" "$mode"; done
done
stop_server

mkdir -p "$RESULTS"
python3 "$BENCH_DIR/agent_report.py" "$RAW" "$RESULTS/agent-$STAMP.json"
say "raw results: bench/results/agent-$STAMP.json"
if ((${#CHECKS_FAILED[@]})); then
    printf 'bench: %s check(s) failed:\n' "${#CHECKS_FAILED[@]}" >&2
    printf '  %s\n' "${CHECKS_FAILED[@]}" >&2
    exit 1
fi
