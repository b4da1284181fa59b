#!/bin/bash
# setup-toolchain.sh SUITE -- builder image layer 1 (shared by every kernel of SUITE; no kernel release here).
# Installs the suite's default toolchain and what kbuild and real DKMS packages use, creates the
# unprivileged user `builder` (uid/gid 1000, home /tmp) and the DKMS directories, cleans apt lists.
set -euo pipefail
SUITE=${1:?usage: setup-toolchain.sh SUITE}
export DEBIAN_FRONTEND=noninteractive

. /etc/os-release
if [[ -n ${VERSION_CODENAME:-} && $VERSION_CODENAME != "$SUITE" ]]; then
    echo "kmodforge: base image is Debian ${VERSION_CODENAME}, not $SUITE" >&2
    exit 1
fi

# No documentation in the image (smaller layers); these paths are never needed for builds.
cat >/etc/dpkg/dpkg.cfg.d/kmodforge-nodoc <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
CFG
# No fsync per unpacked file: on overlay/fuse-overlayfs storage dpkg's fsyncs make installing one
# linux-headers package (~17k files) take ~50 s instead of ~20 s. Safe in an image build (a crash just
# fails the build).
echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/kmodforge-unsafe-io
cat >/etc/apt/apt.conf.d/80kmodforge <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
CFG

apt-get update
apt-get install -y --no-install-recommends \
    bash make gcc libc6-dev bc bison flex kmod libelf-dev libssl-dev binutils patch \
    xz-utils zstd cpio perl python3 gawk pkg-config ca-certificates dwarves file
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# The unprivileged build user. Home is /tmp (a tmpfs in the sandbox).
getent group 1000 >/dev/null || groupadd --gid 1000 builder
getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
    --shell /bin/bash builder

# DKMS layout: dkms_tree is a tmpfs mount in the sandbox, and so is each source tree /usr/src/<m>-<v>
# (source_tree = /usr/src, as in DKMS); create dkms_tree so that the image also works without (e.g. for
# debugging with a writable rootfs).
mkdir -p /var/lib/dkms /etc/kmodforge
chown 1000:1000 /var/lib/dkms
