#!/usr/bin/env bash
# bench/fuse-overlayfs-opts.sh install|uninstall|status -- lets the build-speed benchmark mount a job container's
# root with extra fuse-overlayfs options (issue 16: `noacl`), on a Docker engine with the fuse-overlayfs storage
# driver. Docker runs `fuse-overlayfs -o lowerdir=...,upperdir=...,workdir=... MERGED` from its PATH at each
# container start; `install` puts a wrapper first in that PATH (/usr/local/bin) that adds `-o $(cat
# /run/kmf-fuse-opts)` while that file is not empty, and runs /usr/bin/fuse-overlayfs unchanged otherwise.
# bench/profile-build.py writes the file around the builds of an arm with KMF_BENCH_FUSE_OPTS=OPTS and removes
# it after each. No engine restart. Needs root.
#
# An operator who wants `noacl` for good on a fuse-overlayfs engine would install such a wrapper with a fixed
# option instead (docs/BUILD-PROFILE.md, "Phase 3").
set -euo pipefail
wrapper=/usr/local/bin/fuse-overlayfs
marker="# kmodforge bench wrapper"
case ${1:-} in
  install)
    real=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v fuse-overlayfs) || { echo "no fuse-overlayfs in /usr/bin" >&2; exit 1; }
    if [[ -e $wrapper ]] && ! grep -q "$marker" "$wrapper"; then
      echo "$wrapper exists and is not this script's wrapper: not touching it" >&2; exit 1
    fi
    cat >"$wrapper" <<WRAP
#!/bin/sh
$marker (bench/fuse-overlayfs-opts.sh): extra options while /run/kmf-fuse-opts is not empty
if [ -s /run/kmf-fuse-opts ]; then
  exec $real -o "\$(cat /run/kmf-fuse-opts)" "\$@"
fi
exec $real "\$@"
WRAP
    chmod 755 "$wrapper"
    dpath=$(tr '\0' '\n' </proc/"$(pgrep -xo dockerd)"/environ | sed -n 's/^PATH=//p')
    [[ -z $dpath || :$dpath: == *:/usr/local/bin:* ]] || echo "warning: dockerd's PATH ($dpath) lacks /usr/local/bin" >&2
    echo "installed $wrapper -> $real" >&2 ;;
  uninstall)
    rm -f /run/kmf-fuse-opts
    if [[ -e $wrapper ]] && grep -q "$marker" "$wrapper"; then rm -f "$wrapper"; echo "removed $wrapper" >&2; fi ;;
  status)
    if [[ -e $wrapper ]] && grep -q "$marker" "$wrapper"; then echo "installed"; else echo "not installed"; fi
    dpath=$(tr '\0' '\n' </proc/"$(pgrep -xo dockerd)"/environ 2>/dev/null | sed -n 's/^PATH=//p')
    [[ -z $dpath || :$dpath: == *:/usr/local/bin:* ]] || echo "warning: dockerd's PATH ($dpath) lacks /usr/local/bin" >&2
    [[ -s /run/kmf-fuse-opts ]] && echo "options now: $(cat /run/kmf-fuse-opts)"
    true ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
