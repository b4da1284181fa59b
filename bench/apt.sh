#!/usr/bin/env bash
# The apt repository's cost with the server's own code (server/examples/apt_bench.rs) on the
# embedded store: making the packages of N artifacts (cold), an index refresh with nothing
# new (what each replica does at most every 5 s while hosts run `apt update`), a cached index.
# Usage: bench/apt.sh [RUNS]   (default 10); prints one JSON line per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cargo build --release -q -p kmodforge-server --example apt_bench
for cfg in "100 200000" "1000 200000" "5000 20000" "50 4000000"; do
    # shellcheck disable=SC2086
    target/release/examples/apt_bench $cfg "$runs"
done
