#!/usr/bin/env bash
# bench/run.sh -- kmodforge benchmarks, side by side in one run (see bench/README.md).
#
#   bench/run.sh [--runs N] [--hits N] [--image-runs N] [--warmup N] [--kernel KREL]
#                [--image-kernel KREL] [--jobs N] [--packages "PKG ..."] [--retries N] [--no-build] [--keep]
#
#   (a) cold build, kmodforge vs plain make in the same builder image and sandbox, interleaved
#   (b) cache-hit latencies (POST /v1/builds cached, manifest, .ko download)
#   (c) builder image for a new kernel once the shared toolchain layers exist
#
# stdout: machine facts, the command line and Markdown tables (paste into docs/BENCHMARKS.md).
# stderr: progress. Raw data: bench/results/<timestamp>.json.
# Starts its own release server on a free port with a temp data dir and stops it on exit; every request
# carries the admin token that server writes to <data dir>/admin.token (curl -H @header-file, never printed).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
shopt -s inherit_errexit
export LC_ALL=C

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
CMDLINE="bench/run.sh${*:+ $*}"

RUNS=5 HITS=20 IMAGE_RUNS=1 WARMUP=1 RETRIES=2
KERNEL=6.1.0-47-amd64 IMAGE_KERNEL=6.1.0-56-amd64
JOBS=${KMODFORGE_JOBS:-$(nproc)}
PACKAGES="v4l2loopback-dkms apfs-dkms"
BUILD=1 KEEP=0

while (($#)); do
    case $1 in
        --runs) posint "$1" "${2:-}"; RUNS=$2; shift 2 ;;
        --hits) posint "$1" "${2:-}"; HITS=$2; shift 2 ;;
        --image-runs) posint "$1" "${2:-}"; IMAGE_RUNS=$2; shift 2 ;;
        --warmup) posint "$1" "${2:-}"; WARMUP=$2; shift 2 ;;
        --retries) posint "$1" "${2:-}"; RETRIES=$2; shift 2 ;;
        --jobs) posint "$1" "${2:-}"; JOBS=$2; shift 2 ;;
        --kernel) KERNEL=${2:?--kernel needs a kernel release}; shift 2 ;;
        --image-kernel) IMAGE_KERNEL=${2:?--image-kernel needs a kernel release}; shift 2 ;;
        --packages) PACKAGES=${2:?--packages needs a list}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
((RUNS >= 1)) || die "--runs must be at least 1"
((JOBS >= 1)) || die "--jobs must be at least 1"
[[ $IMAGE_KERNEL != "$KERNEL" ]] || die "--image-kernel must differ from --kernel (its image is removed)"

for tool in docker curl python3 tar; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
((BUILD == 0)) || command -v cargo >/dev/null || die "cargo is not installed (or pass --no-build)"
docker info >/dev/null 2>&1 || die "the Docker engine is unreachable ('docker info' failed; is dockerd running, DOCKER_HOST right?)"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmodforge-bench.XXXXXX")
RESULTS="$BENCH_DIR/results"
RAW="$WORK/raw.jsonl"
SERVER_BIN="$REPO/target/release/kmodforge-server"
TAG_PREFIX=kmodforge-builder:debian-bookworm-
IMAGE="$TAG_PREFIX$KERNEL"
SERVER_PID="" PORT="" BASE="" DATA=""
AUTH_HEADER="$WORK/auth.header"   # "Authorization: Bearer <admin token>", rewritten by each start_server
PLAIN_CONTAINERS=()
IMAGE_KERNEL_EXISTED=0
: >"$RAW"

cleanup() {
    local rc=$?
    stop_server
    local c
    for c in "${PLAIN_CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    if ((KEEP)); then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    ((rc == 0)) || printf 'bench: FAILED (exit %s)\n' "$rc" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.6f}")' "$1" "$2"; }
# record KIND key=value ...: one raw JSON line (numbers stay numbers)
record() {
    python3 - "$@" >>"$RAW" <<'PY'
import json, sys
kind, *pairs = sys.argv[1:]
out = {"kind": kind}
for p in pairs:
    k, _, v = p.partition("=")
    out[k] = v
    if k.endswith("id") or k in ("run", "version", "make", "command", "git"):
        continue
    try:
        out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
    except ValueError:
        pass
print(json.dumps(out))
PY
}

# A kmodforge server sweeps EVERY container labelled kmodforge.job when it starts (not only its own),
# so starting ours while another server builds would kill that server's jobs. Wait for them to end.
wait_for_foreign_jobs() {
    local waited=0 n
    while n=$(docker ps -aq --filter label=kmodforge.job | wc -l) && ((n > 0)); do
        ((waited % 30 == 0)) && say "waiting: $n kmodforge.job container(s) of another server exist; ours would sweep them (the machine is not quiet)"
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
    KMODFORGE_JOBS=$JOBS KMODFORGE_LOG=${KMODFORGE_LOG:-info} \
        "$SERVER_BIN" --listen "127.0.0.1:$PORT" --data-dir "$DATA" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for i in $(seq 200); do
        if curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null; then
            write_auth_header "$DATA" "$AUTH_HEADER"   # a fresh data dir: a new admin token
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$WORK/server.log" >&2; die "the server exited at start-up"; }
        sleep 0.1
    done
    tail -n 20 "$WORK/server.log" >&2
    die "the server did not answer $BASE/healthz within 20 s"
}

# api METHOD PATH OUTFILE [curl args...]: prints "HTTP_CODE TIME_TOTAL" (with the admin token)
api() {
    local method=$1 path=$2 out=$3; shift 3
    curl -sS -H @"$AUTH_HEADER" -X "$method" -o "$out" -w '%{http_code} %{time_total}\n' "$@" "$BASE$path"
}

# ------------------------------------------------------------------ machine facts
facts() {
    local mem cpu dockerv gitrev
    mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    dockerv=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
    gitrev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
    git -C "$REPO" diff --quiet HEAD -- server api images 2>/dev/null || gitrev="$gitrev (+ uncommitted changes in server/api/images)"
    record facts "nproc=$(nproc)" "memory=$mem" "cpu=${cpu:-?}" "host_kernel=$(uname -r)" \
        "docker=$dockerv" "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "git=$gitrev" "command=$CMDLINE" \
        "jobs=$JOBS" "runs=$RUNS" "retries=$RETRIES" "hits=$HITS" "image_runs=$IMAGE_RUNS" "warmup=$WARMUP" \
        "kernel=$KERNEL" "image_kernel=$IMAGE_KERNEL" \
        "kmodforge_env=$(env | grep '^KMODFORGE_' | grep -v '^KMODFORGE_\(DATA_DIR\|LISTEN\)=' | tr '\n' ' ')"
    say "machine: $(nproc) CPUs ($cpu), $mem, kernel $(uname -r), Docker $dockerv, git $gitrev"
}

# ------------------------------------------------------------------ sources
declare -A SRC_DIR SRC_NAME SRC_VER SRC_NFILES
SOURCES=()
fetch_sources() {
    local pkg dir
    for pkg in $PACKAGES; do
        dir=$("$REPO/tests/fixtures/fetch-debian-dkms.sh" "$pkg" "$WORK/src") \
            || die "cannot fetch $pkg (tests/fixtures/fetch-debian-dkms.sh; apt-get update?)"
        SOURCES+=("$pkg")
        SRC_DIR[$pkg]=$dir
        # Both names must be the literal dkms.conf values: MAKE lines use ${PACKAGE_NAME}/${PACKAGE_VERSION}.
        SRC_NAME[$pkg]=$(sed -n 's/^PACKAGE_NAME="\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$dir/dkms.conf" | head -n 1)
        SRC_VER[$pkg]=$(sed -n 's/^PACKAGE_VERSION="\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$dir/dkms.conf" | head -n 1)
        [[ -n ${SRC_NAME[$pkg]} && -n ${SRC_VER[$pkg]} && ${SRC_NAME[$pkg]}${SRC_VER[$pkg]} != *'$'* ]] \
            || die "$pkg: cannot read a literal PACKAGE_NAME/PACKAGE_VERSION from $dir/dkms.conf"
        SRC_NFILES[$pkg]=$(find "$dir" -name '*.c' | wc -l)
        record source "package=$pkg" "name=${SRC_NAME[$pkg]}" "version=${SRC_VER[$pkg]}" \
            "c_files=${SRC_NFILES[$pkg]}" "bytes=$(du -sb "$dir" | cut -f1)"
        say "source $pkg: ${SRC_NAME[$pkg]}/${SRC_VER[$pkg]}, ${SRC_NFILES[$pkg]} .c files"
    done
}

# fresh_tree PKG TAG: a copy of the source whose dkms.conf ends in a unique comment, so its digest, and
# with it the dkms.conf evaluation cache and the artifact cache key, is new (a truly cold build).
fresh_tree() {
    local pkg=$1 tag=$2 out="$WORK/trees/$1/$2"
    rm -rf "$out"; mkdir -p "$out"
    cp -a "${SRC_DIR[$pkg]}/." "$out/"
    printf '\n# kmodforge-bench nonce %s-%s-%s\n' "$STAMP" "$tag" "$RANDOM" >>"$out/dkms.conf"
    tar -C "$out" -czf "$out.tar.gz" .
    printf '%s' "$out"
}

# ------------------------------------------------------------------ (a) kmodforge cold build
# kmodforge_cold PKG TAG TREE: registers TREE (untimed), then times POST /v1/builds -> final state,
# following the build log and stamping every line with the client's clock.
kmodforge_cold() {
    local pkg=$1 tag=$2 tree=$3 name=${SRC_NAME[$1]} ver=${SRC_VER[$1]}
    local d="$WORK/runs/$pkg-$tag-kmodforge"; mkdir -p "$d"
    local code _t
    # Untimed: drop the previous run's module (and its artifacts), upload this run's tree. A version that was
    # built stays pinned to its source digest after the DELETE; replace=true (admin) lets the new tree in.
    read -r code _t < <(api DELETE "/v1/modules/$name/$ver" "$d/delete.json")
    [[ $code == 204 || $code == 404 ]] || die "DELETE module $name/$ver: HTTP $code $(cat "$d/delete.json")"
    read -r code _t < <(api PUT "/v1/modules/$name/$ver?replace=true" "$d/put.json" --data-binary @"$tree.tar.gz")
    [[ $code == 201 ]] || die "PUT module $name/$ver: HTTP $code (expected 201 created) $(cat "$d/put.json")"
    local body t0 t_post t_log_end t_final id state polls=0
    body=$(printf '{"name":"%s","version":"%s","kernel":"%s"}' "$name" "$ver" "$KERNEL")
    t0=$(now)
    read -r code _t < <(api POST /v1/builds "$d/post.json" -H 'content-type: application/json' --data "$body")
    t_post=$(now)
    [[ $code == 202 ]] || die "POST /v1/builds for $name/$ver: HTTP $code (expected 202: not cold?) $(cat "$d/post.json")"
    id=$(jget "$d/post.json" 'd["build"]["id"]')
    curl -sSN --max-time 3600 -H @"$AUTH_HEADER" "$BASE/v1/builds/$id/log" | while IFS= read -r line || [[ -n $line ]]; do
        printf '%s\t%s\n' "$EPOCHREALTIME" "$line"
    done >"$d/log.tsv"
    t_log_end=$(now)
    while :; do
        read -r code _t < <(api GET "/v1/builds/$id" "$d/final.json")
        [[ $code == 200 ]] || die "GET /v1/builds/$id: HTTP $code"
        grep -q '"state":"\(queued\|running\)"' "$d/final.json" || break
        polls=$((polls + 1)); sleep 0.02
    done
    t_final=$(now)
    state=$(jget "$d/final.json" 'd["build"]["state"]')
    if [[ $state != succeeded ]]; then
        cut -f2- "$d/log.tsv" | tail -n 30 >&2
        FAILURE="kmodforge build of $pkg ($tag) ended '$state': $(jget "$d/final.json" 'd["build"].get("failure", {}).get("message")')"
        record failed_attempt "package=$pkg" "run=$tag" "build_id=$id" "state=$state" "message=$FAILURE"
        return 1
    fi
    [[ $(jget "$d/final.json" 'd.get("cached")') == False ]] || die "kmodforge build of $pkg ($tag) was a cache hit"
    MAKE_CMD=$(sed -n 's/^[0-9.]*\t\[kmodforge\] make command: //p' "$d/log.tsv" | head -n 1)
    [[ -n $MAKE_CMD ]] || die "no 'make command:' line in the build log of $pkg ($tag)"
    printf '%s\n' "$MAKE_CMD" >"$d/make_cmd"
    LAST_FILES=$(jget "$d/final.json" '" ".join(f["file"] for f in d["artifact"]["files"])')
    record kmodforge "package=$pkg" "run=$tag" "build_id=$id" "t0=$t0" "t_post=$t_post" \
        "t_log_end=$t_log_end" "t_final=$t_final" "wall=$(elapsed "$t0" "$t_final")" \
        "server_seconds=$(jget "$d/final.json" 'd["build"]["seconds"]')" \
        "build_seconds=$(jget "$d/final.json" 'd["artifact"]["build_seconds"]')" \
        "polls=$polls" "files=$LAST_FILES" "make=$MAKE_CMD" "log=$d/log.tsv"
    say "  kmodforge $pkg ($tag): $(elapsed "$t0" "$t_final") s"
}

# ------------------------------------------------------------------ (a) plain make
# plain_make PKG TAG TREE: the same tree and make command in a fresh container of the same image under
# the same sandbox options; only the `docker exec make` is the measurement, the rest is recorded apart.
plain_make() {
    local pkg=$1 tag=$2 tree=$3 name=${SRC_NAME[$1]} ver=${SRC_VER[$1]}
    local d="$WORK/runs/$pkg-$tag-make"; mkdir -p "$d"
    local dir="/var/lib/dkms/$name/$ver/build" c="kmodforge-bench-$$-$pkg-$tag"
    local mem=$((${KMODFORGE_BUILD_MEMORY_MIB:-4096} * 1024 * 1024))
    local tmpfs=$((${KMODFORGE_BUILD_TMPFS_MIB:-3072} * 1024 * 1024))
    local t_run0 t_run1 t_cp1 t_mk0 t_mk1 t_rm1 rc=0
    PLAIN_CONTAINERS+=("$c")
    t_run0=$(now)
    docker run -d --name "$c" --label kmodforge-bench=1 --read-only --network none --user 1000:1000 \
        --cap-drop ALL --security-opt no-new-privileges --pids-limit "${KMODFORGE_BUILD_PIDS:-1024}" \
        --memory "$mem" --memory-swap "$mem" --cpus "$JOBS" --workdir /tmp \
        --tmpfs "/var/lib/dkms:rw,exec,nosuid,nodev,size=$tmpfs,uid=1000,gid=1000,mode=0755" \
        --tmpfs "/usr/local/src:rw,exec,nosuid,nodev,size=$((tmpfs / 4)),uid=1000,gid=1000,mode=0755" \
        --tmpfs /tmp:rw,exec,nosuid,nodev,size=536870912,mode=1777 \
        "$IMAGE" sleep infinity >/dev/null
    t_run1=$(now)
    docker exec "$c" mkdir -p "$dir"
    tar -C "$tree" -cf - . | docker exec -i "$c" tar -x -C "$dir" --no-same-owner
    t_cp1=$(now)
    # The round trip of one no-op `docker exec` (kmodforge does four execs per build: unpack, eval, build, collect).
    local t_nop0 t_nop1
    t_nop0=$(now); docker exec "$c" true; t_nop1=$(now)
    # bash's `time` inside the container (the image has no /usr/bin/time): real, user, sys of make alone.
    t_mk0=$(now)
    docker exec -w "$dir" -e "MK=$MAKE_CMD" "$c" bash -c \
        'TIMEFORMAT="KMFBENCH %R %U %S"; time { eval "$MK" </dev/null 2>&1; }' \
        >"$d/make.out" 2>"$d/time.out" || rc=$?
    t_mk1=$(now)
    ((rc == 0)) || { tail -n 30 "$d/make.out" >&2; die "plain make of $pkg ($tag) failed (exit $rc): $MAKE_CMD"; }
    local f
    for f in $LAST_FILES; do
        docker exec "$c" test -f "$dir/$f" || die "plain make of $pkg ($tag) did not produce $f"
    done
    docker rm -f "$c" >/dev/null
    t_rm1=$(now)
    unset 'PLAIN_CONTAINERS[-1]'
    local inner
    inner=$(sed -n 's/^KMFBENCH //p' "$d/time.out" | tail -n 1)
    [[ -n $inner ]] || die "no timing line from the container for $pkg ($tag): $(cat "$d/time.out")"
    local real user sys; read -r real user sys <<<"$inner"
    record make "package=$pkg" "run=$tag" "wall=$(elapsed "$t_mk0" "$t_mk1")" \
        "inner_real=$real" "inner_user=$user" "inner_sys=$sys" \
        "docker_run=$(elapsed "$t_run0" "$t_run1")" "copy_in=$(elapsed "$t_run1" "$t_cp1")" \
        "docker_rm=$(elapsed "$t_mk1" "$t_rm1")" "exec_noop=$(elapsed "$t_nop0" "$t_nop1")" "make=$MAKE_CMD"
    say "  plain make $pkg ($tag): $(elapsed "$t_mk0" "$t_mk1") s (inside: $real s)"
}

cold_builds() {
    local i pkg tree total=$((WARMUP + RUNS)) tag
    for ((i = 1; i <= total; i++)); do
        if ((i <= WARMUP)); then tag="warmup$i"; else tag="run$((i - WARMUP))"; fi
        for pkg in "${SOURCES[@]}"; do
            local attempt=0 run_tag=$tag
            while :; do
                tree=$(fresh_tree "$pkg" "$run_tag")
                kmodforge_cold "$pkg" "$run_tag" "$tree" && break
                attempt=$((attempt + 1))
                ((attempt <= RETRIES)) || die "$FAILURE (after $RETRIES retries)"
                say "WARNING: $FAILURE; retrying with a new tree ($attempt/$RETRIES). Is another kmodforge" \
                    "server using this Docker engine? Each one removes every kmodforge.job container when it starts."
                run_tag="$tag-retry$attempt"
            done
            plain_make "$pkg" "$run_tag" "$tree"
        done
    done
}

# ------------------------------------------------------------------ (b) cache hits
cache_hits() {
    local pkg name ver file body i code t url
    for pkg in "${SOURCES[@]}"; do
        name=${SRC_NAME[$pkg]} ver=${SRC_VER[$pkg]}
        body=$(printf '{"name":"%s","version":"%s","kernel":"%s"}' "$name" "$ver" "$KERNEL")
        url="/v1/artifacts/$name/$ver/$KERNEL"
        api GET "$url" "$WORK/manifest-$pkg.json" >/dev/null
        file=$(jget "$WORK/manifest-$pkg.json" 'd["files"][0]["file"]')
        local sha; sha=$(jget "$WORK/manifest-$pkg.json" 'd["files"][0]["sha256"]')
        for ((i = 1; i <= HITS; i++)); do
            read -r code t < <(api POST /v1/builds "$WORK/hit.json" -H 'content-type: application/json' --data "$body")
            if [[ $code != 200 ]] || ! grep -q '"cached":true' "$WORK/hit.json"; then
                die "POST /v1/builds for $pkg was not a cache hit: HTTP $code $(head -c 300 "$WORK/hit.json")"
            fi
            record hit "package=$pkg" "what=post_cached" "ms=$(python3 -c "print(float('$t')*1000)")"
            read -r code t < <(api GET "$url" "$WORK/hit.json")
            [[ $code == 200 ]] || die "GET $url: HTTP $code"
            record hit "package=$pkg" "what=manifest" "ms=$(python3 -c "print(float('$t')*1000)")"
            read -r code t < <(api GET "$url/files/$file" "$WORK/hit.ko")
            [[ $code == 200 ]] || die "GET $url/files/$file: HTTP $code"
            record hit "package=$pkg" "what=download" "ms=$(python3 -c "print(float('$t')*1000)")" \
                "bytes=$(stat -c %s "$WORK/hit.ko")" "file=$file"
        done
        [[ $(sha256sum "$WORK/hit.ko" | cut -d' ' -f1) == "$sha" ]] || die "downloaded $file does not match the manifest's sha256"
        say "  cache hits $pkg: $HITS x 3 requests"
    done
}

# ------------------------------------------------------------------ (c) new kernel image
image_for_new_kernel() {
    local tag="$TAG_PREFIX$IMAGE_KERNEL" i code t t0 t1 users
    for ((i = 1; i <= IMAGE_RUNS; i++)); do
        if docker image inspect "$tag" >/dev/null 2>&1; then
            users=$(docker ps -aq --filter "ancestor=$tag" | wc -l)
            ((users == 0)) || die "$tag is used by $users container(s); not removing it"
            docker rmi "$tag" >/dev/null || die "docker rmi $tag failed"
        fi
        # A fresh server each time: a server remembers a prepared kernel in memory.
        stop_server; start_server
        say "  PUT /v1/kernels/$IMAGE_KERNEL (run $i)"
        t0=$(now)
        read -r code t < <(api PUT "/v1/kernels/$IMAGE_KERNEL" "$WORK/kernel.json" --max-time 3600)
        t1=$(now)
        [[ $code == 200 ]] || die "PUT /v1/kernels/$IMAGE_KERNEL: HTTP $code $(head -c 500 "$WORK/kernel.json")"
        docker image inspect "$tag" >/dev/null 2>&1 || die "$tag does not exist after PUT /v1/kernels/$IMAGE_KERNEL"
        # Layers shared with the other kernel's image. Everything below its `ARG KREL` step is the
        # kernel-independent toolchain; all of it should be shared (fewer: images/builder changed between
        # the two builds, and the run measured more than the per-kernel part).
        local shared total expected top new_bytes
        total=$(docker history -q "$tag" | grep -vc '<missing>' || true)
        shared=$(comm -12 <(docker history -q "$tag" | grep -v '<missing>' | sort) \
                          <(docker history -q "$IMAGE" | grep -v '<missing>' | sort) | wc -l)
        expected=$(docker history --no-trunc --format '{{.ID}}	{{.CreatedBy}}' "$IMAGE" \
            | awk -F'\t' '/#\(nop\) +ARG KREL$/ {found = 1; next} found && $1 != "<missing>" {n++} END {print n + 0}')
        top=$(docker history -q "$tag" | grep -v '<missing>' | grep -Fx -f <(docker history -q "$IMAGE") | head -n 1 || true)
        new_bytes=$(docker image inspect -f '{{.Size}}' "$tag")
        [[ -z $top ]] || new_bytes=$((new_bytes - $(docker image inspect -f '{{.Size}}' "$top")))
        record image "kernel=$IMAGE_KERNEL" "run=$i" "seconds=$(elapsed "$t0" "$t1")" "curl_seconds=$t" \
            "shared_layers=$shared" "toolchain_layers=$expected" "layers=$total" "new_bytes=$new_bytes" \
            "size=$(docker image inspect -f '{{.Size}}' "$tag")" \
            "image_id=$(jget "$WORK/kernel.json" 'd["image"]["id"]')"
        ((shared >= expected)) || say "  WARNING: only $shared of the $expected toolchain layers were reused (images/builder changed during the run?)"
        say "  image for $IMAGE_KERNEL: $(elapsed "$t0" "$t1") s ($shared of $total layers shared with $KERNEL's image; $((new_bytes / 1000000)) MB new)"
    done
}

# ------------------------------------------------------------------ main
facts
if ((BUILD)); then
    say "building the release server (cargo build --release -p kmodforge-server)"
    (cd "$REPO" && cargo build --release -p kmodforge-server) >"$WORK/cargo.log" 2>&1 \
        || { tail -n 30 "$WORK/cargo.log" >&2; die "cargo build --release -p kmodforge-server failed"; }
fi
[[ -x $SERVER_BIN ]] || die "$SERVER_BIN does not exist (build it, or drop --no-build)"
fetch_sources
docker image inspect "$TAG_PREFIX$IMAGE_KERNEL" >/dev/null 2>&1 && IMAGE_KERNEL_EXISTED=1

start_server
# Untimed: make sure the builder image of KERNEL is current (the server rebuilds it when the recipe in
# images/builder changed), so that (a) never includes an image build and (c) finds the shared layers.
say "preparing the builder image of $KERNEL (untimed)"
read -r code t < <(api PUT "/v1/kernels/$KERNEL" "$WORK/kernel-a.json" --max-time 3600)
[[ $code == 200 ]] || die "PUT /v1/kernels/$KERNEL: HTTP $code $(head -c 500 "$WORK/kernel-a.json")"
IMAGE_ID=$(jget "$WORK/kernel-a.json" 'd["image"]["id"]')
record prepare "kernel=$KERNEL" "seconds=$t" "image_id=$IMAGE_ID" "tag=$IMAGE"
IMAGE=$IMAGE_ID   # plain make uses exactly the image the server uses

say "(a) cold builds: $WARMUP warm-up + $RUNS timed run(s) per source, kmodforge and plain make interleaved"
cold_builds
say "(b) cache hits: $HITS per request"
((HITS == 0)) || cache_hits
say "(c) builder image for $IMAGE_KERNEL ($IMAGE_RUNS run(s))"
((IMAGE_RUNS == 0)) || image_for_new_kernel
stop_server
if ((IMAGE_RUNS > 0 && !IMAGE_KERNEL_EXISTED)); then
    docker rmi "$TAG_PREFIX$IMAGE_KERNEL" >/dev/null 2>&1 || true   # leave the engine as we found it
fi

mkdir -p "$RESULTS"
python3 "$BENCH_DIR/report.py" "$RAW" "$RESULTS/$STAMP.json"
say "raw results: bench/results/$STAMP.json"
