#!/usr/bin/env bash
# An r8152-class DKMS source tree for benchmarks: the Realtek RTL8152/8153/8156 USB NIC driver
# (drivers/net/usb/r8152.c, 250 KB of C, a 2 MB module before strip) taken from Debian's linux-source-6.1
# and packaged the way vendor and DKMS-packaged NIC drivers are: a one-line kbuild Makefile, a dkms.conf with
# AUTOINSTALL, DEST_MODULE_LOCATION /updates/dkms (so it takes precedence over the in-tree driver).
#
#   bench/r8152-source.sh DEST      writes DEST/{r8152.c,Makefile,dkms.conf}; prints the package version
#
# The linux-source .deb (140 MB) and the extracted r8152.c are cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/kmodforge/r8152.
set -euo pipefail
dest=${1:?usage: bench/r8152-source.sh DEST}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kmodforge/r8152
mkdir -p "$cache" "$dest"
ver=$(apt-cache show --no-all-versions linux-source-6.1 | sed -n 's/^Version: //p' | head -1)
[[ -n $ver ]] || { echo "r8152-source: apt-cache knows no linux-source-6.1 (run apt-get update)" >&2; exit 1; }
upstream=${ver%%-*}
src=$cache/r8152-$upstream.c
if [[ ! -s $src ]]; then
  (cd "$cache" && apt-get download -qq "linux-source-6.1=$ver" 2>/dev/null)
  deb=$(ls "$cache"/linux-source-6.1_*.deb | head -1)
  # tar stops reading once it has the file; dpkg-deb then complains of a broken pipe.
  { dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/src/linux-source-6.1.tar.xz \
      | tar -xJO linux-source-6.1/drivers/net/usb/r8152.c >"$src.tmp"; } 2>/dev/null || true
  [[ -s $src.tmp ]] || { echo "r8152-source: no drivers/net/usb/r8152.c in $deb" >&2; exit 1; }
  mv "$src.tmp" "$src"
  rm -f "$deb"
fi
cp "$src" "$dest/r8152.c"
printf 'obj-m := r8152.o\n' >"$dest/Makefile"
cat >"$dest/dkms.conf" <<CONF
PACKAGE_NAME="r8152"
PACKAGE_VERSION="$upstream"
BUILT_MODULE_NAME[0]="r8152"
DEST_MODULE_LOCATION[0]="/updates/dkms"
MAKE[0]="make -C \${kernel_source_dir} M=\${dkms_tree}/\${PACKAGE_NAME}/\${PACKAGE_VERSION}/build modules"
CLEAN="make -C \${kernel_source_dir} M=\${dkms_tree}/\${PACKAGE_NAME}/\${PACKAGE_VERSION}/build clean"
AUTOINSTALL="yes"
CONF
echo "$upstream"
