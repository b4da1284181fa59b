#!/usr/bin/env bash
# Installs what a fresh machine of this kind lacks: mmdebstrap (offline base
# image bootstrap), kmod (modinfo/depmod used by tests), curl, openssl and
# mokutil (signature tests), libssl-dev and pkg-config (the server links OpenSSL),
# grub-common, grub-pc-bin and xorriso (the boot guard: grub-editenv, a GRUB boot under qemu),
# chromium (the readiness page), postgresql and Garage (the real database and S3 server
# that scripts/services.sh runs for the tests), prometheus_client's text parser (a venv),
# schemathesis (fuzzes the server from its OpenAPI document, a venv),
# cargo-deb (scripts/package.sh: kmodforge's own Debian packages; dpkg-dev for
# its dependency detection), and a running Docker engine check. Idempotent.
set -euo pipefail
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -x /sbin/modinfo || -x /usr/sbin/modinfo ]] || need+=(kmod)
command -v curl >/dev/null || need+=(curl)
# The Docker-restart test gives its private dockerd a bridge of its own (ip link).
command -v ip >/dev/null || need+=(iproute2)
command -v pkg-config >/dev/null || need+=(pkg-config)
[[ -e /usr/include/openssl/cms.h ]] || need+=(libssl-dev)
command -v dpkg-deb >/dev/null || need+=(dpkg)
# cargo-deb computes the packages' library dependencies with dpkg-shlibdeps.
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v strip >/dev/null || need+=(binutils)
# Module signatures: openssl checks them from outside, mokutil answers "enrolled?"
# (on a machine without EFI variables it says so, which a test checks).
command -v openssl >/dev/null || need+=(openssl)
command -v mokutil >/dev/null || need+=(mokutil)
# The agent's boot guard is tested against the real grub-editenv (GRUB's environment block),
# and the host's /boot is booted by the real GRUB under qemu (grub-mkrescue: BIOS modules, xorriso).
command -v grub-editenv >/dev/null || need+=(grub-common)
[[ -d /usr/lib/grub/i386-pc ]] || need+=(grub-pc-bin)
command -v xorriso >/dev/null || need+=(xorriso)
# The readiness page is checked in a real headless browser.
command -v chromium >/dev/null || need+=(chromium fonts-dejavu-core)
# The tests talk to a real PostgreSQL server (scripts/services.sh): Debian's server
# binaries live in /usr/lib/postgresql/<major>/bin, off PATH. The package also creates
# the `postgres` system user, which runs the server when the services are started as root.
have_pg=""
for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb && -x $d/postgres ]] && have_pg=1; done
[[ -n $have_pg ]] || need+=(postgresql)
# ...and a real S3 server: Garage, built from crates.io once and kept in the tools cache
# (reused between CI runs on the same machine). Building it needs a C compiler and make.
tools=${KMODFORGE_TOOLS:-$HOME/.cache/kmodforge/tools}
garage_version=2.5.0
# (`garage --version` says e.g. "garage cargo:2.5.0 [features: ...]".)
garage_ok() { [[ -x $tools/bin/garage && " $("$tools/bin/garage" --version 2>/dev/null) " == *[!0-9.]"$garage_version"[!0-9.]* ]]; }
# cargo-deb (scripts/package.sh), pinned, built from crates.io once into the same cache.
cargo_deb_version=3.8.0
cargo_deb_ok() { [[ -x $tools/bin/cargo-deb && "$("$tools/bin/cargo-deb" --version 2>/dev/null)" == *" $cargo_deb_version" ]]; }
if ! garage_ok; then
  command -v cc >/dev/null || need+=(gcc libc6-dev)
  command -v make >/dev/null || need+=(make)
fi
# cargo-deb's xz compression (lzma-sys) is C code too.
if ! cargo_deb_ok; then
  command -v cc >/dev/null || need+=(gcc libc6-dev)
fi
# A Python with venv for the metrics tests' parser (below).
command -v python3 >/dev/null || need+=(python3 python3-venv)
command -v python3 >/dev/null && ! python3 -c 'import ensurepip' 2>/dev/null && need+=(python3-venv)
# The contract test (tests/tests/contract.rs) fuzzes the running server from /openapi.json
# with schemathesis, from PyPI, pinned, in its own venv in the tools cache.
schemathesis_version=4.32.5
st_venv=$tools/schemathesis
st_ok() { [[ -x $st_venv/bin/st && "$("$st_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" == "$schemathesis_version" ]]; }
if ! st_ok; then
  python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
fi
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
# The tests fetch real DKMS sources with `apt-get download`: the index must know them.
if ((${#need[@]})) || ! apt-cache show v4l2loopback-dkms >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ $(id -u) -eq 0 ]] && ! getent passwd postgres >/dev/null; then
  # The server binaries are there but not their user (initdb refuses to run as root).
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
if ! garage_ok; then
  command -v cargo >/dev/null || { echo "install-deps: cargo is needed to build Garage $garage_version" >&2; exit 1; }
  # Unoptimised (a test server handles megabytes, not terabytes: the release build took
  # about 10 minutes of a fresh 2-CPU machine's CI), without debug info, and with
  # release's arithmetic (no overflow checks or debug assertions); only the SQLite
  # metadata engine, which scripts/services.sh configures.
  CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_DEV_OVERFLOW_CHECKS=false \
    CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false \
    cargo install garage --version "$garage_version" --locked --debug --no-default-features \
    --features bundled-libs,sqlite --root "$tools"
  garage_ok || { echo "install-deps: $tools/bin/garage is not Garage $garage_version after cargo install" >&2; exit 1; }
fi
if ! cargo_deb_ok; then
  command -v cargo >/dev/null || { echo "install-deps: cargo is needed to build cargo-deb $cargo_deb_version" >&2; exit 1; }
  cargo install cargo-deb --version "$cargo_deb_version" --locked --root "$tools"
  cargo_deb_ok || { echo "install-deps: $tools/bin/cargo-deb is not cargo-deb $cargo_deb_version after cargo install" >&2; exit 1; }
fi
# The metrics tests parse /metrics and the agent's textfile with the Prometheus text
# parser of prometheus_client (PyPI), kept in a venv in the tools cache.
prom_version=0.26.0
prom_venv=$tools/prometheus
prom_ok() { "$prom_venv/bin/python3" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus-client') != '$prom_version')" 2>/dev/null; }
if ! prom_ok; then
  python3 -m venv "$prom_venv"
  "$prom_venv/bin/pip" install -q "prometheus-client==$prom_version"
  prom_ok || { echo "install-deps: $prom_venv has no prometheus-client $prom_version after pip install" >&2; exit 1; }
fi
if ! st_ok; then
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
  st_ok || { echo "install-deps: $st_venv/bin/st is not schemathesis $schemathesis_version after pip install" >&2; exit 1; }
fi
docker info >/dev/null 2>&1 || { echo "install-deps: the Docker engine is not reachable (docker info failed)" >&2; exit 1; }
