#!/bin/bash
# test-bootcheck.sh [KREL [OTHER_KREL]] -- manual end-to-end test of the verifier image and bootcheck.
#
#   images/verifier/test-bootcheck.sh                      # 6.1.0-47-amd64, cross-kernel case in 6.1.0-56-amd64
#   SKIP_IMAGE_BUILD=1 images/verifier/test-bootcheck.sh   # reuse existing verifier images
#
# Needs: a Docker engine (classic builder; deb.debian.org reachable from builds), the builder image
# kmodforge-builder:debian-bookworm-KREL (made by the server, or images/README.md), jq, and for the
# Debian DKMS sources apt-get (tests/fixtures/fetch-debian-dkms.sh).
#
# 1. builds kmodforge-verifier:debian-bookworm-KREL and -OTHER_KREL (timed), and checks that an unknown
#    kernel fails its RUN step with code 42 and one clear line;
# 2. compiles testdata/modules (kmf_bc_*), v4l2loopback-dkms and ddcci-dkms (Debian's sources) in a
#    sandboxed container of the builder image (make -C /lib/modules/KREL/build M=...);
# 3. runs bootcheck in the sandbox the server uses for each case and checks the JSON and the exit code.
# Every report is kept in $OUT (default /tmp/kmf-bootcheck-test): <case>.json, <case>.log (stderr).
# Prints a figures table and ends with "N passed, N failed"; exits 1 if anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
KREL=${1:-6.1.0-47-amd64}
OTHER=${2:-6.1.0-56-amd64}
SUITE=${SUITE:-bookworm}
BASE=${BASE:-debian:$SUITE-slim}
OUT=${OUT:-/tmp/kmf-bootcheck-test}
BUILDER=${BUILDER:-kmodforge-builder:debian-$SUITE-$KREL}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

verifier_image() { echo "kmodforge-verifier:debian-$SUITE-$1"; }
log() { printf '== %s\n' "$*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

passed=0
failed=0
figures=()
# check CASE DESCRIPTION JQ-EXPRESSION (evaluated on $OUT/CASE.json)
check() {
    local case=$1 what=$2 expr=$3
    if jq -e "$expr" "$OUT/$case.json" >/dev/null 2>&1; then
        passed=$((passed + 1)); echo "PASS $case: $what"
    else
        failed=$((failed + 1)); echo "FAIL $case: $what    (jq: $expr)"
    fi
}
check_rc() {
    local case=$1 want=$2 got
    got=$(cat "$OUT/$case.rc")
    if [[ $got == "$want" ]]; then
        passed=$((passed + 1)); echo "PASS $case: exit $got"
    else
        failed=$((failed + 1)); echo "FAIL $case: exit $got, expected $want (stderr: $OUT/$case.log)"
    fi
}

# ------------------------------------------------------------------ 1. images
build_verifier() {
    local krel=$1 t0 rc=0
    t0=$(now)
    DOCKER_BUILDKIT=0 docker build --force-rm --build-arg "BASE=$BASE" --build-arg "SUITE=$SUITE" \
        --build-arg "KREL=$krel" -t "$(verifier_image "$krel")" "$here" >"$OUT/build-$krel.log" 2>&1 || rc=$?
    figures+=("image build $krel: $(secs "$t0" "$(now)") s (exit $rc)")
    return $rc
}
if [[ ${SKIP_IMAGE_BUILD:-0} != 1 ]]; then
    for k in "$KREL" "$OTHER"; do
        log "building $(verifier_image "$k")"
        build_verifier "$k" || { tail -n 20 "$OUT/build-$k.log" >&2; echo "FAIL: image build for $k" >&2; exit 1; }
    done
    log "unknown kernel: 6.1.0-999-amd64 must fail with code 42"
    rc=0
    build_verifier 6.1.0-999-amd64 || rc=$?
    u="$OUT/build-6.1.0-999-amd64.log"
    if [[ $rc != 0 ]] && grep -q 'returned a non-zero code: 42' "$u" \
        && grep -q 'kmodforge: Debian package linux-image-6.1.0-999-amd64 not found in bookworm' "$u"; then
        passed=$((passed + 1)); echo "PASS unknown-kernel: RUN step exit 42, one line"
    else
        failed=$((failed + 1)); echo "FAIL unknown-kernel: see $u"
    fi
fi
for k in "$KREL" "$OTHER"; do
    docker image inspect "$(verifier_image "$k")" >/dev/null 2>&1 \
        || { echo "missing image $(verifier_image "$k")" >&2; exit 1; }
done
docker image inspect "$BUILDER" >/dev/null 2>&1 || { echo "missing builder image $BUILDER" >&2; exit 1; }
size=$(docker image inspect -f '{{.Size}}' "$(verifier_image "$KREL")")
figures+=("verifier image size: $((size / 1024 / 1024)) MiB")

# ------------------------------------------------------------------ 2. modules
# compile NAME SRC_DIR SCRIPT: SCRIPT runs in the source copy (/tmp/src) in the builder sandbox; every .ko
# below it ends up in $OUT/ko/NAME/ (flat).
compile() {
    local name=$1 src=$2 script=$3
    log "compiling $name for $KREL"
    rm -rf "$OUT/ko/$name"; mkdir -p "$OUT/ko/$name"
    tar -h -C "$src" -cf - . | docker run --rm -i --network none --read-only --user 1000:1000 --cap-drop ALL \
        --security-opt no-new-privileges --tmpfs /tmp:rw,exec,nosuid,nodev,size=1g,mode=1777 \
        -e "KREL=$KREL" "$BUILDER" bash -c '
            set -e; mkdir -p /tmp/src /tmp/out; tar -x -C /tmp/src; cd /tmp/src
            ( '"$script"' ) >&2
            find . -name "*.ko" -exec cp {} /tmp/out/ \;
            tar -C /tmp/out -cf - .' | tar -x -C "$OUT/ko/$name"
    ls "$OUT/ko/$name" >&2
}
compile testdata "$here/testdata/modules" 'make -C /lib/modules/$KREL/build M=/tmp/src modules'
dkms_src=$OUT/src
mkdir -p "$dkms_src"
v4l2_src=$("$repo/tests/fixtures/fetch-debian-dkms.sh" v4l2loopback-dkms "$dkms_src")
compile v4l2loopback "$v4l2_src" 'make -C /lib/modules/$KREL/build M=/tmp/src modules'
ddcci_src=$("$repo/tests/fixtures/fetch-debian-dkms.sh" ddcci-dkms "$dkms_src")
compile ddcci "$ddcci_src" 'make KVER=$KREL'

# ------------------------------------------------------------------ 3. bootcheck cases
# run CASE KREL TIMEOUT FILE...: FILE = a path below $OUT/ko; the tar holds their base names.
run() {
    local case=$1 krel=$2 timeout=$3 t0 rc=0; shift 3
    local tmp; tmp=$(mktemp -d)
    for f in "$@"; do cp "$OUT/ko/$f" "$tmp/"; done
    log "case $case: $* in $krel"
    t0=$(now)
    tar -C "$tmp" -cf - . | docker run --rm -i --network none --read-only --user 1000:1000 --cap-drop ALL \
        --security-opt no-new-privileges --tmpfs /tmp:rw,exec,nosuid,nodev,size=1g,mode=1777 \
        --memory 1536m --memory-swap 1536m --pids-limit 256 \
        -e "KMF_KREL=$krel" -e "KMF_BOOT_TIMEOUT=$timeout" \
        "$(verifier_image "$krel")" /usr/local/lib/kmodforge/bootcheck >"$OUT/$case.json" 2>"$OUT/$case.log" || rc=$?
    echo "$rc" >"$OUT/$case.rc"
    rm -rf "$tmp"
    figures+=("$(jq -r --arg c "$case" --arg rc "$rc" --arg wall "$(secs "$t0" "$(now)")" \
        '"\($c): exit \($rc), boot \(.seconds) s, prepare \(.prepare_seconds) s, docker run \($wall) s, initramfs \(.initramfs_bytes) bytes, \(.modules | length) modules"' \
        "$OUT/$case.json" 2>/dev/null || echo "$case: exit $rc, no JSON")")
    jq -c '{booted, completed, seconds, reason, modules: [.modules[] | {name, new, loaded, rc}]}' "$OUT/$case.json" \
        >&2 || true
}

run ok "$KREL" 60 testdata/kmf_bc_ok.ko
check_rc ok 0
check ok "booted, completed, one new module loaded" \
    '.booted and .completed and .reason == null and (.modules | length) == 1 and .modules[0].loaded'
check ok "/sys/module facts" '.modules[0].version == "1.0" and (.modules[0].srcversion | type) == "string"'
check ok "its own kernel message" '.modules[0].messages | any(test("kmf_bc_ok: hello from the guest"))'
check ok "the kernel's module tree is mounted for on-demand loading" '.on_demand == true'
check ok "one JSON object with the contract's keys" \
    'has("kernel") and has("booted") and has("completed") and has("seconds") and has("initramfs_bytes") and has("modules") and has("reason") and has("console_tail")'

run enodev "$KREL" 60 testdata/kmf_bc_enodev.ko
check_rc enodev 1
check enodev "not loaded, rc != 0, guest completed" '.completed and (.modules[0].loaded | not) and .modules[0].rc != 0'
check enodev "the module's message is recorded once (its init ran once)" '[.modules[0].messages[] | select(test("init returns -ENODEV"))] | length == 1'
check enodev "no trace of insmod's first try" '.modules[0].messages | all(test("Invalid ELF header") | not)'
check enodev "reason names the module and the errno" '.reason | test("kmf_bc_enodev") and test("No such device")'

run bug "$KREL" 60 testdata/kmf_bc_bug.ko
check_rc bug 1
check bug "no hang: the guest completed" '.completed and (.timed_out | not)'
check bug "Oops lines recorded" '.modules[0].messages | any(test("kernel BUG at")) and any(test("invalid opcode|Call Trace"))'
check bug "reason: insmod killed, kernel BUG" '.reason | test("kmf_bc_bug") and test("killed") and test("kernel BUG")'

run hang "$KREL" 20 testdata/kmf_bc_hang.ko
check_rc hang 1
check hang "timed out, not completed, booted" '.booted and (.completed | not) and .timed_out'
check hang "reason names the module being loaded" '.reason | test("timed out after 20 s while loading kmf_bc_hang")'
check hang "console tail shows the module's messages" '.console_tail | test("kmf_bc_hang: still in init")'

run panic "$KREL" 60 testdata/kmf_bc_panic.ko
check_rc panic 1
check panic "qemu ended at once: booted, not completed, no timeout, < 15 s" \
    '.booted and (.completed | not) and (.timed_out | not) and .seconds < 15'
check panic "reason: the module being loaded and the panic line" \
    '.reason | test("while loading kmf_bc_panic") and test("Kernel panic - not syncing: kmf_bc_panic: deliberate panic")'
check panic "console tail has the panic" '.console_tail | test("Kernel panic - not syncing")'

run order "$KREL" 60 testdata/kmf-bc-user.ko testdata/kmf_bc_base.ko
check_rc order 0
check order "kmf_bc_base loads before kmf_bc_user (file kmf-bc-user.ko)" \
    '[.modules[] | .name] == ["kmf_bc_base", "kmf_bc_user"] and .modules[1].file == "kmf-bc-user.ko" and all(.modules[]; .loaded)'
check order "kmf_bc_user saw the exported symbol" '.modules[1].messages | any(test("answers 42"))'

# kmf-bc-user without kmf_bc_base: the depmod subset cannot resolve kmf_bc_base_answer, bootcheck falls back
# to depmod of the whole tree (still unresolved), and the kernel refuses the module: Unknown symbol.
run missing-dep "$KREL" 60 testdata/kmf-bc-user.ko
check_rc missing-dep 1
check missing-dep "kernel: Unknown symbol kmf_bc_base_answer; depmod warned" \
    '(.modules[0].messages | any(test("Unknown symbol kmf_bc_base_answer"))) and (.modules[0].depmod | any(test("needs unknown symbol kmf_bc_base_answer")))'
check missing-dep "reason quotes it" '.reason | test("kmf_bc_user") and test("Unknown symbol kmf_bc_base_answer")'

run v4l2loopback "$KREL" 60 v4l2loopback/v4l2loopback.ko
check_rc v4l2loopback 0
check v4l2loopback "mc, videodev (in-kernel), then v4l2loopback" \
    '[.modules[] | [.name, .new]] == [["mc", false], ["videodev", false], ["v4l2loopback", true]]'
# v4l2loopback 0.12.7 has no MODULE_VERSION: no /sys/module/v4l2loopback/version (nor srcversion).
check v4l2loopback "all loaded; /sys/module/v4l2loopback live, tainted OE; its version message" \
    'all(.modules[]; .loaded) and .modules[2].initstate == "live" and .modules[2].taint == "OE" and .modules[2].version == null and (.modules[2].messages | any(test("v4l2loopback driver version 0.12.7 loaded")))'

run ddcci "$KREL" 60 ddcci/ddcci-backlight.ko ddcci/ddcci.ko
check_rc ddcci 0
check ddcci "ddcci before ddcci_backlight, both new and loaded" \
    '([.modules[] | select(.new) | .name] == ["ddcci", "ddcci_backlight"]) and all(.modules[]; .loaded)'

run several "$KREL" 60 testdata/kmf_bc_ok.ko testdata/kmf_bc_base.ko testdata/kmf-bc-user.ko \
    v4l2loopback/v4l2loopback.ko ddcci/ddcci.ko ddcci/ddcci-backlight.ko
check_rc several 0
check several "six new modules loaded" '([.modules[] | select(.new and .loaded)] | length) == 6 and .reason == null'

# Built for KREL, booted in OTHER: Debian bumped the ABI (module_layout's CRC differs), so the kernel must
# refuse it with its own message, and depmod -e -E warns about it too.
run cross "$OTHER" 60 testdata/kmf_bc_ok.ko
check_rc cross 1
check cross "the kernel refused it: disagrees about version of symbol module_layout" \
    '.completed and (.modules[0].loaded | not) and (.modules[0].messages | any(test("disagrees about version of symbol module_layout")))'
check cross "reason quotes the kernel" '.reason | test("kmf_bc_ok") and test("disagrees about version of symbol")'
check cross "depmod -e -E warned" '.modules[0].depmod | any(test("disagrees about version of symbol module_layout"))'

# Usage errors: exit 2 with a JSON reason, no boot.
usage_case() {
    local case=$1 krel=$2; shift 2
    "$@" | docker run --rm -i --network none --read-only --user 1000:1000 --cap-drop ALL \
        --security-opt no-new-privileges --tmpfs /tmp:rw,exec,nosuid,nodev,size=64m,mode=1777 \
        -e "KMF_KREL=$krel" "$(verifier_image "$KREL")" /usr/local/lib/kmodforge/bootcheck \
        >"$OUT/$case.json" 2>"$OUT/$case.log" && echo 0 >"$OUT/$case.rc" || echo $? >"$OUT/$case.rc"
    check_rc "$case" 2
    check "$case" "reason: $(jq -r .reason "$OUT/$case.json" 2>/dev/null)" '.reason | type == "string"'
}
usage_case bad-krel "$OTHER" tar -C "$OUT/ko/testdata" -cf - kmf_bc_ok.ko
usage_case no-ko "$KREL" tar -C "$here/testdata/modules" -cf - Makefile
usage_case not-a-module "$KREL" bash -c 'd=$(mktemp -d); echo junk >"$d/fake.ko"; tar -C "$d" -cf - fake.ko; rm -rf "$d"'
usage_case not-a-tar "$KREL" echo "this is not a tar"

echo
echo "figures:"
printf '  %s\n' "${figures[@]}"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
