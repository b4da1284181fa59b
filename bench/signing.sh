#!/usr/bin/env bash
# The cost of signing (issue 11), with the server's and the agent's own code:
#   1. module signing per module (server/examples/sign_bench.rs, OpenSSL CMS, RSA 3072 like the generated key):
#      a small module, Debian's r8152.ko (the r8152 class after strip, what the server signs), and 6.8 MB of
#      bytes (the r8152 class before strip: what signing would cost without DKMS's strip); and a byte-for-byte
#      comparison with the kernel's scripts/sign-file (run in the builder image, same key and module)
#   2. manifest attestation (Ed25519) and the agent's verification (agent/examples/verify_bench.rs)
#   3. the boot check with and without signature enforcement: the verifier image's bootcheck run as the
#      server runs it (network none, read-only, no capabilities, uid 1000), ROUNDS interleaved pairs
# Needs the images kmodforge-verifier:debian-bookworm-$KREL and kmodforge-builder:debian-bookworm-$KREL
# (made by the server or the tests). Results: a markdown table on stdout, raw JSON in bench/results/.
#
#   bench/signing.sh         ROUNDS=5 KREL=6.1.0-47-amd64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
KREL=${KREL:-6.1.0-47-amd64}
VERIFIER=kmodforge-verifier:debian-bookworm-$KREL
BUILDER=kmodforge-builder:debian-bookworm-$KREL
OUT=bench/results
mkdir -p "$OUT"
for img in "$VERIFIER" "$BUILDER"; do
  docker image inspect "$img" >/dev/null 2>&1 || { echo "missing image $img (run the tests or a build first)" >&2; exit 1; }
done

echo "building sign_bench and verify_bench (release)" >&2
cargo build --release -q -p kmodforge-server --example sign_bench
cargo build --release -q -p kmodforge-agent --example verify_bench
SIGN=target/release/examples/sign_bench
VERIFY=target/release/examples/verify_bench

W=$(mktemp -d /tmp/kmf-bench-signing.XXXXXX)
chmod 0755 "$W"
trap 'rm -rf "$W"' EXIT
openssl req -new -x509 -newkey rsa:3072 -nodes -days 30 -subj "/CN=kmodforge bench key" \
  -addext extendedKeyUsage=codeSigning -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
openssl req -new -x509 -newkey rsa:3072 -nodes -days 30 -subj "/CN=bench foreign key" \
  -keyout "$W/other.pem" -out "$W/other.crt" 2>/dev/null
openssl x509 -in "$W/cert.pem" -outform DER -out "$W/cert.der"

# Real modules from Debian's tree in the verifier image, without their signatures.
docker run --rm --user 0 -v "$W:/w" "$VERIFIER" sh -c "
  t=/opt/kmodforge/kernel/lib/modules/$KREL/kernel
  cp \$t/drivers/net/dummy.ko /w/small.signed.ko && cp \$t/drivers/net/usb/r8152.ko /w/r8152.signed.ko
  chmod 0644 /w/*.ko"
python3 - "$W" <<'PY'
import os, struct, sys
w = sys.argv[1]
marker = b"~Module signature appended~\n"
for name in ("small", "r8152"):
    d = open(f"{w}/{name}.signed.ko", "rb").read()
    if d.endswith(marker):
        b = d[:-len(marker)]
        n = struct.unpack(">I", b[-4:])[0]
        d = b[:-12 - n]
    open(f"{w}/{name}.ko", "wb").write(d)
# 6.8 MB: the r8152 class before strip (signing hashes every byte; the content does not matter).
r = open(f"{w}/r8152.ko", "rb").read()
big = (r * (6_800_000 // len(r) + 1))[:6_800_000]
open(f"{w}/r8152-unstripped-size.ko", "wb").write(big)
PY

results="$W/results.jsonl"
: >"$results"
for m in small r8152 r8152-unstripped-size; do
  runs=200; [[ $m == r8152-unstripped-size ]] && runs=30
  "$SIGN" module "$W/key.pem" "$W/cert.pem" "$W/$m.ko" "$runs" "$W/$m.ours.ko" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); d["module"]=sys.argv[1]; print(json.dumps(d))' "$m" >>"$results"
done
# The same key and module through the kernel's own sign-file.
cp "$W/r8152.ko" "$W/r8152.signfile.ko"
docker run --rm --network none --user 0 -v "$W:/w" -w /w "$BUILDER" \
  /usr/lib/linux-kbuild-6.1/scripts/sign-file sha256 key.pem cert.pem r8152.signfile.ko
if cmp -s "$W/r8152.signfile.ko" "$W/r8152.ours.ko"; then same=true; else same=false; fi
echo "{\"what\": \"sign-file\", \"identical\": $same}" >>"$results"

# A manifest as the server writes them (one file, a boot check), attested and verified.
python3 - "$W/manifest.json" <<'PY'
import json, sys
f = {"file": "r8152.ko", "dest_location": "/updates/dkms", "size": 421000, "sha256": "ab" * 32,
     "modinfo": {"name": "r8152", "vermagic": "6.1.0-47-amd64 SMP preempt mod_unload modversions ",
                 "version": "v1.12.13", "srcversion": "0" * 23, "depends": [], "license": "GPL", "fields": []}}
m = {"key": "cd" * 32, "name": "r8152", "version": "2.17.1", "kernel": "6.1.0-47-amd64", "arch": "x86_64",
     "source_digest": "ef" * 32, "builder_image": {"id": "sha256:" + "12" * 32, "tag": "kmodforge-builder:x"},
     "files": [f], "plan": {"package_name": "r8152", "package_version": "2.17.1", "modules": [], "make": "make",
                             "patches": [], "pre_build": None, "post_build": None, "build_depends": [],
                             "autoinstall": True, "no_weak_modules": False, "obsolete_by": None, "warnings": []},
     "build_id": "0123456789abcdef", "built_at": "2026-12-03T10:00:00Z", "build_seconds": 20.5,
     "module_signing": {"signed": True, "signer": "kmodforge module signing key", "key_id": "2B:10",
                        "hash_algo": "sha256", "certificate_sha256": "34" * 32}}
json.dump(m, open(sys.argv[1], "w"))
PY
"$SIGN" manifest "$W/manifest.json" 2000 >"$W/attested.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); json.dump(d.pop("signed"), open(sys.argv[2],"w")); print(json.dumps(d))' \
  "$W/attested.json" "$W/signed-manifest.json" >>"$results"
"$VERIFY" "$W/signed-manifest.json" 2000 >>"$results"

# Boot checks: the same module (dummy.ko signed with the bench key), with and without enforcement.
mkdir -p "$W/in-plain" "$W/in-enforced/kmf-trust" "$W/in-enforced/kmf-probe/unsigned" "$W/in-enforced/kmf-probe/foreign"
"$SIGN" module "$W/key.pem" "$W/cert.pem" "$W/small.ko" 1 "$W/in-plain/dummy.ko" >/dev/null
cp "$W/in-plain/dummy.ko" "$W/in-enforced/dummy.ko"
cp "$W/cert.der" "$W/in-enforced/kmf-trust/module-signing.der"
cp "$W/small.ko" "$W/in-enforced/kmf-probe/unsigned/dummy.ko"
"$SIGN" module "$W/other.pem" "$W/other.crt" "$W/small.ko" 1 "$W/in-enforced/kmf-probe/foreign/dummy.ko" >/dev/null
tar -C "$W/in-plain" -cf "$W/plain.tar" .
tar -C "$W/in-enforced" -cf "$W/enforced.tar" .
check() { # check NAME TAR [ENV...]
  local name=$1 tar=$2; shift 2
  local t0 t1 envs=()
  for e in "$@"; do envs+=(-e "$e"); done
  t0=$(date +%s.%N)
  docker run --rm -i --network none --read-only --tmpfs /tmp:exec,size=536870912 --cap-drop ALL \
    --security-opt no-new-privileges --user 1000:1000 -e "KMF_KREL=$KREL" -e KMF_BOOT_TIMEOUT=120 "${envs[@]}" \
    "$VERIFIER" /usr/local/lib/kmodforge/bootcheck <"$tar" >"$W/report.json" 2>"$W/bootcheck.err" || true
  t1=$(date +%s.%N)
  python3 - "$name" "$t0" "$t1" "$W/report.json" >>"$results" <<'PY'
import json, sys
name, t0, t1, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
print(json.dumps({"what": "bootcheck", "config": name, "wall_s": round(t1 - t0, 2), "boot_s": r.get("seconds"),
                  "passed": r.get("reason") is None, "reason": r.get("reason"), "boot_image": r.get("boot_image"),
                  "enforced": r.get("signature_enforced"), "cert_loaded": r.get("trusted_cert_loaded"),
                  "probes_rejected": [p["rejected"] for p in r.get("probes", [])]}))
PY
}
for round in $(seq "$ROUNDS"); do
  echo "boot check round $round" >&2
  if ((round % 2)); then
    check plain "$W/plain.tar"; check enforced "$W/enforced.tar" KMF_SIG_ENFORCE=1 "KMF_TRUSTED_CN=kmodforge bench key"
  else
    check enforced "$W/enforced.tar" KMF_SIG_ENFORCE=1 "KMF_TRUSTED_CN=kmodforge bench key"; check plain "$W/plain.tar"
  fi
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
cp "$results" "$OUT/signing-$stamp.jsonl"
python3 bench/signing_report.py "$results" | tee "$OUT/signing-$stamp.md"
