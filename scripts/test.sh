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
# Build every test binary first, then run two groups side by side: the unit,
# API, agent and storage tests (no job containers) in the background, and the
# end-to-end tests, which share the Docker engine and run one at a time.
cargo test --workspace --locked --no-run
phase "building the tests"
units=$(mktemp)
cargo test --workspace --exclude kmodforge-e2e --locked -- --test-threads=1 >"$units" 2>&1 &
units_pid=$!
e2e_status=0
cargo test -p kmodforge-e2e --locked -- --test-threads=1 || e2e_status=$?
units_status=0
wait "$units_pid" || units_status=$?
phase "running the tests"
echo "---- unit, API, agent and storage tests (run beside the end-to-end tests) ----"
cat "$units"
rm -f "$units"
if ((e2e_status || units_status)); then
  echo "test.sh: failed (end-to-end: exit $e2e_status; unit, API, agent, storage: exit $units_status)" >&2
  exit 1
fi
