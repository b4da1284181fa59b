#!/bin/bash
# install-kernel.sh KREL        -- verifier image layer 3 (one kernel release), as root at image build time.
# install-kernel.sh --common    -- layer 2 (shared): the base initramfs and the kmod config directories.
#
# KREL:
# - apt-get update (a failed index fetch is a plain failure, never "not found"); linux-image-KREL and
#   linux-headers-KREL must exist in the suite, else exactly one line on stderr
#     kmodforge: Debian package linux-image-KREL not found in SUITE
#   (or ...linux-headers-KREL...) and exit 42 ("unknown kernel", as the builder's install-kernel-headers.sh).
# - `apt-get download`s both packages and extracts with `dpkg-deb -x` (no maintainer scripts, no
#   initramfs-tools): the image package to /opt/kmodforge/kernel (boot/vmlinuz-KREL, boot/config-KREL,
#   lib/modules/KREL/), and from the headers package only Module.symvers (/opt/kmodforge/kernel/Module.symvers).
#   Debian's boot/System.map is a placeholder, so depmod resolves kernel symbols with -E Module.symvers.
# - depmod for that tree; writes /etc/kmodforge/verifier.env (shell syntax, single-quoted values):
#   KREL SUITE ARCH IMAGE_PACKAGE IMAGE_VERSION HEADERS_PACKAGE HEADERS_VERSION KROOT VMLINUZ MODULE_DIR
#   SYMVERS MODULE_SUFFIX BASE_INITRAMFS VMLINUX BOOT_IMAGE.
# - extracts the ELF vmlinux from the bzImage (CONFIG_PVH=y kernels: qemu boots it directly, ~2 s faster
#   under TCG) and self-tests: a real bootcheck of one in-tree module, with the PVH vmlinux, else the
#   bzImage (BOOT_IMAGE=pvh|bzimage); exit 1 if the kernel boots in neither way.
# Other failures (mirror unreachable, ...) exit with another non-zero code, never 42.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

readonly LIB=/usr/local/lib/kmodforge
readonly KROOT=/opt/kmodforge/kernel
readonly BASE_INITRAMFS=/opt/kmodforge/initramfs-base.cpio
readonly CONF_DIR=/etc/kmodforge

# ------------------------------------------------------------------ --common (shared layer)
if [[ ${1:-} == --common ]]; then
    # kmod configuration used by bootcheck (and below): only these, never the image's /etc/depmod.d,
    # /etc/modprobe.d (a module's own softdeps still come from modules.softdep).
    mkdir -p "$CONF_DIR/depmod.d" "$CONF_DIR/modprobe.d"
    printf '%s\n' '# kmodforge verifier: new modules (updates/dkms) take precedence, as DKMS installs on Debian' \
        'search updates built-in' >"$CONF_DIR/depmod.d/kmodforge.conf"

    # Base initramfs: busybox-static (+ one symlink per applet), /init, /dev/console and /dev/null (the
    # kernel opens /dev/console for init before anything is mounted; a non-root bootcheck cannot mknod,
    # so the nodes live here). bootcheck appends a second cpio archive with /kmf/* (the kernel unpacks
    # concatenated archives).
    d=$(mktemp -d)
    mkdir -p "$d/bin" "$d/dev" "$d/proc" "$d/sys" "$d/tmp"
    install -m 0755 "$(readlink -f "$(command -v busybox)")" "$d/bin/busybox"
    for a in $("$d/bin/busybox" --list); do
        [[ $a == busybox || $a == */* ]] || ln -s busybox "$d/bin/$a"
    done
    mknod -m 0600 "$d/dev/console" c 5 1
    mknod -m 0666 "$d/dev/null" c 1 3
    install -m 0755 "$LIB/init" "$d/init"
    (cd "$d" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
        >"$BASE_INITRAMFS.tmp"
    mv "$BASE_INITRAMFS.tmp" "$BASE_INITRAMFS"
    chmod 0644 "$BASE_INITRAMFS"
    rm -rf "$d"
    echo "kmodforge: base initramfs $BASE_INITRAMFS: $(stat -c %s "$BASE_INITRAMFS") bytes"
    exit 0
fi

# ------------------------------------------------------------------ KREL (per-kernel layer)
KREL=${1:-}
. /etc/os-release
SUITE=${VERSION_CODENAME:-unknown}

not_found() {
    echo "kmodforge: Debian package $1 not found in $SUITE" >&2
    exit 42
}
# Anything that cannot be a Debian kernel release cannot have an image package either.
[[ $KREL =~ ^[0-9][A-Za-z0-9.+~_-]*$ ]] || not_found "linux-image-$KREL"

# apt-get update exits 0 even when an index could not be fetched; a missing bookworm-security index would
# then turn a real kernel into "not found". Treat any fetch error as a plain failure instead.
update_log=$(mktemp)
if ! apt-get update 2>&1 | tee "$update_log"; then
    echo "kmodforge: apt-get update failed" >&2
    exit 1
fi
if grep -Eq '^(Err:|E:|W: Failed to fetch|W: Some index files failed)' "$update_log"; then
    echo "kmodforge: apt-get update could not fetch every index; refusing to decide whether linux-image-$KREL exists" >&2
    exit 1
fi
rm -f "$update_log"

image_pkg="linux-image-$KREL"
headers_pkg="linux-headers-$KREL"
# Not `apt-cache show | grep -q` under pipefail: grep -q exits at the first match and apt-cache, killed by
# SIGPIPE while writing the rest, fails the pipeline (~1 run in 3 here), which would report "not found".
pkg_exists() {
    local out
    out=$(apt-cache show "$1" 2>/dev/null) || true
    grep -q '^Package: ' <<<"$out"
}
pkg_exists "$image_pkg" || not_found "$image_pkg"
pkg_exists "$headers_pkg" || not_found "$headers_pkg"

dl=$(mktemp -d)
(cd "$dl" && apt-get -q -o APT::Sandbox::User=root download "$image_pkg" "$headers_pkg")
image_deb=$(ls -1 "$dl/${image_pkg}"_*.deb)
headers_deb=$(ls -1 "$dl/${headers_pkg}"_*.deb)

rm -rf "$KROOT"
mkdir -p "$KROOT"
dpkg-deb -x "$image_deb" "$KROOT"
# Newer packages may ship usr/lib/modules (merged /usr): normalize to lib/modules.
if [[ ! -d $KROOT/lib/modules/$KREL && -d $KROOT/usr/lib/modules/$KREL ]]; then
    mkdir -p "$KROOT/lib/modules"
    mv "$KROOT/usr/lib/modules/$KREL" "$KROOT/lib/modules/$KREL"
fi
mdir="$KROOT/lib/modules/$KREL"
vmlinuz="$KROOT/boot/vmlinuz-$KREL"
[[ -d $mdir/kernel ]] || { echo "kmodforge: $image_pkg has no lib/modules/$KREL/kernel" >&2; exit 1; }
[[ -s $vmlinuz ]] || { echo "kmodforge: $image_pkg has no boot/vmlinuz-$KREL" >&2; exit 1; }
# Only what the package ships as depmod input; outputs are regenerated below (and per check).
rm -f "$mdir"/build "$mdir"/source

dpkg-deb --fsys-tarfile "$headers_deb" \
    | tar -xOf - --wildcards "*/linux-headers-$KREL/Module.symvers" >"$KROOT/Module.symvers"
[[ -s $KROOT/Module.symvers ]] || { echo "kmodforge: $headers_pkg has no Module.symvers" >&2; exit 1; }

first_mod=$(find "$mdir/kernel" -type f -name '*.ko*' -print -quit)
case $first_mod in
    *.ko) suffix=.ko ;;
    *.ko.xz) suffix=.ko.xz ;;
    *.ko.zst) suffix=.ko.zst ;;
    *.ko.gz) suffix=.ko.gz ;;
    *) echo "kmodforge: unexpected module file name $first_mod" >&2; exit 1 ;;
esac
vermagic=$(modinfo -F vermagic "$first_mod")
if [[ $vermagic != "$KREL "* ]]; then
    echo "kmodforge: $first_mod has vermagic '$vermagic', not $KREL" >&2
    exit 1
fi

depmod -b "$KROOT" -C "$CONF_DIR/depmod.d" -E "$KROOT/Module.symvers" "$KREL"
[[ -s $mdir/modules.dep ]] || { echo "kmodforge: depmod wrote no modules.dep" >&2; exit 1; }
nmods=$(wc -l <"$mdir/modules.dep")

# Boot image. Under TCG the bzImage spends ~2.4 s of its ~4.3 s boot decompressing itself; a kernel with
# CONFIG_PVH=y can instead be booted by qemu as the decompressed ELF vmlinux (PVH entry point), which is
# the same kernel code without the decompressor (and without KASLR). Extract it here; a test boot below
# decides which one bootcheck uses (BOOT_IMAGE), falling back to the bzImage.
vmlinux="$KROOT/boot/vmlinux-$KREL"
extract_vmlinux() {
    local magic tool off
    grep -qx 'CONFIG_PVH=y' "$KROOT/boot/config-$KREL" || { echo "kmodforge: no CONFIG_PVH: booting the bzImage"; return 1; }
    for magic in '\xfd7zXZ\x00:xz -dc --single-stream' '\x28\xb5\x2f\xfd:zstd -qdc' '\x1f\x8b\x08:gzip -dc'; do
        tool=${magic#*:}
        for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$vmlinuz" | cut -d: -f1 | head -n 5); do
            tail -c +$((off + 1)) "$vmlinuz" | $tool >"$vmlinux" 2>/dev/null
            if [[ $(head -c 4 "$vmlinux" | od -An -c | tr -d ' ') == '177ELF' ]]; then
                echo "kmodforge: extracted $vmlinux (${tool%% *} payload at offset $off, $(stat -c %s "$vmlinux") bytes)"
                return 0
            fi
        done
    done
    rm -f "$vmlinux"
    echo "kmodforge: could not extract an ELF vmlinux from $vmlinuz: booting the bzImage"
    return 1
}
boot_image=bzimage
extract_vmlinux && boot_image=pvh

chmod -R a+rX "$KROOT"

image_version=$(dpkg-deb -f "$image_deb" Version)
headers_version=$(dpkg-deb -f "$headers_deb" Version)
arch=$(dpkg-deb -f "$image_deb" Architecture)
for v in "$KREL" "$SUITE" "$image_version" "$headers_version" "$arch"; do
    if [[ $v == *\'* || $v == *$'\n'* ]]; then
        echo "kmodforge: unexpected quote or newline in '$v'" >&2
        exit 1
    fi
done
{
    echo "# kmodforge verifier image: the one kernel this image boots (shell syntax, single-quoted values)"
    echo "KREL='$KREL'"
    echo "SUITE='$SUITE'"
    echo "ARCH='$arch'"
    echo "IMAGE_PACKAGE='$image_pkg'"
    echo "IMAGE_VERSION='$image_version'"
    echo "HEADERS_PACKAGE='$headers_pkg'"
    echo "HEADERS_VERSION='$headers_version'"
    echo "KROOT='$KROOT'"
    echo "VMLINUZ='$vmlinuz'"
    echo "MODULE_DIR='$mdir'"
    echo "SYMVERS='$KROOT/Module.symvers'"
    echo "MODULE_SUFFIX='$suffix'"
    echo "BASE_INITRAMFS='$BASE_INITRAMFS'"
    echo "VMLINUX='$([[ -e $vmlinux ]] && echo "$vmlinux")'"
    echo "BOOT_IMAGE='$boot_image'"
} >"$CONF_DIR/verifier.env"

# Self-test: a real bootcheck of one in-tree module without dependencies (the first under kernel/lib/), in
# the chosen boot image; PVH falls back to the bzImage; if neither boots, the image is useless: exit 1.
probe=$(sed -n 's|^\(kernel/lib/[^:]*\.ko[^:]*\):$|\1|p' "$mdir/modules.dep" | head -n 1)
[[ -n $probe ]] || probe=$(sed -n 's|^\([^:]*\.ko[^:]*\):$|\1|p' "$mdir/modules.dep" | head -n 1)
selftest() {
    local d rc=0
    d=$(mktemp -d)
    cp "$mdir/$probe" "$d/"
    tar -C "$d" -cf - "${probe##*/}" | KMF_KREL=$KREL KMF_BOOT_IMAGE=$1 KMF_BOOT_TIMEOUT=120 \
        "$LIB/bootcheck" >"$d/report.json" 2>"$d/stderr" || rc=$?
    if [[ $rc == 0 ]]; then
        echo "kmodforge: self-test ($1): $(jq -r '"\(.modules[0].name) loaded, boot \(.seconds) s"' "$d/report.json")"
    else
        echo "kmodforge: self-test ($1) failed (exit $rc): $(jq -r '.reason' "$d/report.json" 2>/dev/null)"
        tail -n 20 "$d/stderr"
    fi
    rm -rf "$d"
    return $rc
}
if ! selftest "$boot_image"; then
    if [[ $boot_image == pvh ]] && selftest bzimage; then
        boot_image=bzimage
        rm -f "$vmlinux"
        sed -i "s|^VMLINUX=.*|VMLINUX=''|; s|^BOOT_IMAGE=.*|BOOT_IMAGE='bzimage'|" "$CONF_DIR/verifier.env"
    else
        echo "kmodforge: $KREL does not boot under qemu here" >&2
        exit 1
    fi
fi
cat "$CONF_DIR/verifier.env"
echo "kmodforge: $nmods modules ($suffix), vmlinuz $(stat -c %s "$vmlinuz") bytes, $(du -sh "$KROOT" | cut -f1) in $KROOT"

rm -rf "$dl"
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
