#!/usr/bin/env bash
# Kernel upgrades (issue 12):
#   1. time from a kernel's appearance in the archive index to every registered AUTOINSTALL module ready
#      (an r8152-class NIC driver, see bench/r8152-source.sh, and Debian's v4l2loopback-dkms), with and without
#      boot checks: a local archive (real index
#      stanzas from apt-cache, pointing at the real mirror) gains the kernel, the release server's watcher
#      (1 s interval) prebuilds; the clock stops when /v1/matrix shows both cells final.
#      - cached: the kernel's builder (and verifier) images exist; ROUNDS runs, a fresh data dir each
#      - fresh:  FRESH_KERNEL's images are removed before each run, so the builder (and verifier) image
#                builds count (the shared toolchain layers stay: what a server that serves kernels has)
#   2. a host's postinst hook for a prebuilt kernel (kmodforge-agent sync --kernel K --hook, on a temp root)
#      against DKMS's `dkms autoinstall -k K` for the same module (r8152) on this machine, RUNS each
# Results: markdown on stdout, raw lines in bench/results/prebuild-*.jsonl.
#
#   bench/prebuild.sh     ROUNDS=3 FRESH_ROUNDS=1 RUNS=5 HOOK=1
#                         CACHED_KERNEL=6.1.0-56-amd64 FRESH_KERNEL=6.1.0-57-amd64 OLD_KERNEL=6.1.0-47-amd64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
RUNS=${RUNS:-5}
FRESH_ROUNDS=${FRESH_ROUNDS:-1}
HOOK=${HOOK:-1}   # 0: skip part 2
OLD_KERNEL=${OLD_KERNEL:-6.1.0-47-amd64}
CACHED_KERNEL=${CACHED_KERNEL:-6.1.0-56-amd64}
FRESH_KERNEL=${FRESH_KERNEL:-6.1.0-57-amd64}
OUT=bench/results
mkdir -p "$OUT"
W=$(mktemp -d /tmp/kmf-bench-prebuild.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
RESULTS="$W/results.jsonl"; : >"$RESULTS"

echo "building the release server and agent" >&2
cargo build --release -q -p kmodforge-server -p kmodforge-agent
SERVER=$PWD/target/release/kmodforge-server
AGENT=$PWD/target/release/kmodforge-agent

# ---------------------------------------------------------------- sources
mkdir -p "$W/src"
R8152_VER=$(bench/r8152-source.sh "$W/src/r8152")
(cd "$W" && apt-get download -qq v4l2loopback-dkms >/dev/null && dpkg-deb -x v4l2loopback-dkms_*.deb "$W/deb")
V4L2=$(ls -d "$W"/deb/usr/src/v4l2loopback-*)
V4L2_VER=${V4L2##*/v4l2loopback-}
tar -C "$W/src/r8152" -czf "$W/r8152.tgz" .
tar -C "$V4L2" -czf "$W/v4l2.tgz" .

# ---------------------------------------------------------------- a local archive
mkdir -p "$W/archive/dists/bookworm/main/binary-amd64"
index() { # index KERNEL...: the Packages.gz with those kernels' headers (real stanzas)
  { for k in "$@"; do apt-cache show --no-all-versions "linux-headers-$k"; echo; done; } \
    | gzip -c >"$W/archive/dists/bookworm/main/binary-amd64/Packages.gz.tmp"
  mv "$W/archive/dists/bookworm/main/binary-amd64/Packages.gz.tmp" "$W/archive/dists/bookworm/main/binary-amd64/Packages.gz"
}
index "$OLD_KERNEL"
APORT=18461
(cd "$W/archive" && exec python3 -m http.server "$APORT" --bind 127.0.0.1 >/dev/null 2>&1) & PIDS+=($!)

PORT=18462
BASE=http://127.0.0.1:$PORT
start_server() { # start_server DATA BOOTCHECK
  KMODFORGE_LOG=warn KMODFORGE_ARCHIVES="http://127.0.0.1:$APORT bookworm" KMODFORGE_ARCHIVE_INTERVAL_SECS=1 \
    KMODFORGE_BOOT_CHECK=$2 "$SERVER" --listen "127.0.0.1:$PORT" --data-dir "$1" >"$1.log" 2>&1 &
  SPID=$!; PIDS+=("$SPID")
  for _ in $(seq 200); do curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null && break; sleep 0.1; done
  H="Authorization: Bearer $(cat "$1/admin.token")"
}
stop_server() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
final_both() { # final_both KERNEL: prints "ready ready" when both cells are final
  curl -fsS -H "$H" "$BASE/v1/matrix" | python3 -c '
import json, sys
m, k = json.load(sys.stdin), sys.argv[1]
s = {c["name"]: c["state"] for c in m["cells"] if c["kernel"] == k}
a, b = s.get("r8152"), s.get("v4l2loopback")
print("%s %s" % (a, b) if a not in ("missing", "building", None) and b not in ("missing", "building", None) else "")' "$1"
}

# prebuild_run NAME KERNEL BOOTCHECK
prebuild_run() {
  local name=$1 k=$2 bc=$3 data="$W/data-$1-$RANDOM"
  index "$OLD_KERNEL"
  start_server "$data" "$bc"
  sleep 2   # the first scan records the archive
  curl -fsS -o /dev/null -H "$H" -T "$W/r8152.tgz" "$BASE/v1/modules/r8152/$R8152_VER"
  curl -fsS -o /dev/null -H "$H" -T "$W/v4l2.tgz" "$BASE/v1/modules/v4l2loopback/$V4L2_VER"
  local t0 t1 states=""
  t0=$(date +%s.%N)
  index "$OLD_KERNEL" "$k"
  for _ in $(seq 3600); do states=$(final_both "$k"); [[ -n $states ]] && break; sleep 0.5; done
  t1=$(date +%s.%N)
  stop_server
  echo "{\"what\": \"prebuild\", \"config\": \"$name\", \"kernel\": \"$k\", \"boot_check\": $bc, \"seconds\": $(python3 -c "print(round($t1 - $t0, 1))"), \"states\": \"$states\"}" | tee -a "$RESULTS" >&2
}

for round in $(seq "$ROUNDS"); do
  prebuild_run cached "$CACHED_KERNEL" false
  prebuild_run cached-bootcheck "$CACHED_KERNEL" true
done
forget_images() { # the fresh kernel's builder and verifier images, their package layers too
  docker images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E "^kmodforge-(builder|verifier):debian-bookworm-$FRESH_KERNEL(-pkgs-.*)?$" \
    | xargs -r docker rmi -f >/dev/null 2>&1 || true
}
for _ in $(seq "$FRESH_ROUNDS"); do
  forget_images; prebuild_run fresh "$FRESH_KERNEL" false
  forget_images; prebuild_run fresh-bootcheck "$FRESH_KERNEL" true
done

if [[ $HOOK == 1 ]]; then

# ---------------------------------------------------------------- postinst hook vs dkms autoinstall
K=$OLD_KERNEL
start_server "$W/data-hook" false
curl -fsS -o /dev/null -H "$H" -T "$W/r8152.tgz" "$BASE/v1/modules/r8152/$R8152_VER"
curl -fsS -o /dev/null -H "$H" -X POST "$BASE/v1/kernels/$K/prebuild"
for _ in $(seq 600); do
  st=$(curl -fsS -H "$H" "$BASE/v1/matrix" | python3 -c 'import json,sys; m=json.load(sys.stdin); print([c["state"] for c in m["cells"] if c["kernel"]==sys.argv[1]])' "$K")
  [[ $st == *ready* ]] && break; sleep 0.5
done
ROOT="$W/host"
mkdir -p "$ROOT/lib/modules/$K" "$ROOT/etc"
for f in modules.dep modules.order modules.builtin modules.builtin.modinfo; do : >"$ROOT/lib/modules/$K/$f"; done
echo "$(cat "$W/data-hook/admin.token")" >"$ROOT/etc/token"
cat >"$ROOT/etc/agent.toml" <<EOF
server = "$BASE"
root = "$ROOT"
token_file = "$ROOT/etc/token"
$("$AGENT" trust show "$BASE" | grep '^trusted_keys = ')
[[module]]
name = "r8152"
version = "$R8152_VER"
EOF
for i in $(seq "$RUNS"); do
  "$AGENT" --config "$ROOT/etc/agent.toml" uninstall "r8152/$R8152_VER" --kernel "$K" >/dev/null 2>&1 || true
  t0=$(date +%s.%N)
  "$AGENT" --config "$ROOT/etc/agent.toml" sync --kernel "$K" --hook >/dev/null
  t1=$(date +%s.%N)
  echo "{\"what\": \"hook\", \"tool\": \"kmodforge\", \"seconds\": $(python3 -c "print(round($t1 - $t0, 3))")}" >>"$RESULTS"
done
stop_server

if ! command -v dkms >/dev/null || ! dpkg -s "linux-headers-$K" >/dev/null 2>&1; then
  echo "installing dkms and linux-headers-$K for the comparison" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dkms "linux-headers-$K" >/dev/null
fi
rm -rf "/usr/src/r8152-$R8152_VER"; cp -r "$W/src/r8152" "/usr/src/r8152-$R8152_VER"
dkms remove -m r8152 -v "$R8152_VER" --all >/dev/null 2>&1 || true
dkms add -m r8152 -v "$R8152_VER" >/dev/null
for i in $(seq "$RUNS"); do
  dkms remove -m r8152 -v "$R8152_VER" -k "$K" >/dev/null 2>&1 || true
  dkms add -m r8152 -v "$R8152_VER" >/dev/null 2>&1 || true
  t0=$(date +%s.%N)
  dkms autoinstall -k "$K" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "{\"what\": \"hook\", \"tool\": \"dkms\", \"seconds\": $(python3 -c "print(round($t1 - $t0, 3))")}" >>"$RESULTS"
done
dkms status -m r8152 >&2 || true
dkms remove -m r8152 -v "$R8152_VER" --all >/dev/null 2>&1 || true
rm -rf "/usr/src/r8152-$R8152_VER"

fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RESULTS" "$OUT/prebuild-$stamp.jsonl"
python3 - "$RESULTS" <<'PY' | tee "$OUT/prebuild-$stamp.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("### From the kernel's appearance in the index to r8152 and v4l2loopback final (seconds)\n")
print("| config | runs | median | all | final states |")
print("|---|---|---|---|---|")
for c in ("cached", "cached-bootcheck", "fresh", "fresh-bootcheck"):
    rs = [r for r in rows if r["what"] == "prebuild" and r["config"] == c]
    if rs:
        secs = [r["seconds"] for r in rs]
        print(f"| {c} ({rs[0]['kernel']}) | {len(rs)} | {statistics.median(secs):.1f} | {', '.join(map(str, secs))} | {rs[0]['states']} |")
print("\n### A host's postinst hook for a prebuilt kernel vs `dkms autoinstall` (r8152, seconds)\n")
print("| tool | runs | median | min | max |")
print("|---|---|---|---|---|")
med = {}
for t in ("kmodforge", "dkms"):
    s = [r["seconds"] for r in rows if r["what"] == "hook" and r["tool"] == t]
    if s:
        med[t] = statistics.median(s)
        print(f"| {t} | {len(s)} | {med[t]:.3f} | {min(s):.3f} | {max(s):.3f} |")
if len(med) == 2:
    print(f"\ndkms autoinstall / kmodforge hook: {med['dkms'] / med['kmodforge']:.1f}x")
PY
