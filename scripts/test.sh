#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the end-to-end tests
# against the real Docker engine and real Debian kernel headers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
images/bootstrap-base.sh bookworm debian:bookworm-slim
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=1
