#!/bin/bash
# Starts PostgreSQL on $PGDATA: creates the cluster on first start (password
# authentication over TCP), makes sure of the role and database (socket only, before
# the server listens on TCP), then runs the server in the foreground.
set -euo pipefail
die() { echo "postgres-entrypoint: $*" >&2; exit 1; }
bin=/usr/local/lib/pgbin
user=${POSTGRES_USER:-kmodforge}
db=${POSTGRES_DB:-kmodforge}
[[ -n ${POSTGRES_PASSWORD:-} ]] || die "POSTGRES_PASSWORD is not set (scripts/cluster.sh writes it to .cluster.env)"
[[ $user =~ ^[a-z_][a-z0-9_]{0,62}$ && $db =~ ^[a-z_][a-z0-9_]{0,62}$ ]] \
  || die "POSTGRES_USER and POSTGRES_DB must be lower-case identifiers ([a-z_][a-z0-9_]*)"

if [[ -d $PGDATA && ! -s $PGDATA/PG_VERSION ]]; then
  rm -rf "$PGDATA" # an initdb that did not finish
fi
if [[ ! -s $PGDATA/PG_VERSION ]]; then
  echo "postgres-entrypoint: first start, creating the cluster in $PGDATA"
  "$bin/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  echo "include_if_exists = 'kmodforge.conf'" >>"$PGDATA/postgresql.conf"
  # Every address may try, with a password: the port is on the compose network only.
  cat >>"$PGDATA/pg_hba.conf" <<CONF
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
CONF
fi

# Rewritten on every start. The socket is in /tmp (a tmpfs: the root file system is
# read-only).
cat >"$PGDATA/kmodforge.conf" <<CONF
listen_addresses = '*'
unix_socket_directories = '/tmp'
password_encryption = scram-sha-256
CONF

# The role and database, over the socket only (no TCP client sees a half-made role).
"$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 -s start
psql() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h /tmp -U postgres -d postgres "$@"; }
psql -v user="$user" -v db="$db" <<'SQL' || { "$bin/pg_ctl" -D "$PGDATA" -m fast -w -s stop; die "creating role and database failed"; }
\getenv password POSTGRES_PASSWORD
SELECT format('CREATE ROLE %I', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user')\gexec
ALTER ROLE :"user" LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
"$bin/pg_ctl" -D "$PGDATA" -m fast -w -t 60 -s stop
echo "postgres-entrypoint: role $user and database $db ready"
exec "$bin/postgres" -D "$PGDATA"
