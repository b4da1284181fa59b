#!/usr/bin/env bash
# A kmodforge cluster on this machine (compose.cluster.yaml): PostgreSQL, Garage (S3)
# and three server replicas on 127.0.0.1:8081, 8082 and 8083, sharing one data volume
# (signing keys, admin token), the database and the bucket.
#   up        builds what is missing or stale (the release binary, the images), writes
#             .env (DOCKER_GID) and, once, .cluster.env (credentials), starts everything
#             and waits until the three replicas answer /healthz
#   down      stops and removes the containers, keeping the volumes (the data)
#   destroy   the same, and removes the volumes: every record, object and key
#   status    the containers, and one line per replica; exits 3 when one is not healthy
# Assumes the demo's prerequisites (scripts/install-deps.sh: Docker, cargo, Garage in
# ${KMODFORGE_TOOLS:-~/.cache/kmodforge/tools}/bin). The binary is built into
# ${CARGO_TARGET_DIR:-target}; one built outside target/ is copied into the build
# context (images/server/kmodforge-server, git-ignored).
set -eEuo pipefail
cd "$(dirname "$0")/.."
# An unforeseen failure names its command (once: not again from inside $(...)).
trap 'rc=$?; [[ $BASHPID != "$$" ]] || echo "cluster: \`$BASH_COMMAND\` failed (exit $rc, line $LINENO)" >&2' ERR
die() { echo "cluster: $*" >&2; exit 1; }

file=compose.cluster.yaml
env_file=.cluster.env
ports=(8081 8082 8083)
replicas=(r1 r2 r3)
tools=${KMODFORGE_TOOLS:-$HOME/.cache/kmodforge/tools}

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$file" "$@"
  elif command -v docker-compose >/dev/null; then
    docker-compose -f "$file" "$@"
  else
    die "neither \`docker compose\` nor docker-compose is installed: run scripts/install-deps.sh"
  fi
}
now_ms() { date +%s%3N; }
since() { local ms=$(($(now_ms) - $1)); echo "$((ms / 1000)).$((ms % 1000 / 100)) s"; }
hex() { od -An -vtx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# compose.yaml is of the same compose project (this directory): its container is no orphan of ours.
export COMPOSE_IGNORE_ORPHANS=1

# Docker and the socket's group (compose needs DOCKER_GID for every command).
docker_setup() {
  [[ -S /var/run/docker.sock ]] || die "no Docker socket at /var/run/docker.sock: start the Docker engine"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer (\`docker info\` fails): start it, or run as a user in its group"
  DOCKER_GID=$(stat -c %g /var/run/docker.sock)
  export DOCKER_GID
}

need_env_file() {
  [[ -f $env_file ]] || die "no $env_file here: \`scripts/cluster.sh up\` writes it (a lost one is made anew, and the services take the new credentials)"
}

# The credentials, generated once (mode 0600). PostgreSQL sets its role's password and
# Garage imports the key on every start, so a new file also works with old volumes.
write_env_file() {
  if [[ -f $env_file ]]; then
    local v
    for v in POSTGRES_PASSWORD KMODFORGE_DATABASE_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
      grep -q "^$v=." "$env_file" || die "$env_file has no $v: fix it, or remove it to have a new one made"
    done
    return
  fi
  local password
  password=$(hex 24)
  (
    umask 077
    cat >"$env_file.tmp" <<EOF
# Credentials of the compose.cluster.yaml services, made by scripts/cluster.sh up.
# Secret: never commit this file. PostgreSQL's user and password are also in
# KMODFORGE_DATABASE_URL: change both together (then \`scripts/cluster.sh up\`).
POSTGRES_USER=kmodforge
POSTGRES_PASSWORD=$password
POSTGRES_DB=kmodforge
KMODFORGE_DATABASE_URL=postgres://kmodforge:$password@postgres:5432/kmodforge
# The Garage S3 key of bucket kmodforge (GK + 24 hex digits; 64 hex digits).
AWS_ACCESS_KEY_ID=GK$(hex 12)
AWS_SECRET_ACCESS_KEY=$(hex 32)
EOF
    mv -f "$env_file.tmp" "$env_file"
  )
  echo "cluster: wrote the credentials to $env_file (mode 0600)"
}

# Builds the release binary when it is missing or older than a source; sets
# KMODFORGE_SERVER_BIN to its path in the build context.
server_binary() {
  local target=${CARGO_TARGET_DIR:-target}
  local bin=$target/release/kmodforge-server
  local stale=""
  if [[ -x $bin ]]; then
    stale=$(find server api Cargo.toml Cargo.lock -newer "$bin" -print -quit)
  fi
  if [[ ! -x $bin || -n $stale ]]; then
    command -v cargo >/dev/null || die "cargo is needed to build $bin: run scripts/install-deps.sh"
    echo "cluster: building $bin (${stale:+$stale is newer; }a few minutes the first time)"
    local t0; t0=$(now_ms)
    cargo build --release -p kmodforge-server || die "cargo build --release -p kmodforge-server failed (output above)"
    echo "cluster: built $bin in $(since "$t0")"
  fi
  if [[ $(realpath "$bin") == "$(realpath -m target/release/kmodforge-server)" ]]; then
    KMODFORGE_SERVER_BIN=target/release/kmodforge-server
  else
    # Outside the build context: copied in (only when it changed).
    KMODFORGE_SERVER_BIN=images/server/kmodforge-server
    cmp -s "$bin" "$KMODFORGE_SERVER_BIN" || cp -f "$bin" "$KMODFORGE_SERVER_BIN"
  fi
  export KMODFORGE_SERVER_BIN
}

# Copies the Garage binary into its image's build context (only when it changed).
garage_binary() {
  local garage=${KMODFORGE_GARAGE:-$tools/bin/garage}
  [[ -x $garage ]] || die "no Garage binary at $garage: run scripts/install-deps.sh"
  cmp -s "$garage" images/garage/garage || cp -f "$garage" images/garage/garage
}

healthy() { curl -fsS --max-time 3 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }

up() {
  local t0; t0=$(now_ms)
  docker_setup
  docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
    || images/bootstrap-base.sh bookworm debian:bookworm-slim \
    || die "cannot make the base image debian:bookworm-slim (images/bootstrap-base.sh failed)"
  server_binary
  garage_binary
  # As scripts/demo.sh: later `docker compose -f compose.cluster.yaml ...` calls find it too.
  echo "DOCKER_GID=$DOCKER_GID" >.env
  write_env_file
  local t1; t1=$(now_ms)
  compose up -d --build || die "\`docker compose -f $file up -d --build\` failed (output above)"
  echo "cluster: containers up in $(since "$t1"); waiting for the replicas' /healthz ..."
  local i deadline=$(($(date +%s) + 180))
  for i in "${!ports[@]}"; do
    until healthy "${ports[$i]}"; do
      (($(date +%s) < deadline)) \
        || die "${replicas[$i]} does not answer on http://127.0.0.1:${ports[$i]}/healthz after 180 s: docker compose -f $file logs ${replicas[$i]}"
      sleep 1
    done
  done
  echo "cluster: ready in $(since "$t0"): http://127.0.0.1:8081 (r1), :8082 (r2), :8083 (r3); PostgreSQL and Garage on the compose network only"
  echo "cluster: admin token: docker compose -f $file exec -T r1 cat /data/admin.token"
  echo "cluster: credentials in $env_file; logs: docker compose -f $file logs r1"
}

status() {
  local rc=0 i
  compose ps
  for i in "${!ports[@]}"; do
    if healthy "${ports[$i]}"; then
      echo "${replicas[$i]}: healthy at http://127.0.0.1:${ports[$i]}"
    else
      echo "${replicas[$i]}: not answering at http://127.0.0.1:${ports[$i]}/healthz"
      rc=3
    fi
  done
  return $rc
}

case ${1:-} in
  up) up ;;
  down)
    docker_setup
    need_env_file
    compose down || die "\`docker compose -f $file down\` failed (output above)"
    echo "cluster: stopped; the volumes (records, objects, keys) are kept"
    ;;
  destroy)
    docker_setup
    need_env_file
    compose down -v || die "\`docker compose -f $file down -v\` failed (output above)"
    echo "cluster: stopped and its volumes removed ($env_file is kept: a new cluster takes its credentials)"
    ;;
  status)
    docker_setup
    need_env_file
    status || exit $?
    ;;
  *) die "usage: $0 up|down|destroy|status" ;;
esac
