#!/bin/bash
# setup-verifier.sh SUITE -- verifier image layer 1 (shared by every kernel of SUITE; no kernel release here).
# Installs what bootcheck needs, without recommends:
#   qemu-system-x86  qemu-system-x86_64 (TCG; its Depends pull seabios, ipxe-qemu, qemu-system-data)
#   busybox-static   the guest's only userland (/init, insmod, dmesg, poweroff)
#   kmod             depmod/modprobe/modinfo for the staged module tree (host side, in the container)
#   cpio             the initramfs (newc)
#   jq               the JSON report
#   xz-utils zstd    compressed modules (.ko.xz / .ko.zst), should a kernel ship them
#   ovmf             UEFI firmware: signature-enforced checks boot through it, with the module-signing
#                    certificate in the UEFI db of a variable store (efi-db-enroll)
#   python3-minimal  efi-db-enroll
# and creates the unprivileged user `verifier` (uid/gid 1000, home /tmp) that runs checks.
set -euo pipefail
SUITE=${1:?usage: setup-verifier.sh SUITE}
export DEBIAN_FRONTEND=noninteractive

. /etc/os-release
if [[ -n ${VERSION_CODENAME:-} && $VERSION_CODENAME != "$SUITE" ]]; then
    echo "kmodforge: base image is Debian ${VERSION_CODENAME}, not $SUITE" >&2
    exit 1
fi

# Same dpkg/apt settings as the builder image: no docs, no fsync per file, no recommends.
cat >/etc/dpkg/dpkg.cfg.d/kmodforge-nodoc <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
CFG
echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/kmodforge-unsafe-io
cat >/etc/apt/apt.conf.d/80kmodforge <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Retries "3";
CFG

apt-get update
apt-get install -y --no-install-recommends \
    qemu-system-x86 busybox-static kmod cpio jq xz-utils zstd ovmf python3-minimal
for f in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd; do
    [[ -r $f ]] || { echo "kmodforge: the ovmf package lacks $f" >&2; exit 1; }
done
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

qemu-system-x86_64 --version | head -n 1
applets=$(busybox --list)
for applet in sh mount insmod dmesg cat sed stty sleep poweroff uname; do
    grep -qx "$applet" <<<"$applets" || { echo "kmodforge: busybox-static lacks the $applet applet" >&2; exit 1; }
done

getent group 1000 >/dev/null || groupadd --gid 1000 verifier
getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
    --shell /bin/bash verifier
mkdir -p /opt/kmodforge /etc/kmodforge
