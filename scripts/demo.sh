#!/usr/bin/env bash
# Starts the kmodforge server (docker compose) and builds the hello-world module
# fixture for a real Debian kernel with the curl one-shot, boot-checked (the kernel
# booted under qemu and the module loaded into it), then shows its modinfo and the check.
# Auth is on: the server writes an admin token on its first start, and the demo
# makes a narrower `publish` token limited to the hello module for its build.
#   scripts/demo.sh [KREL]     (default 6.1.0-47-amd64)
set -euo pipefail
cd "$(dirname "$0")/.."
KREL=${1:-6.1.0-47-amd64}
URL=${KMODFORGE_URL:-http://127.0.0.1:8080}

compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }

scripts/install-deps.sh
images/bootstrap-base.sh bookworm debian:bookworm-slim
cargo build --release -p kmodforge-server
# The server runs as an unprivileged user that holds only the Docker socket's group;
# compose reads its id from .env (so later `docker compose exec` calls find it too).
echo "DOCKER_GID=$(stat -c %g /var/run/docker.sock)" > .env
compose up -d --build
echo "waiting for $URL/healthz ..."
for _ in $(seq 60); do curl -fsS "$URL/healthz" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$URL/healthz"; echo

# The admin token never leaves the data volume except into this variable; the
# build uses a token that may publish kmf-hello only (a new one per run).
ADMIN=$(compose exec -T server cat /data/admin.token)
TOKEN=$(compose exec -T server kmodforge-server token create --name "demo-$(date +%s)" \
  --scope publish --module kmf-hello)
auth=(-H "Authorization: Bearer $TOKEN")
echo "tokens: $(curl -fsS -H "Authorization: Bearer $ADMIN" "$URL/v1/tokens" | python3 -c \
  'import json,sys; print(", ".join(t["name"] + " (" + t["scope"] + ")" for t in json.load(sys.stdin)))')"

out=$(mktemp -d)
tar -C tests/fixtures/hello -czf "$out/src.tar.gz" .
echo "building tests/fixtures/hello for $KREL and boot-checking it (the first run also builds the builder and"
echo "verifier images: a few minutes)"
curl -sS --fail-with-body "${auth[@]}" --data-binary @"$out/src.tar.gz" "$URL/v1/build?kernel=$KREL&boot_check=true" \
  -o "$out/modules.tar" || { cat "$out/modules.tar" 2>/dev/null; echo; exit 1; }
tar -C "$out" -xf "$out/modules.tar"
ls -l "$out"
/sbin/modinfo "$out/kmf_hello.ko"
python3 - "$out/manifest.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["boot_check"]
print(f"boot check: passed={c['passed']} in {c['kernel']} (linux-image {c['kernel_package_version']}), "
      f"guest {c['boot_seconds']} s, initramfs {c['initramfs_bytes']} bytes")
for m in c["modules"]:
    print(f"  {m['name']}: loaded={m['loaded']} initstate={m['initstate']} srcversion={m['srcversion']}")
    for line in m["messages"]:
        print(f"    kernel: {line}")
PY
echo "manifest: curl -H \"Authorization: Bearer \$(docker compose exec -T server cat /data/admin.token)\" $URL/v1/artifacts/kmf-hello/1.0/$KREL"
