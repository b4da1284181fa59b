#!/usr/bin/env bash
# The cost of token checks on cache hits: CONNS (500) concurrent connections asking
# for a cached .ko over loopback (wrk), p50/p99 latency, throughput and the server's
# CPU per request, in one run, for three servers on the same data:
#   preauth  the last commit before authentication (BASELINE_REV): no guard at all
#   anon     this server with --anonymous-read, requests without a token: the guard
#            runs, no token is looked up
#   token    this server, requests with a `read` token: header parse, one indexed
#            SQLite lookup, sha256 and a constant-time compare per request
# Rounds alternate the order; report medians. Results: bench/results/auth-*.json and
# a markdown table on stdout (bench/auth_report.py).
#
#   bench/auth.sh            ROUNDS=5 DURATION=10 CONNS=500 BASELINE_REV=a640e9e
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-500}
KREL=${KREL:-6.1.0-47-amd64}
BASELINE_REV=${BASELINE_REV:-a640e9e}
P_NEW=${P_NEW:-18431}
P_OLD=${P_OLD:-18432}
OUT=bench/results
mkdir -p "$OUT"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
ulimit -n 65536 2>/dev/null || true

echo "building this server and the one at $BASELINE_REV (release)" >&2
cargo build --release -q -p kmodforge-server
NEW_BIN=$PWD/target/release/kmodforge-server
PRE=target/bench-preauth
if [[ ! -x $PRE/bin/kmodforge-server ]] || [[ $(cat "$PRE/rev" 2>/dev/null) != "$BASELINE_REV" ]]; then
  rm -rf "$PRE/src"; mkdir -p "$PRE"
  git worktree add -f --detach "$PRE/src" "$BASELINE_REV" >/dev/null 2>&1 \
    || git -C "$PRE/src" checkout -q --detach "$BASELINE_REV"
  (cd "$PRE/src" && CARGO_TARGET_DIR=$PWD/../target cargo build --release -q -p kmodforge-server)
  mkdir -p "$PRE/bin"; cp "$PRE/target/release/kmodforge-server" "$PRE/bin/"
  echo "$BASELINE_REV" > "$PRE/rev"
  git worktree remove --force "$PRE/src" >/dev/null 2>&1 || true
fi
OLD_BIN=$PWD/$PRE/bin/kmodforge-server

WORK=$(mktemp -d /tmp/kmf-bench-auth.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start BIN PORT DATA [ARGS...]: prints the pid
start() {
  local bin=$1 port=$2 data=$3; shift 3
  KMODFORGE_LOG=warn "$bin" --listen "127.0.0.1:$port" --data-dir "$data" "$@" >"$WORK/server-$port.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && { echo "$pid"; return; }; sleep 0.5; done
  echo "server on $port did not start: $(tail -5 "$WORK/server-$port.log")" >&2; exit 1
}

# One cached artifact: add the hello fixture and build it once.
pid=$(start "$NEW_BIN" "$P_NEW" "$WORK/data")
ADMIN="Authorization: Bearer $(cat "$WORK/data/admin.token")"
tar -C tests/fixtures/hello -czf "$WORK/src.tar.gz" .
curl -fsS -o /dev/null -H "$ADMIN" -T "$WORK/src.tar.gz" "http://127.0.0.1:$P_NEW/v1/modules/kmf-hello/1.0"
id=$(curl -fsS -H "$ADMIN" -d "{\"name\":\"kmf-hello\",\"version\":\"1.0\",\"kernel\":\"$KREL\"}" \
  "http://127.0.0.1:$P_NEW/v1/builds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["id"])')
for _ in $(seq 1200); do
  state=$(curl -fsS -H "$ADMIN" "http://127.0.0.1:$P_NEW/v1/builds/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["state"])')
  [[ $state == queued || $state == running ]] || break; sleep 1
done
[[ $state == succeeded ]] || { echo "the hello build ended $state" >&2; exit 1; }
READ="Authorization: Bearer $(curl -fsS -H "$ADMIN" -d '{"name":"bench","scope":"read"}' \
  "http://127.0.0.1:$P_NEW/v1/tokens" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
kill "$pid"; wait "$pid" 2>/dev/null || true

# The same data for both servers (the old one ignores the new tables).
cp -a "$WORK/data" "$WORK/data-old"
NEW=$(start "$NEW_BIN" "$P_NEW" "$WORK/data" --anonymous-read); PIDS+=("$NEW")
OLD=$(start "$OLD_BIN" "$P_OLD" "$WORK/data-old"); PIDS+=("$OLD")
PATH_KO="/v1/artifacts/kmf-hello/1.0/$KREL/files/kmf_hello.ko"
curl -fsS -o /dev/null -H "$READ" "http://127.0.0.1:$P_NEW$PATH_KO"
curl -fsS -o /dev/null "http://127.0.0.1:$P_OLD$PATH_KO"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure NAME PID PORT [HEADER]
measure() {
  local name=$1 pid=$2 port=$3 header=${4:-}
  local args=(-t2 -c"$CONNS" -d"${DURATION}s" --latency --timeout 10s)
  [[ -n $header ]] && args+=(-H "$header")
  local t0 t1
  t0=$(ticks "$pid")
  wrk "${args[@]}" "http://127.0.0.1:$port$PATH_KO" >"$WORK/wrk-$name-$round.txt"
  t1=$(ticks "$pid")
  echo "{\"config\":\"$name\",\"round\":$round,\"cpu_ticks\":$((t1 - t0)),\"hz\":$(getconf CLK_TCK),\"wrk\":$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$WORK/wrk-$name-$round.txt")}" >>"$WORK/results.jsonl"
}

configs=(preauth anon token)
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    c=${configs[$(((i + round) % 3))]}
    echo "round $round: $c" >&2
    case $c in
      preauth) measure preauth "$OLD" "$P_OLD" ;;
      anon) measure anon "$NEW" "$P_NEW" ;;
      token) measure token "$NEW" "$P_NEW" "$READ" ;;
    esac
    sleep 2
  done
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
python3 bench/auth_report.py "$WORK/results.jsonl" "$CONNS" "$DURATION" "$(nproc)" | tee "$OUT/auth-$stamp.md"
cp "$WORK/results.jsonl" "$OUT/auth-$stamp.jsonl"
# The tokens never reach the server's log.
if grep -q "${READ#Authorization: Bearer kmf_}" "$WORK"/server-*.log; then echo "a token is in a server log!" >&2; exit 1; fi
