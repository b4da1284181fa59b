#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the end-to-end tests
# against the real Docker engine, real Debian kernel headers, and real
# PostgreSQL and S3 (Garage) servers (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# One line per phase with its duration, so a slow CI run says where its time went.
phase_start=$SECONDS
phase() {
  echo "test.sh: $1 took $((SECONDS - phase_start)) s (${SECONDS} s so far)" >&2
  phase_start=$SECONDS
}
scripts/install-deps.sh
phase "installing dependencies"
images/bootstrap-base.sh bookworm debian:bookworm-slim
phase "the base image"
# The real PostgreSQL and S3 (Garage) servers the storage tests run against.
scripts/services.sh start
phase "starting PostgreSQL and S3"
# shellcheck disable=SC1091
source "${KMODFORGE_SERVICES_DIR:-/tmp/kmodforge-services}/env"
# Cargo's build output is a local cache like the images and the tools: one target
# directory kept across clones (CI runs on a fresh clone each time), so a run
# compiles only what changed. A clone elsewhere rebuilds the workspace's own crates
# (cargo keys them by path) and reuses every dependency. An explicit
# CARGO_TARGET_DIR wins; the cache is emptied when it outgrows 20 GiB.
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
  export CARGO_TARGET_DIR="${KMODFORGE_CARGO_TARGET:-$HOME/.cache/kmodforge/target}"
  mkdir -p "$CARGO_TARGET_DIR"
  if (($(du -s --block-size=1G "$CARGO_TARGET_DIR" | cut -f1) > 20)); then
    echo "test.sh: $CARGO_TARGET_DIR is over 20 GiB: emptying it" >&2
    rm -rf "${CARGO_TARGET_DIR:?}"/*
  fi
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "fmt and clippy"
# Build every test binary first, then run three groups side by side: the unit, API,
# agent and storage tests (no job containers) in the background, and the end-to-end
# tests in two lanes (below).
cargo test --workspace --locked --no-run
phase "building the tests"
units=$(mktemp)
cargo test --workspace --exclude kmodforge-e2e --locked -- --test-threads=1 >"$units" 2>&1 &
units_pid=$!
# The end-to-end tests share the Docker engine; each touches only its own server's
# builds, containers and data, so two binaries can run at once, but two servers making
# the same image at once would both do the work: `modules` and `renamed_modules` run
# first and alone (they make the builder images and /usr volumes of both test kernels
# and the verifier image that the tests of both lanes use). Then two lanes, one binary
# at a time each: lane B holds the tests with images of their own (kernels booted under
# qemu, Debian hosts in containers), which mostly wait on downloads and VMs, and two
# long ones to even the lanes out; lane A everything else, the CPU-heavy corpus among
# them (a new test file lands there). On a fresh machine the tests took 59 minutes
# one binary at a time (images included).
e2e_first=(modules renamed_modules)
e2e_lane_b=(agent_bootcheck bootcheck agent_bootguard apt_repo packages agent_secureboot
  agent_locking agent_sync agent_trust agent_verify agent_sanity agent_metrics agent_submit
  agent_download_cut agent_cli signing tls settings engine_restart)
e2e_lane_a=()
for f in tests/tests/*.rs; do
  t=$(basename "$f" .rs)
  [[ " ${e2e_first[*]} ${e2e_lane_b[*]} " == *" $t "* ]] || e2e_lane_a+=("$t")
done
# `cargo test` arguments that run these test binaries (all of them, even after a failure).
e2e() {
  local t args=(test -p kmodforge-e2e --locked --no-fail-fast)
  for t in "$@"; do args+=(--test "$t"); done
  cargo "${args[@]}" -- --test-threads=1
}
e2e_status=0
e2e "${e2e_first[@]}" || e2e_status=$?
cargo test -p kmodforge-e2e --locked --lib -- --test-threads=1 || e2e_status=$?
phase "end-to-end tests: ${e2e_first[*]} (the images both lanes use)"
lane_b=$(mktemp)
(
  start=$SECONDS rc=0
  e2e "${e2e_lane_b[@]}" || rc=$?
  echo "test.sh: lane B took $((SECONDS - start)) s"
  exit "$rc"
) >"$lane_b" 2>&1 &
lane_b_pid=$!
e2e "${e2e_lane_a[@]}" || e2e_status=$?
phase "end-to-end tests: lane A (${#e2e_lane_a[@]} binaries)"
lane_b_status=0
wait "$lane_b_pid" || lane_b_status=$?
phase "end-to-end tests: the rest of lane B (${#e2e_lane_b[@]} binaries)"
echo "---- end-to-end tests, lane B (run beside lane A) ----"
cat "$lane_b"
rm -f "$lane_b"
((lane_b_status == 0)) || e2e_status=$lane_b_status
units_status=0
wait "$units_pid" || units_status=$?
phase "waiting for the unit, API, agent and storage tests"
echo "---- unit, API, agent and storage tests (run beside the end-to-end tests) ----"
cat "$units"
rm -f "$units"
if ((e2e_status || units_status)); then
  echo "test.sh: failed (end-to-end: exit $e2e_status; unit, API, agent, storage: exit $units_status)" >&2
  exit 1
fi
