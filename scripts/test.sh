#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the end-to-end tests
# against the real Docker engine, real Debian kernel headers, and real
# PostgreSQL and S3 (Garage) servers (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
images/bootstrap-base.sh bookworm debian:bookworm-slim
# The real PostgreSQL and S3 (Garage) servers the storage tests run against.
scripts/services.sh start
# shellcheck disable=SC1091
source "${KMODFORGE_SERVICES_DIR:-/tmp/kmodforge-services}/env"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=1
