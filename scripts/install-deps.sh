#!/usr/bin/env bash
# Installs what a fresh machine of this kind lacks: mmdebstrap (offline base
# image bootstrap), kmod (modinfo/depmod used by tests), curl, and a running
# Docker engine check. Idempotent.
set -euo pipefail
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -x /sbin/modinfo || -x /usr/sbin/modinfo ]] || need+=(kmod)
command -v curl >/dev/null || need+=(curl)
command -v dpkg-deb >/dev/null || need+=(dpkg)
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
# The tests fetch real DKMS sources with `apt-get download`: the index must know them.
if ((${#need[@]})) || ! apt-cache show v4l2loopback-dkms >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
docker info >/dev/null 2>&1 || { echo "install-deps: the Docker engine is not reachable (docker info failed)" >&2; exit 1; }
