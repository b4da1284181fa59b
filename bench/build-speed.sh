#!/usr/bin/env bash
# bench/build-speed.sh [--runs N] [--openafs-runs N] [--floor] [--noacl] [--dkms] [--ab NAME=VALUE] [--no-default-arm] [--quick] [--only PKG] [--out DIR] -- the build-speed benchmark of
# issue 16 (docs/BENCHMARKS.md, "Build speed"): a fixed set of DKMS packages, each built cold through a kmodforge
# server (release build, fresh data dir) and with plain `make` on the host with the same headers, interleaved,
# and the ratio of the medians printed per package:
#
#   r8152                 single-file module (Realtek's 250 KB r8152.c, bench/r8152-source.sh)
#   v4l2loopback-dkms     small module (one .c, Debian's package)
#   lttng-modules-dkms    many-file module (46 modules, hundreds of objects)
#   openafs-modules-dkms  configure-heavy (autoconf's compile tests, then a serial make); 1 run unless --openafs-runs
#
# --floor adds a second server arm whose job containers run under the OCI runtime kmf-kernel-overlay
# (bench/kernel-overlay-runtime.sh registers it for the run and removes it afterwards): the same sandbox with
# the image's layers on the kernel's overlayfs, i.e. what a Docker engine with the usual overlay2 storage driver
# would give, measured on this fuse-overlayfs machine. --ab NAME=VALUE (repeatable) adds a server arm with that
# variable set (KMODFORGE_EXPERIMENT_NO_ETC_VOLUME=1: before the /etc volume fix). --quick: r8152 and v4l2loopback;
# --only PKG: that package alone (repeatable). --noacl adds an arm whose job containers' roots are mounted by
# fuse-overlayfs with `-o noacl` (bench/fuse-overlayfs-opts.sh installs a wrapper for the run, removed after). --dkms adds the real DKMS on the host (`dkms build` of the same
# tree, after an untimed `dkms add`; needs the dkms package) and a second ratio table against it.
# --no-default-arm leaves out the server arm without variables (with --noacl/--ab: a long build's arms only).
#
# Needs root, Docker, linux-headers-<kernel> on the host, `cargo build --release -p kmodforge-server` first
# ($CARGO_TARGET_DIR honoured). Everything else (per-build samples, phases, CPU split): bench/profile-build.py,
# which this runs; raw records in OUT/profile.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 openafs_runs=1 floor=0 noacl=0 quick=0 out="" ab=() only=() dkms=() nodefault=()
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --openafs-runs) openafs_runs=$2; shift 2 ;;
    --floor) floor=1; shift ;;
    --noacl) noacl=1; shift ;;
    --ab) ab+=(--ab "$2"); shift 2 ;;
    --quick) quick=1; shift ;;
    --only) only+=(--package "$2"); shift 2 ;;
    --dkms) dkms=(--dkms); shift ;;
    --no-default-arm) nodefault=(--no-default-arm); shift ;;
    --out) out=$2; shift 2 ;;
    *) sed -n '2,27p' "$0" >&2; exit 2 ;;
  esac
done
out=${out:-bench/results/build-speed-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$(dirname "$out")"
pkgs=(--package r8152 --package v4l2loopback-dkms)
((quick)) || pkgs+=(--package lttng-modules-dkms --package openafs-modules-dkms)
((${#only[@]})) && pkgs=("${only[@]}")
args=("${pkgs[@]}" --runs "$runs" --runs-for "openafs-modules-dkms=$openafs_runs" --out "$out" "${ab[@]}" "${dkms[@]}" "${nodefault[@]}")
cleanup() {
  ((floor)) && bench/kernel-overlay-runtime.sh uninstall >&2
  ((noacl)) && bench/fuse-overlayfs-opts.sh uninstall >&2
  true
}
trap cleanup EXIT
if ((noacl)); then
  bench/fuse-overlayfs-opts.sh install >&2
  args+=(--ab "KMF_BENCH_FUSE_OPTS=noacl")
fi
if ((floor)); then
  bench/kernel-overlay-runtime.sh install >&2
  # Without the /usr and /etc volumes: on the kernel's overlayfs they change nothing, and their check
  # (entry counts with and without) differs under this runtime, which made the arm remove the volumes the
  # other arms share (Docker then made them again, copying the image, on their next build).
  args+=(--ab "KMODFORGE_EXPERIMENT_RUNTIME=kmf-kernel-overlay KMODFORGE_USR_VOLUMES=false")
fi
bench/profile-build.py "${args[@]}" | tee "$out.md"
echo "build-speed: tables in $out.md, raw records in $out/profile.jsonl" >&2
