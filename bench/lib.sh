#!/usr/bin/env bash
# Helpers shared by bench/run.sh and bench/agent.sh (sourced; they use the caller's $0 and variables).

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

die() { printf '\nbench: ERROR: %s\n' "$*" >&2; exit 1; }

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

posint() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 needs a non-negative integer, got '$2'"; }

# ------------------------------------------------------------------ helpers
now() { printf '%s' "$EPOCHREALTIME"; }

# jq-free JSON access: jget FILE 'python expression over d'
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for i in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# write_auth_header DATA_DIR FILE: once the server answered /healthz, FILE (mode 0600) becomes a curl header
# file, "Authorization: Bearer <the admin token the server wrote to DATA_DIR/admin.token on its first start>",
# for `curl -H @FILE`. The token never sits in a variable or an argument: not in `set -x` traces, `ps` or output.
write_auth_header() {
    local token="$1/admin.token"
    [[ -s $token ]] || die "the server wrote no $token (every route but /healthz needs a token)"
    (umask 077; { printf 'Authorization: Bearer '; tr -d '[:space:]' <"$token"; printf '\n'; } >"$2")
}
