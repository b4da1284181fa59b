#!/usr/bin/env bash
# bench/kernel-overlay-runtime.sh install|uninstall|status -- registers (or removes) the OCI runtime
# `kmf-kernel-overlay` (bench/kmf-kernel-overlay) with the local Docker engine, for the overlay2 floor
# measurement of issue 16 (docs/BUILD-PROFILE.md): a server started with
# KMODFORGE_EXPERIMENT_RUNTIME=kmf-kernel-overlay runs its job containers with the image's layers on the kernel's
# overlayfs instead of fuse-overlayfs, everything else the same.
#
# Needs root and a kernel with overlayfs. It edits /etc/docker/daemon.json (a copy is kept beside it) and
# reloads dockerd with SIGHUP (runtimes are reloadable: running containers are not touched); `uninstall`
# restores the file as it was. Only for a benchmark machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=/etc/docker/daemon.json
backup=$conf.kmf-kernel-overlay.orig
bin=/usr/local/libexec/kmodforge-bench/kmf-kernel-overlay
name=kmf-kernel-overlay

reload() {
  kill -HUP "$(pidof dockerd)"
  for _ in $(seq 50); do
    if docker info --format '{{json .Runtimes}}' | grep -q "\"$name\""; then
      [[ $1 == on ]] && return 0
    else
      [[ $1 == off ]] && return 0
    fi
    sleep 0.2
  done
  if [[ $1 == on ]]; then
    echo "kernel-overlay-runtime: dockerd did not load the runtime $name" >&2
    return 1
  fi
  # dockerd keeps a runtime that disappeared from daemon.json until it restarts: unused, it changes nothing.
  echo "kernel-overlay-runtime: dockerd still lists $name until its next restart (nothing uses it)" >&2
}

case ${1:-} in
  install)
    grep -qw overlay /proc/filesystems || { echo "kernel-overlay-runtime: this kernel has no overlayfs" >&2; exit 1; }
    install -D -m 0755 "$here/kmf-kernel-overlay" "$bin"
    [[ -e $backup ]] || cp -p "$conf" "$backup"
    python3 - "$backup" "$conf" "$name" "$bin" <<'PY'
import json, sys
src, dst, name, path = sys.argv[1:]
c = json.load(open(src))
c.setdefault("runtimes", {})[name] = {"path": path}
json.dump(c, open(dst, "w"), indent=2)
PY
    reload on
    echo "kernel-overlay-runtime: $name registered ($bin); start the server with KMODFORGE_EXPERIMENT_RUNTIME=$name"
    ;;
  uninstall)
    if [[ -e $backup ]]; then
      cp -p "$backup" "$conf" && rm -f "$backup"
      reload off
    fi
    echo "kernel-overlay-runtime: $name removed, $conf restored"
    ;;
  status)
    docker info --format '{{json .Runtimes}}'
    ;;
  *)
    echo "usage: $0 install|uninstall|status" >&2
    exit 2
    ;;
esac
