#!/usr/bin/env bash
# Starts the kmodforge server (docker compose) and builds the hello-world module
# fixture for a real Debian kernel with the curl one-shot, then shows its modinfo.
#   scripts/demo.sh [KREL]     (default 6.1.0-47-amd64)
set -euo pipefail
cd "$(dirname "$0")/.."
KREL=${1:-6.1.0-47-amd64}
URL=${KMODFORGE_URL:-http://127.0.0.1:8080}

compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }

scripts/install-deps.sh
images/bootstrap-base.sh bookworm debian:bookworm-slim
cargo build --release -p kmodforge-server
compose up -d --build
echo "waiting for $URL/healthz ..."
for _ in $(seq 60); do curl -fsS "$URL/healthz" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$URL/healthz"; echo

out=$(mktemp -d)
tar -C tests/fixtures/hello -czf "$out/src.tar.gz" .
echo "building tests/fixtures/hello for $KREL (the first run also builds the builder image: a few minutes)"
curl -fsS --data-binary @"$out/src.tar.gz" "$URL/v1/build?kernel=$KREL" -o "$out/modules.tar" \
  || { cat "$out/modules.tar" 2>/dev/null; exit 1; }
tar -C "$out" -xf "$out/modules.tar"
ls -l "$out"
/sbin/modinfo "$out/kmf_hello.ko"
echo "manifest: curl $URL/v1/artifacts/kmf-hello/1.0/$KREL"
