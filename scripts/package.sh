#!/usr/bin/env bash
# package.sh [--deb-version V] [--out DIR] [--bins DIR]
#
# Builds kmodforge's own Debian packages with cargo-deb (scripts/install-deps.sh
# installs it): kmodforge-server_<version>_amd64.deb and kmodforge-agent_<version>_amd64.deb
# in DIR (default: $CARGO_TARGET_DIR/debian, or target/debian).
#
#   --deb-version V  the packages' version (default: the workspace's, revision 1),
#                    e.g. for an upgrade test's version N+1
#   --out DIR        where the .debs go
#   --bins DIR       package the kmodforge-server and kmodforge-agent binaries in DIR
#                    (e.g. target/debug, for the tests) instead of a release build
#   --fast           lighter compression (larger .debs, made faster: the tests)
#
# The binaries are staged in a temporary target directory under release/, where
# cargo-deb expects them (`target/release/...` assets, --no-build), with the agent's
# kernel hooks and boot unit rendered beside them by `kmodforge-agent hooks render`:
# one text for the hooks the package ships and the ones `hooks install` writes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

deb_version=""
out=""
bins=""
fast=""
while (($#)); do
  case $1 in
    --deb-version) deb_version=${2:?--deb-version needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --bins) bins=${2:?--bins needs a directory}; shift 2 ;;
    --fast) fast=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

tools=${KMODFORGE_TOOLS:-$HOME/.cache/kmodforge/tools}
cargo_deb=$tools/bin/cargo-deb
[[ -x $cargo_deb ]] || cargo_deb=$(command -v cargo-deb || true)
[[ -n $cargo_deb ]] || { echo "package.sh: cargo-deb is missing: run scripts/install-deps.sh" >&2; exit 1; }

target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z $bins ]]; then
  cargo build --release --locked -p kmodforge-server -p kmodforge-agent
  bins=$target/release
fi
out=${out:-$target/debian}
for b in kmodforge-server kmodforge-agent; do
  [[ -x $bins/$b ]] || { echo "package.sh: $bins/$b is missing (build it, or drop --bins)" >&2; exit 1; }
done

stage=$(mktemp -d "${TMPDIR:-/tmp}/kmodforge-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/release" "$out"
# Stripped here (debug info only: symbol names stay for backtraces), so that cargo-deb
# runs with --no-strip: it would take the rendered hook scripts, executables under
# target/release/, for binaries to strip.
for b in kmodforge-server kmodforge-agent; do
  strip --strip-debug -o "$stage/release/$b" "$bins/$b"
done
"$stage/release/kmodforge-agent" hooks render "$stage/release/kmodforge-agent-hooks" \
  --agent /usr/bin/kmodforge-agent >/dev/null

args=(--no-build --no-strip --locked --output "$out")
[[ -n $deb_version ]] && args+=(--deb-version "$deb_version")
[[ -n $fast ]] && args+=(--fast)
for pkg in kmodforge-server kmodforge-agent; do
  CARGO_TARGET_DIR=$stage "$cargo_deb" -p "$pkg" "${args[@]}"
done
