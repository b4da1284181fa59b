#!/usr/bin/env bash
# Installs what a fresh machine of this kind lacks: mmdebstrap (offline base
# image bootstrap), kmod (modinfo/depmod used by tests), curl, openssl and
# mokutil (signature tests), libssl-dev and pkg-config (the server links OpenSSL),
# grub-common, grub-pc-bin and xorriso (the boot guard: grub-editenv, a GRUB boot under qemu),
# chromium (the readiness page),
# and a running Docker engine check. Idempotent.
set -euo pipefail
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -x /sbin/modinfo || -x /usr/sbin/modinfo ]] || need+=(kmod)
command -v curl >/dev/null || need+=(curl)
command -v pkg-config >/dev/null || need+=(pkg-config)
[[ -e /usr/include/openssl/cms.h ]] || need+=(libssl-dev)
command -v dpkg-deb >/dev/null || need+=(dpkg)
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
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
# The tests fetch real DKMS sources with `apt-get download`: the index must know them.
if ((${#need[@]})) || ! apt-cache show v4l2loopback-dkms >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
docker info >/dev/null 2>&1 || { echo "install-deps: the Docker engine is not reachable (docker info failed)" >&2; exit 1; }
