#!/usr/bin/env bash
# Beyond one machine (issue 13): replicas on PostgreSQL + S3 (Garage), in one run.
#   1. cache hits: GET .../files/kmf_hello.ko with a read token over loopback (wrk -t2,
#      CONNS connections, DURATION s): one replica, and three replicas at once (one wrk
#      per replica, CONNS/3 each; requests/s summed, latencies the worst of the three);
#      the replicas' CPU per request (/proc/PID/stat), and PostgreSQL's and Garage's
#   2. downloads through the server vs a 307 to a presigned S3 URL
#      (--presign-downloads-secs 300): wrk on the server's own answer, then N sequential
#      `curl -L` downloads end to end (bytes checked against the blob's sha256), the
#      server's and Garage's CPU per download
#   3. a replica's death to its build finished elsewhere: the e2e test
#      `a_replica_killed_mid_build_loses_nothing` DEATH_RUNS times (debug build, lease 6 s,
#      kmf-slow-hello: the hello fixture with a dkms.conf whose MAKE sleeps 25 s first),
#      plus one uninterrupted kmf-slow-hello build on the bench cluster as the reference
#      for "a full rebuild"
# Parts 1 and 2 alternate their configurations over ROUNDS rounds; the report gives
# medians. Needs Docker (the builder image of KREL), psql, cargo, curl; starts PostgreSQL and
# Garage with scripts/services.sh. Results: bench/results/cluster-<stamp>.{jsonl,md,log}
# and a markdown table on stdout (bench/cluster_report.py).
#
#   bench/cluster.sh     ROUNDS=3 DURATION=10 CONNS=200 N=200 DEATH_RUNS=3 PRESIGN_SECS=300
#                        SLOW_REF=1 KREL=6.1.0-47-amd64 NO_BUILD=0 KEEP=0 ENGINE_WAIT=600 SERVER_REV=
# The release server comes from ${CARGO_TARGET_DIR:-target}/release (built unless
# NO_BUILD=1). DEATH_RUNS=0 skips part 3, SLOW_REF=0 the reference build, ROUNDS=0 parts
# 1 and 2. wrk is installed with apt-get when missing. About 6 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=bench/lib.sh
source bench/lib.sh
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-200}
N=${N:-200}
DEATH_RUNS=${DEATH_RUNS:-3}
PRESIGN_SECS=${PRESIGN_SECS:-300}
SLOW_REF=${SLOW_REF:-1}
KREL=${KREL:-6.1.0-47-amd64}
NO_BUILD=${NO_BUILD:-0}
KEEP=${KEEP:-0}
# How long each run of part 3 waits for other kmodforge servers to stop (see there).
ENGINE_WAIT=${ENGINE_WAIT:-600}
for v in ROUNDS DURATION CONNS N DEATH_RUNS PRESIGN_SECS ENGINE_WAIT; do posint "$v" "${!v}"; done
((CONNS >= 3)) || die "CONNS must be at least 3 (one wrk per replica)"
OUT=bench/results
mkdir -p "$OUT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$OUT/cluster-$stamp.jsonl
DEATH_LOG=$OUT/cluster-$stamp.log
: >"$RESULTS"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v psql >/dev/null || die "psql is needed (Debian's postgresql-client: scripts/install-deps.sh)"
ulimit -n 65536 2>/dev/null || true

# ------------------------------------------------------------------ services, binary
scripts/services.sh start >&2 || die "scripts/services.sh start failed"
# shellcheck disable=SC1091
source "${KMODFORGE_SERVICES_DIR:-/tmp/kmodforge-services}/env"
SVC_DIR=${KMODFORGE_SERVICES_DIR:-/tmp/kmodforge-services}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/kmodforge-server
if [[ $NO_BUILD != 1 ]]; then
  say "building the release server ($BIN)"
  cargo build --release -q -p kmodforge-server
fi
[[ -x $BIN ]] || die "no $BIN (build it, or unset NO_BUILD)"
# SERVER_REV describes a server built elsewhere (NO_BUILD=1), e.g. from `git archive REV`.
COMMIT=${SERVER_REV:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- server api 2>/dev/null || echo '+uncommitted changes in server/ or api/')}
BIN_TIME=$(date -u -r "$BIN" +%FT%TZ)

WORK=$(mktemp -d /tmp/kmf-bench-cluster.XXXXXX)
declare -A PID=() PORT=()
BG=()             # wrk and other helpers in the background
DEATH_PGID=""     # the cargo test of part 3 (its own process group)
DB=kmf_bench_$(od -An -vtx1 -N6 /dev/urandom | tr -d ' \n')
DB_MADE=0
ADMIN_URL=$KMODFORGE_TEST_DATABASE_URL
DB_URL=${ADMIN_URL%/*}/$DB

stop_pid() {
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
stop_replicas() {
  local r
  for r in "${!PID[@]}"; do stop_pid "${PID[$r]}"; unset "PID[$r]"; done
}
cleanup() {
  local rc=$?
  set +e
  if [[ -n $DEATH_PGID ]]; then
    kill -TERM -- "-$DEATH_PGID" 2>/dev/null; sleep 2; kill -KILL -- "-$DEATH_PGID" 2>/dev/null
  fi
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
  stop_replicas
  if ((DB_MADE)); then
    psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 \
      || echo "bench: could not drop database $DB" >&2
  fi
  if [[ $KEEP == 1 ]]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB"
DB_MADE=1
say "database $DB; work dir $WORK"

# start_replica ID [EXTRA ARGS...]: a replica on a free port with its own data dir; r1
# makes the keys and the admin token, the others sign with r1's keys. The lease is the
# longest allowed (3600 s): nothing here needs failover, and a builder sweeps orphaned job
# containers older than its lease (before f699a98 those of any server on the engine, which
# is shared here; now only its own cluster's).
start_replica() {
  local id=$1; shift
  local port; port=$(free_port)
  local data=$WORK/$id
  mkdir -p "$data"
  local keys=()
  if [[ $id != r1 ]]; then
    keys=(KMODFORGE_MODULE_SIGNING_KEY="$WORK/r1/keys/module-signing.key"
      KMODFORGE_MODULE_SIGNING_CERT="$WORK/r1/keys/module-signing.crt"
      KMODFORGE_MANIFEST_SIGNING_KEY="$WORK/r1/keys/manifest-signing.key")
  fi
  env KMODFORGE_LOG=warn KMODFORGE_DATABASE_URL="$DB_URL" KMODFORGE_REPLICA_ID="$id" \
    KMODFORGE_S3_BUCKET="$KMODFORGE_TEST_S3_BUCKET" KMODFORGE_S3_ENDPOINT="$KMODFORGE_TEST_S3_ENDPOINT" \
    KMODFORGE_S3_REGION="$KMODFORGE_TEST_S3_REGION" KMODFORGE_LEASE_SECS=3600 "${keys[@]}" \
    "$BIN" --listen "127.0.0.1:$port" --data-dir "$data" --archive-interval-secs 0 "$@" \
    >"$WORK/server-$id.log" 2>&1 &
  PID[$id]=$!
  PORT[$id]=$port
  local i
  for i in $(seq 120); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && return 0
    kill -0 "${PID[$id]}" 2>/dev/null || break
    sleep 0.5
  done
  die "replica $id on port $port did not start: $(tail -5 "$WORK/server-$id.log")"
}

start_replica r1
[[ -s $WORK/r1/keys/module-signing.key && -s $WORK/r1/keys/manifest-signing.key ]] || die "r1 wrote no keys"
start_replica r2
start_replica r3
start_replica r4 --presign-downloads-secs "$PRESIGN_SECS"
write_auth_header "$WORK/r1" "$WORK/admin.hdr"
say "replicas: r1 :${PORT[r1]}, r2 :${PORT[r2]}, r3 :${PORT[r3]}, r4 :${PORT[r4]} (presign ${PRESIGN_SECS} s)"

api() { curl -fsS -H @"$WORK/admin.hdr" "$@"; }
url() { printf 'http://127.0.0.1:%s%s' "${PORT[$1]}" "$2"; }

# build_once REPLICA NAME DIR: uploads DIR as NAME/1.0 and builds it for KREL; prints the
# final build record (JSON). One retry: another cluster's builder on this engine may sweep
# the container (see start_replica).
build_once() {
  local r=$1 name=$2 dir=$3 attempt id state
  tar -C "$dir" -czf "$WORK/$name.tar.gz" .
  api -o /dev/null -T "$WORK/$name.tar.gz" "$(url "$r" "/v1/modules/$name/1.0")"
  for attempt in 1 2; do
    id=$(api -d "{\"name\":\"$name\",\"version\":\"1.0\",\"kernel\":\"$KREL\"}" "$(url "$r" /v1/builds)" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["id"])')
    for _ in $(seq 1200); do
      api "$(url "$r" "/v1/builds/$id")" >"$WORK/build.json"
      state=$(jget "$WORK/build.json" 'd["build"]["state"]')
      [[ $state == queued || $state == running ]] || break
      sleep 1
    done
    [[ $state == succeeded ]] && { cat "$WORK/build.json"; return 0; }
    say "build of $name ended $state (attempt $attempt): $(jget "$WORK/build.json" 'd["build"].get("failure")')"
  done
  die "the $name build did not succeed"
}

# ------------------------------------------------------------------ the cached artifact
say "building kmf-hello/1.0 for $KREL once (r1)"
build_once r1 kmf-hello tests/fixtures/hello >"$WORK/hello-build.json"
PATH_KO="/v1/artifacts/kmf-hello/1.0/$KREL/files/kmf_hello.ko"
api "$(url r1 "/v1/artifacts/kmf-hello/1.0/$KREL")" >"$WORK/manifest.json"
SHA=$(jget "$WORK/manifest.json" '[f for f in d["files"] if f["file"]=="kmf_hello.ko"][0]["sha256"]')
SIZE=$(jget "$WORK/manifest.json" '[f for f in d["files"] if f["file"]=="kmf_hello.ko"][0]["size"]')
# The read token: a curl header file and, for wrk, a Lua script reading the same file
# (0600; the token is in no command line).
api -d '{"name":"bench","scope":"read"}' "$(url r1 /v1/tokens)" \
  | python3 -c 'import json,sys; print("Authorization: Bearer " + json.load(sys.stdin)["token"])' \
  | (umask 077; cat >"$WORK/read.hdr")
cat >"$WORK/auth.lua" <<'EOF'
local f = assert(io.open(os.getenv("KMF_READ_HDR")))
local line = f:read("*l")
f:close()
wrk.headers["Authorization"] = line:gsub("^Authorization: ", "")
EOF
export KMF_READ_HDR=$WORK/read.hdr

# Every replica answers (r4 with its redirect), and the bytes are the blob's.
for r in r1 r2 r3; do
  curl -fsS -H @"$WORK/read.hdr" -o "$WORK/ko" "$(url $r "$PATH_KO")"
  [[ $(sha256sum <"$WORK/ko" | cut -d' ' -f1) == "$SHA" ]] || die "$r served other bytes than blob $SHA"
done
code=$(curl -sS -H @"$WORK/read.hdr" -o /dev/null -w '%{http_code}' "$(url r4 "$PATH_KO")")
[[ $code == 307 ]] || die "r4 (presign) answered $code, not 307"
# curl -L sends a -H Authorization header only to the first host:port (since 7.83 a
# different port counts too; --location-trusted would forward it): the trace, token hidden.
curl -sS -v -L -H @"$WORK/read.hdr" -o "$WORK/ko" "$(url r4 "$PATH_KO")" 2>&1 \
  | grep -E '^> (GET|Host:|Authorization:)|^< HTTP|^< [Ll]ocation:' \
  | sed -E 's/^> Authorization: .*/> Authorization: <read token>/; s/(X-Amz-Signature=)[0-9a-f]+/\1<sig>/; s/(X-Amz-Credential=)[^&]+/\1<cred>/' \
  >"$WORK/redirect-trace.txt"
[[ $(sha256sum <"$WORK/ko" | cut -d' ' -f1) == "$SHA" ]] || die "the presigned download gave other bytes than blob $SHA"
auth_lines=$(grep -c '^> Authorization:' "$WORK/redirect-trace.txt" || true)
python3 - "$RESULTS" "$WORK/redirect-trace.txt" "$auth_lines" "$SHA" "$SIZE" <<'EOF'
import json, sys
res, trace, n, sha, size = sys.argv[1:6]
with open(res, "a") as f:
    f.write(json.dumps({"part": "redirect_trace", "trace": open(trace).read(),
                        "authorization_headers_sent": int(n), "sha256": sha, "size": int(size)}) + "\n")
EOF
say "kmf_hello.ko: $SIZE bytes, sha256 $SHA; Authorization headers sent over the redirect chain: $auth_lines (1 = only to the server)"

# ------------------------------------------------------------------ CPU accounting
HZ=$(getconf CLK_TCK)
PG_MASTER=$(head -n1 "$SVC_DIR/pg/data/postmaster.pid" 2>/dev/null || true)
G_PID=$(cat "$SVC_DIR/garage/garage.pid" 2>/dev/null || true)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# snap: one JSON object {"r1": ticks, ..., "garage": ticks, "pg": {pid: ticks}} where pg
# holds this database's backends (their process title names the database).
snap() {
  local r p out="{"
  for r in r1 r2 r3 r4; do [[ -n ${PID[$r]:-} ]] && out+="\"$r\":$(ticks "${PID[$r]}"),"; done
  [[ -n $G_PID ]] && out+="\"garage\":$(ticks "$G_PID"),"
  out+="\"pg\":{"
  local first=1
  if [[ -n $PG_MASTER ]]; then
    for p in $(pgrep -P "$PG_MASTER" 2>/dev/null); do
      if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q " $DB "; then
        ((first)) || out+=","
        out+="\"$p\":$(ticks "$p")"; first=0
      fi
    done
  fi
  out+="}}"
  printf '%s' "$out"
}
jstr() { python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$1"; }

# ------------------------------------------------------------------ part 1 (+2a)
WRK_ARGS=(-t2 -d"${DURATION}s" --latency --timeout 10s -s "$WORK/auth.lua")
# hits CONFIG ROUND: one / three / presign (the 307 of r4)
hits() {
  local config=$1 round=$2 c0 c1 r
  local -a targets conns_each
  case $config in
    one) targets=(r1); conns_each=("$CONNS") ;;
    presign) targets=(r4); conns_each=("$CONNS") ;;
    three) targets=(r1 r2 r3); conns_each=($((CONNS / 3)) $((CONNS / 3)) $((CONNS / 3))) ;;
  esac
  c0=$(snap)
  local pids=() i
  for i in "${!targets[@]}"; do
    wrk "${WRK_ARGS[@]}" -c"${conns_each[$i]}" "$(url "${targets[$i]}" "$PATH_KO")" \
      >"$WORK/wrk-$config-$round-${targets[$i]}.txt" 2>&1 &
    pids+=($!); BG+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  BG=()
  c1=$(snap)
  {
    printf '{"part":"hits","config":"%s","round":%s,"hz":%s,"cpu0":%s,"cpu1":%s,"conns":[%s],"wrk":{' \
      "$config" "$round" "$HZ" "$c0" "$c1" "$(IFS=,; echo "${conns_each[*]}")"
    local sep=""
    for r in "${targets[@]}"; do
      printf '%s"%s":%s' "$sep" "$r" "$(jstr "$WORK/wrk-$config-$round-$r.txt")"; sep=","
    done
    printf '}}\n'
  } >>"$RESULTS"
}

# ------------------------------------------------------------------ part 2b
# downloads MODE ROUND: N sequential curl -L of the .ko (direct: r1; presign: r4 -> S3)
downloads() {
  local mode=$1 round=$2 r c0 c1 i
  [[ $mode == direct ]] && r=r1 || r=r4
  local u; u=$(url $r "$PATH_KO")
  # The bytes first (untimed): the blob's sha256.
  curl -fsS -L -H @"$WORK/read.hdr" -o "$WORK/ko" "$u"
  [[ $(sha256sum <"$WORK/ko" | cut -d' ' -f1) == "$SHA" ]] || die "$mode download: other bytes than blob $SHA"
  c0=$(snap)
  for ((i = 0; i < N; i++)); do
    curl -sS -L -H @"$WORK/read.hdr" -o /dev/null \
      -w '%{time_total} %{http_code} %{num_redirects} %{size_download}\n' "$u"
  done >"$WORK/dl-$mode-$round.txt"
  c1=$(snap)
  printf '{"part":"download","mode":"%s","replica":"%s","round":%s,"hz":%s,"n":%s,"size":%s,"sha256_ok":true,"cpu0":%s,"cpu1":%s,"curl":%s}\n' \
    "$mode" "$r" "$round" "$HZ" "$N" "$SIZE" "$c0" "$c1" "$(jstr "$WORK/dl-$mode-$round.txt")" >>"$RESULTS"
}

configs=(one three presign)
modes=(direct presign)
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    c=${configs[$(((i + round) % 3))]}
    say "round $round/$ROUNDS: cache hits, $c"
    hits "$c" "$round"
    sleep 2
  done
  for i in 0 1; do
    m=${modes[$(((i + round) % 2))]}
    say "round $round/$ROUNDS: $N downloads, $m"
    downloads "$m" "$round"
  done
done

# ------------------------------------------------------------------ part 3 reference
if [[ $SLOW_REF == 1 ]]; then
  say "reference: one uninterrupted kmf-slow-hello build (r1, release server)"
  # The test's tree (tests/tests/cluster.rs, slow_hello()): hello with another dkms.conf.
  mkdir -p "$WORK/slow-hello"
  cp tests/fixtures/hello/Makefile tests/fixtures/hello/kmf_hello.c "$WORK/slow-hello/"
  cat >"$WORK/slow-hello/dkms.conf" <<'EOF'
PACKAGE_NAME="kmf-slow-hello"
PACKAGE_VERSION="1.0"
MAKE[0]="echo 'slow build: pausing 25 s'; sleep 25; make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
BUILT_MODULE_NAME[0]="kmf_hello"
DEST_MODULE_LOCATION[0]="/extra"
EOF
  t0=$(now)
  build_once r1 kmf-slow-hello "$WORK/slow-hello" >"$WORK/slow-build.json"
  t1=$(now)
  python3 - "$RESULTS" "$WORK/slow-build.json" "$t0" "$t1" <<'EOF'
import json, sys
res, path, t0, t1 = sys.argv[1:5]
b = json.load(open(path))["build"]
with open(res, "a") as f:
    f.write(json.dumps({"part": "slow_reference", "build_seconds": b.get("seconds"),
                        "client_seconds": float(t1) - float(t0), "state": b["state"]}) + "\n")
EOF
fi
# The replicas are done: stop them before their database goes.
stop_replicas
psql -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null && DB_MADE=0

# ------------------------------------------------------------------ part 3
# Each run first waits, up to ENGINE_WAIT s, until no other kmodforge-server runs, here or in
# a container (twice, 5 s apart): other servers' builds share the CPUs with the timed rebuild.
# After that it runs anyway and says so ("shared": true). Careful with a work tree before
# f699a98: the test's builders (6 s lease) then swept every other server's job container on
# this engine older than 6 s (one was, in a trial run of this script); since then only their
# own cluster's. Job containers left with no server running are orphans. A sweep of a
# container of another replica than the test's r1 that the test's log tails show is counted
# in the results ("collateral").
engine_quiet() {
  local deadline=$(($(date +%s) + ENGINE_WAIT)) quiet=0 servers jobs
  while :; do
    servers=$(($(pgrep -xc kmodforge-serve || true) + $(docker ps --no-trunc --format '{{.Command}}' | grep -c kmodforge-server || true)))
    jobs=$(docker ps -q --filter label=kmodforge.job | wc -l)
    if ((servers == 0)); then
      ((++quiet >= 2)) && { ((jobs == 0)) || say "part 3: $jobs orphaned job container(s) on this engine (no server runs)"; return 0; }
    else
      quiet=0
    fi
    (($(date +%s) < deadline)) || { say "part 3: $servers other kmodforge-server process(es) still use this engine ($jobs job container(s)); running anyway"; return 1; }
    ((servers == 0)) || say "part 3 waits: $servers other kmodforge-server process(es) use this engine ($jobs job container(s))"
    sleep 5
  done
}
: >"$DEATH_LOG"
for run in $(seq "$DEATH_RUNS"); do
  shared=false
  engine_quiet || shared=true
  say "death run $run/$DEATH_RUNS: cargo test -p kmodforge-e2e --test cluster ... killed"
  t0=$(now)
  # Its own process group (the trap ends it whole); /work/main's target dir, debug build.
  set +e
  setsid -w env -u CARGO_TARGET_DIR -u KMODFORGE_SERVER_BIN -u KMF_READ_HDR \
    cargo test -p kmodforge-e2e --test cluster -- --test-threads=1 --nocapture killed \
    >"$WORK/death-$run.log" 2>&1 &
  DEATH_PGID=$!
  wait "$DEATH_PGID"; rc=$?
  DEATH_PGID=""
  set -e
  t1=$(now)
  { echo "===== death run $run (exit $rc)"; cat "$WORK/death-$run.log"; } >>"$DEATH_LOG"
  line=$(grep -m1 'replica death to build finished elsewhere:' "$WORK/death-$run.log" || true)
  collateral=$(grep 'removing the container of a build whose replica lost its lease' "$WORK/death-$run.log" \
    | grep -vc 'replica=r1$' || true)
  python3 - "$RESULTS" "$run" "$rc" "$line" "$t0" "$t1" "$collateral" "$shared" <<'EOF'
import json, re, sys
res, run, rc, line, t0, t1, collateral, shared = sys.argv[1:9]
m = re.search(r"elsewhere: ([\d.]+)(ms|s|µs)", line)
secs = None
if m:
    secs = float(m.group(1)) * {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[m.group(2)]
with open(res, "a") as f:
    f.write(json.dumps({"part": "death", "run": int(run), "exit": int(rc), "line": line,
                        "seconds": secs, "wall_seconds": float(t1) - float(t0),
                        "collateral": int(collateral or 0), "shared": shared == "true"}) + "\n")
EOF
  say "death run $run: exit $rc; ${line:-no result line}"
done

# ------------------------------------------------------------------ report
{
  echo "# bench/cluster.sh, $(date -u +%FT%TZ)"
  echo
  echo "server $COMMIT (release binary of $BIN_TIME; the test in part 3 builds its own debug one from the work tree);" \
    "$(nproc) CPUs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg);" \
    "ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS N=$N DEATH_RUNS=$DEATH_RUNS PRESIGN_SECS=$PRESIGN_SECS KREL=$KREL;" \
    "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); $(curl --version | head -n1 | cut -d' ' -f1-2)"
  echo
  python3 bench/cluster_report.py "$RESULTS"
} | tee "$OUT/cluster-$stamp.md"
say "raw results: $RESULTS, $DEATH_LOG; table: $OUT/cluster-$stamp.md"
# The read token never reaches a server log.
(umask 077; sed 's/^Authorization: Bearer //' "$WORK/read.hdr" >"$WORK/read.token")
if grep -qFf "$WORK/read.token" "$WORK"/server-*.log; then die "the read token is in a server log"; fi
