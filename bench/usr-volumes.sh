#!/usr/bin/env bash
# bench/usr-volumes.sh [--runs N] [--kernel KREL] [PACKAGE ...]
#
# Why kmodforge mounts each builder image's /usr from read-only named volumes
# (server/src/usr_volumes.rs): times the same `make -j2 KERNELRELEASE=<k> -C <headers> M=<tree>` three ways,
# interleaved, N runs each (default 5), and prints medians:
#   native      on this host, with the host's linux-headers-<k> and gcc (needs both installed: what DKMS uses)
#   image       in a container of the builder image, every file read through the engine's storage driver
#               (fuse-overlayfs on this project's machines)
#   volumes     the same container with the image's /usr/* and /usr/src/* on read-only named volumes, as the
#               server mounts them (copied once, before the timed runs)
# The source is a Debian *-dkms package's tree (default: acpi-call-dkms apfs-dkms), fetched with apt.
# The builder image kmodforge-builder:debian-bookworm-<k> must exist (PUT /v1/kernels/<k> on a server).
# Volumes made here are named kmf-bench-usr-* and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

RUNS=5
KREL=6.1.0-47-amd64
PKGS=()
while (($#)); do
    case $1 in
        --runs) posint "$1" "${2:-}"; RUNS=$2; shift 2 ;;
        --kernel) KREL=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) PKGS+=("$1"); shift ;;
    esac
done
((${#PKGS[@]})) || PKGS=(acpi-call-dkms apfs-dkms)
IMG=kmodforge-builder:debian-bookworm-$KREL
docker image inspect "$IMG" >/dev/null 2>&1 || die "$IMG not found: prepare it with PUT /v1/kernels/$KREL"
[[ -e /lib/modules/$KREL/build/include ]] || die "no host headers for $KREL: apt-get install linux-headers-$KREL"

work=$(mktemp -d)
volumes=()
cleanup() {
    rm -rf "$work"
    for v in "${volumes[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# The same volume layout as the server: /usr/* but /usr/src, and /usr/src/*.
mapfile -t targets < <(docker run --rm "$IMG" sh -c \
    'find /usr -mindepth 1 -maxdepth 1 -type d ! -path /usr/src; find /usr/src -mindepth 1 -maxdepth 1 -type d')
mounts=()
for t in "${targets[@]}"; do
    v="kmf-bench-usr${t//\//-}"
    volumes+=("$v")
    mounts+=(--mount "type=volume,src=$v,dst=$t,readonly")
done
say "copying the image's /usr into ${#volumes[@]} volumes"
docker run --rm "${mounts[@]}" "$IMG" true

MAKE="make -j2 KERNELRELEASE=$KREL -C /lib/modules/$KREL/build"
time_native() {
    rm -rf "$work/n" && cp -a "$1" "$work/n"
    local t0 t1
    t0=$(now); (cd "$work/n" && $MAKE M="$work/n" >/dev/null 2>&1) || die "native make failed"; t1=$(now)
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}
time_container() {
    local src=$1; shift
    docker run --rm --read-only --network none --user 1000:1000 --cpus 2 \
        --tmpfs /tmp:rw,exec,size=1g,mode=1777 "$@" -v "$src:/src:ro" "$IMG" bash -c \
        "cp -a /src /tmp/b && cd /tmp/b && s=\$EPOCHREALTIME && $MAKE M=/tmp/b >/dev/null 2>&1 && e=\$EPOCHREALTIME && python3 -c \"print(f'{\$e - \$s:.3f}')\""
}

printf '%-22s %5s %10s %10s %10s %9s %9s\n' package runs native image volumes image/n volumes/n
for pkg in "${PKGS[@]}"; do
    src=$(tests/fixtures/fetch-debian-dkms.sh "$pkg" "$work/src")
    # One untimed warm-up of each way.
    time_native "$src" >/dev/null; time_container "$src" >/dev/null; time_container "$src" "${mounts[@]}" >/dev/null
    n=() i=() v=()
    for _ in $(seq "$RUNS"); do
        n+=("$(time_native "$src")")
        i+=("$(time_container "$src")")
        v+=("$(time_container "$src" "${mounts[@]}")")
    done
    python3 - "$pkg" "$RUNS" "${n[*]}" "${i[*]}" "${v[*]}" <<'PY'
import statistics, sys
pkg, runs, *cols = sys.argv[1:]
med = [statistics.median(float(x) for x in c.split()) for c in cols]
print(f"{pkg:<22} {runs:>5} {med[0]:>10.2f} {med[1]:>10.2f} {med[2]:>10.2f} {med[1]/med[0]:>8.2f}x {med[2]/med[0]:>8.2f}x")
PY
done
