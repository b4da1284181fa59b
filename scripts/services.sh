#!/usr/bin/env bash
# Real backing services for the tests and CI, on loopback only: a PostgreSQL server
# (127.0.0.1:55432) and a single-node Garage S3 server (S3 127.0.0.1:3900, RPC 3901,
# admin 3903). Their state lives under ${KMODFORGE_SERVICES_DIR:-/tmp/kmodforge-services};
# `start` writes $KMODFORGE_SERVICES_DIR/env, `export VAR=value` lines for the tests to source.
#   start       starts both, or reuses the running, healthy ones; idempotent
#   stop        stops both, keeping their data
#   pause-s3    stops only Garage, keeping its data (outage tests); resume-s3 starts it again
#   restart-pg  restarts PostgreSQL on the same data
#   status      one line per service; exits 3 when one is not running
# The binaries come from scripts/install-deps.sh: Debian's postgresql, and Garage in
# ${KMODFORGE_TOOLS:-~/.cache/kmodforge/tools}/bin. As root, PostgreSQL runs as the
# `postgres` system user (initdb refuses root).
set -eEuo pipefail
# An unforeseen failure names its command (once: not again from inside $(...)).
trap 'rc=$?; [[ $BASHPID != "$$" ]] || echo "services: \`$BASH_COMMAND\` failed (exit $rc, line $LINENO)" >&2' ERR
die() { echo "services: $*" >&2; exit 1; }

dir=${KMODFORGE_SERVICES_DIR:-/tmp/kmodforge-services}
tools=${KMODFORGE_TOOLS:-$HOME/.cache/kmodforge/tools}
pg_port=55432
pg_dir=$dir/pg
pgdata=$pg_dir/data
pg_sock=$pg_dir/run
pg_log=$pg_dir/postgres.log
database_url=postgres://kmodforge:kmodforge@127.0.0.1:$pg_port/kmodforge
s3_port=3900 rpc_port=3901 admin_port=3903
g_dir=$dir/garage
g_cfg=$g_dir/garage.toml
g_log=$g_dir/garage.log
g_pid=$g_dir/garage.pid
bucket=kmodforge key_name=kmodforge region=garage

# Something listens on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now_ms() { date +%s%3N; }

# ---- PostgreSQL ----

# Sets pg_bin (the newest Debian server, else initdb's on PATH) and pg_user (who runs the
# server's tools: the `postgres` user when we are root, else ourselves).
pg_setup() {
  pg_bin=""
  if [[ -n ${KMODFORGE_PG_BIN:-} ]]; then
    pg_bin=$KMODFORGE_PG_BIN
  else
    local d
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
      [[ -x $d/initdb && -x $d/postgres ]] && pg_bin=$d
    done
    if [[ -z $pg_bin ]] && command -v initdb >/dev/null; then
      pg_bin=$(dirname "$(readlink -f "$(command -v initdb)")")
    fi
  fi
  [[ -x $pg_bin/initdb && -x $pg_bin/pg_ctl && -x $pg_bin/postgres ]] \
    || die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: run scripts/install-deps.sh"
  if ((EUID == 0)); then
    pg_user=postgres
    getent passwd postgres >/dev/null \
      || die "no \`postgres\` system user to run PostgreSQL as (initdb refuses root): run scripts/install-deps.sh"
  else
    pg_user=$(id -un)
  fi
}
# Runs a command as $pg_user, from / (root's working directory may be closed to it).
# fd 9 (our lock) is not passed on: the server would hold it forever.
as_pg() {
  if ((EUID == 0)); then
    if command -v runuser >/dev/null; then
      (cd / && runuser -u postgres -- "$@") 9>&-
    else
      (cd / && setpriv --reuid=postgres --regid=postgres --init-groups -- "$@") 9>&-
    fi
  else
    "$@" 9>&-
  fi
}
pg_ctl() { as_pg "$pg_bin/pg_ctl" -D "$pgdata" "$@"; }
pg_running() { [[ -f $pgdata/PG_VERSION ]] && pg_ctl status >/dev/null 2>&1; }
pg_ready() { "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -t 2 2>/dev/null; }
# psql as the cluster's superuser over its Unix socket (peer authentication).
pg_admin_sql() { as_pg "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_sock" -p "$pg_port" -U "$pg_user" -d postgres; }

pg_start() {
  pg_setup
  if [[ -f $pgdata/PG_VERSION ]]; then
    local owner; owner=$(stat -c %U "$pgdata")
    [[ $owner == "$pg_user" ]] || die "$pgdata belongs to $owner, not $pg_user: start the services as the user who created them, or remove $dir"
  fi
  mkdir -p "$pg_dir"
  if ((EUID == 0)); then
    chown "$pg_user:" "$pg_dir"
    as_pg test -w "$pg_dir" -a -x "$pg_dir" \
      || die "$pg_dir is not usable by the postgres user (a parent directory closed to other users?)"
  fi
  ((${#pg_sock} + 20 < 108)) || die "the PostgreSQL socket path $pg_sock is too long for a Unix socket: use a shorter KMODFORGE_SERVICES_DIR"
  if [[ -d $pgdata && ! -f $pgdata/PG_VERSION ]]; then
    rm -rf "$pgdata" # an initdb that did not finish
  fi
  if [[ ! -f $pgdata/PG_VERSION ]]; then
    # Password (SCRAM) over TCP for the tests, peer over the socket for this script.
    as_pg "$pg_bin/initdb" -D "$pgdata" -U "$pg_user" -E UTF8 --locale=C \
      --auth-host=scram-sha-256 --auth-local=peer >"$pg_dir/initdb.log" 2>&1 \
      || die "PostgreSQL initdb failed (see $pg_dir/initdb.log): $(tail -n1 "$pg_dir/initdb.log")"
    echo "include_if_exists = 'kmodforge.conf'" | as_pg tee -a "$pgdata/postgresql.conf" >/dev/null
  fi
  as_pg mkdir -p "$pg_sock"
  # Rewritten on every start (read by the server when it starts). The data is throwaway
  # test data: durability is traded for speed (every test creates a database).
  as_pg tee "$pgdata/kmodforge.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_sock'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  # A server of $pgdata may be starting (wait for it), or dying (a killed postmaster stays
  # a zombie until reaped): then start a new one.
  local i
  for ((i = 0; i < 30; i++)); do
    pg_running || break
    pg_ready && break
    sleep 1
  done
  if pg_running; then
    pg_ready || die "PostgreSQL in $pgdata is running but does not accept connections on 127.0.0.1:$pg_port (see $pg_log)"
  else
    ! port_open "$pg_port" || die "127.0.0.1:$pg_port is in use by another process (not the PostgreSQL of $pgdata)"
    pg_ctl -l "$pg_log" -w -t 60 -s start >/dev/null 2>&1 \
      || die "PostgreSQL failed to start (see $pg_log): $(tail -n1 "$pg_log" 2>/dev/null)"
  fi
  local out
  out=$(pg_admin_sql 2>&1 <<'EOF'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kmodforge') THEN
    CREATE ROLE kmodforge;
  END IF;
END $$;
ALTER ROLE kmodforge LOGIN CREATEDB PASSWORD 'kmodforge';
SELECT 'CREATE DATABASE kmodforge OWNER kmodforge'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'kmodforge')\gexec
EOF
  ) || die "PostgreSQL: creating the kmodforge role and database failed: ${out//$'\n'/ }"
  echo "postgres: ready at $database_url (pid $(head -n1 "$pgdata/postmaster.pid"), data $pgdata, log $pg_log)"
}

pg_stop() {
  pg_setup
  if pg_running; then
    pg_ctl -m fast -w -t 60 -s stop >/dev/null 2>&1 || die "PostgreSQL did not stop (see $pg_log)"
    echo "postgres: stopped"
  else
    echo "postgres: not running"
  fi
}

# ---- Garage ----

garage_setup() {
  garage=${KMODFORGE_GARAGE:-$tools/bin/garage}
  if [[ ! -x $garage ]]; then
    garage=$(command -v garage || true)
    [[ -n $garage ]] || die "garage not found at $tools/bin/garage: run scripts/install-deps.sh"
  fi
}
# The config file says it all (garage would take these from the environment first).
unset GARAGE_RPC_HOST GARAGE_RPC_SECRET GARAGE_RPC_SECRET_FILE GARAGE_ADMIN_TOKEN GARAGE_ADMIN_TOKEN_FILE \
  GARAGE_METRICS_TOKEN GARAGE_METRICS_TOKEN_FILE GARAGE_CONFIG_FILE
g() { "$garage" -c "$g_cfg" "$@" 9>&-; }
# Runs a garage command that must succeed; its output on stdout, else dies naming $1.
g_must() {
  local what=$1 out; shift
  out=$(g "$@" 2>&1) || die "Garage: $what failed (garage $*): $(tail -n1 <<<"$out")"
  printf '%s\n' "$out"
}
# Sets gpid when our Garage (the one of $g_cfg) is running.
garage_running() {
  local pid cmd
  [[ -s $g_pid ]] || return 1
  pid=$(<"$g_pid")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$g_cfg"* ]] || return 1
  gpid=$pid
}
hex32() { od -An -vtx1 -N32 /dev/urandom | tr -d ' \n'; }

garage_config() {
  mkdir -p "$g_dir/meta" "$g_dir/data"
  # Generated once, kept with the data: the node's identity and metadata go with them.
  (
    umask 077
    [[ -s $g_dir/rpc_secret ]] || hex32 >"$g_dir/rpc_secret"
    [[ -s $g_dir/admin_token ]] || hex32 >"$g_dir/admin_token"
    cat >"$g_cfg.tmp" <<EOF
metadata_dir = "$g_dir/meta"
data_dir = "$g_dir/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(<"$g_dir/rpc_secret")"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "$region"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(<"$g_dir/admin_token")"
EOF
    mv -f "$g_cfg.tmp" "$g_cfg"
  )
}

# Waits up to $1 seconds for `garage ${@:2}` to succeed while the server lives.
garage_wait() {
  local secs=$1 deadline; shift
  deadline=$(($(date +%s) + secs))
  while ! g "$@" >/dev/null 2>&1; do
    garage_running || die "Garage exited (see $g_log): $(tail -n1 "$g_log" 2>/dev/null)"
    (($(date +%s) < deadline)) || die "Garage: \`garage $*\` still fails after $secs s (see $g_log)"
    sleep 0.2
  done
}

# Starts Garage (or reuses it), then makes sure of the layout, key, bucket and grants;
# sets key_id and key_secret.
garage_start() {
  garage_setup
  garage_config
  local t0 how
  t0=$(now_ms)
  if garage_running; then
    how="reused"
  else
    how="started"
    local p
    for p in "$s3_port" "$rpc_port" "$admin_port"; do
      ! port_open "$p" || die "127.0.0.1:$p is in use by another process (Garage of $g_cfg needs it)"
    done
    rm -f "$g_pid"
    echo "---- services.sh: garage server starting, $(date -u +%FT%TZ)" >>"$g_log"
    # Its own session (like pg_ctl's postmaster): not killed with the caller's process group.
    # shellcheck disable=SC2016 # $$, $1.. are the inner shell's
    NO_COLOR=1 setsid -f bash -c 'echo $$ >"$1"; exec "$2" -c "$3" server' garage-server "$g_pid" "$garage" "$g_cfg" \
      </dev/null >>"$g_log" 2>&1 9>&-
    local i
    for ((i = 0; i < 50; i++)); do [[ -s $g_pid ]] && break; sleep 0.1; done
    [[ -s $g_pid ]] || die "Garage did not start (see $g_log)"
  fi
  garage_wait 60 status
  # A fresh node has no role: give it all the (single-node) layout, once.
  local version
  version=$(g_must "reading the cluster layout" layout show | sed -n 's/^Current cluster layout version: //p')
  if [[ $version == 0 ]]; then
    local node_id
    node_id=$(g_must "reading the node id" node id -q)
    node_id=${node_id%%@*}
    g_must "assigning the node a role" layout assign -z dc1 -c 1G "$node_id" >/dev/null
    g_must "applying the layout" layout apply --version 1 >/dev/null
  elif [[ ! $version =~ ^[0-9]+$ ]]; then
    die "Garage: cannot read the cluster layout version from \`garage layout show\`"
  fi
  garage_wait 60 health -q
  local out
  if ! out=$(g key info "$key_name" --key-id 2>&1); then
    [[ $out == *"NoSuchAccessKey"* || $out == *"not found"* ]] \
      || die "Garage: looking up key $key_name failed: $(tail -n1 <<<"$out")"
    g_must "creating key $key_name" key create "$key_name" >/dev/null
  fi
  key_id=$(g_must "reading key $key_name" key info "$key_name" --key-id)
  key_secret=$(g_must "reading the secret of key $key_name" key info "$key_name" --secret-key)
  if ! out=$(g bucket info "$bucket" 2>&1); then
    [[ $out == *"NoSuchBucket"* || $out == *"not found"* ]] \
      || die "Garage: looking up bucket $bucket failed: $(tail -n1 <<<"$out")"
    g_must "creating bucket $bucket" bucket create "$bucket" >/dev/null
  fi
  g_must "granting key $key_name on bucket $bucket" bucket allow --read --write --owner "$bucket" --key "$key_name" >/dev/null
  # Ready when a signed S3 request (ListObjectsV2 on the bucket) succeeds. (Garage wants
  # x-amz-content-sha256, which curl's --aws-sigv4 does not send by itself: the empty body's.)
  local deadline code empty_sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
  deadline=$(($(date +%s) + 30))
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
      --aws-sigv4 "aws:amz:$region:s3" --user "$key_id:$key_secret" -H "x-amz-content-sha256: $empty_sha256" \
      "http://127.0.0.1:$s3_port/$bucket?list-type=2" 9>&-) || code="curl failed"
    [[ $code == 200 ]] && break
    (($(date +%s) < deadline)) || die "Garage: S3 ListObjectsV2 on http://127.0.0.1:$s3_port/$bucket still answers $code after 30 s (see $g_log)"
    sleep 0.2
  done
  garage_running || die "Garage exited (see $g_log)"
  local ms=$(($(now_ms) - t0))
  echo "garage: ready at http://127.0.0.1:$s3_port, bucket $bucket, key $key_id (pid $gpid, $how in $((ms / 1000)).$((ms % 1000 / 100)) s, log $g_log)"
}

garage_stop() {
  garage_setup
  if garage_running; then
    kill -TERM "$gpid" 2>/dev/null || true
    local i
    for ((i = 0; i < 150; i++)); do kill -0 "$gpid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$gpid" 2>/dev/null; then
      kill -KILL "$gpid"
      echo "services: Garage did not stop on SIGTERM within 30 s, killed" >&2
    fi
    rm -f "$g_pid"
    echo "garage: stopped"
  else
    rm -f "$g_pid"
    echo "garage: not running"
  fi
}

write_env() {
  cat >"$dir/env.tmp" <<EOF
export KMODFORGE_TEST_DATABASE_URL=$database_url
export KMODFORGE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export KMODFORGE_TEST_S3_BUCKET=$bucket
export KMODFORGE_TEST_S3_REGION=$region
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
EOF
  mv -f "$dir/env.tmp" "$dir/env"
}

status() {
  local rc=0
  pg_setup
  if pg_running && pg_ready; then
    echo "postgres: running (pid $(head -n1 "$pgdata/postmaster.pid")) at 127.0.0.1:$pg_port"
  else
    echo "postgres: not running"; rc=3
  fi
  garage_setup
  if garage_running && g status >/dev/null 2>&1; then
    echo "garage: running (pid $gpid) at http://127.0.0.1:$s3_port"
  else
    echo "garage: not running"; rc=3
  fi
  [[ -f $dir/env ]] && echo "env: $dir/env"
  return $rc
}

cmd=${1:-}
case $cmd in
  start | stop | pause-s3 | resume-s3 | restart-pg | status) ;;
  *) die "usage: $0 start|stop|pause-s3|resume-s3|restart-pg|status" ;;
esac
if [[ ! -d $dir ]]; then
  mkdir -p "$dir"
  chmod 755 "$dir" # the postgres user goes through it
fi
# One of us at a time per services directory.
exec 9>"$dir/.lock"
flock -w 300 9 || die "another services.sh holds $dir/.lock"
case $cmd in
  start)
    pg_start
    garage_start
    write_env
    echo "env: $dir/env"
    ;;
  stop)
    garage_stop
    pg_stop
    ;;
  pause-s3) garage_stop ;;
  resume-s3) garage_start ;;
  restart-pg)
    pg_stop
    pg_start
    ;;
  status) status || exit $? ;;
esac
