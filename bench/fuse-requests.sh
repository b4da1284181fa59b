#!/usr/bin/env bash
# bench/fuse-requests.sh [KREL] -- FUSE requests per process start in a container shaped like a job container (same image, /usr volumes,
# read-only root, tmpfs); counts the fuse-overlayfs daemon's read(2) calls on /dev/fuse (one per request), then
# names the paths behind them with strace on the daemon (50 execs). With the image's /etc volume (issue 16), also
# the counts without it, first. Needs root, strace, and the image's /usr
# volumes (kmodforge-usr-<image id>-*: a server made them for a build). Makes one container, removes it. With
# bench/fuse-overlayfs-opts.sh installed, also the counts with fuse-overlayfs -o noacl.
# Issue 16: docs/BUILD-PROFILE.md.
set -euo pipefail
img=kmodforge-builder:debian-bookworm-${1:-6.1.0-47-amd64}
out=$(mktemp)
id=$(docker image inspect -f '{{.Id}}' $img | cut -c8-19)
mounts=() no_etc=()
for v in $(docker volume ls -q --filter label=kmodforge.image=sha256:$(docker image inspect -f '{{.Id}}' $img | cut -c8-)); do
  t=$(docker volume inspect -f '{{index .Labels "kmodforge.target"}}' "$v")
  if [[ -z $t || $t == "<no value>" ]]; then  # volumes made before the target label
    case $v in *usr-src-*) t=/usr/src/${v#kmodforge-usr-$id-usr-src-} ;; *) t=/usr/${v#kmodforge-usr-$id-usr-} ;; esac
  fi
  mounts+=(--mount "type=volume,src=$v,dst=$t,readonly")
  [[ $t == /etc ]] || no_etc+=(--mount "type=volume,src=$v,dst=$t,readonly")
done
start() {  # mounts...
  docker run -d --label kmf-profile-diag=1 --read-only --network none --user 1000:1000 --cap-drop ALL \
    --security-opt no-new-privileges --cpus 2 --memory 4g --memory-swap 4g \
    --tmpfs /var/lib/dkms:rw,exec,size=1g,uid=1000,gid=1000 --tmpfs /tmp:rw,exec,size=512m,mode=1777 \
    "$@" $img sleep infinity
}
daemon() {  # container -> pid of the fuse-overlayfs process serving its rootfs
  local m l
  m=$(docker inspect -f '{{.GraphDriver.Data.MergedDir}}' "$1"); l=$(basename "$(dirname "$m")")
  pgrep -f "fuse-overlayfs.*$l/merged"
}
c=""
trap 'docker rm -f $c >/dev/null 2>&1; rm -f "$out"' EXIT
req() { awk '/^syscr/ {print $2}' /proc/$fp/io; }
run() {  # label, command
  docker exec $c true
  local a b; a=$(req); docker exec $c bash -c "$2" >/dev/null 2>&1; b=$(req)
  echo "$1: $(( (b - a) )) requests"
}
if ((${#no_etc[@]} < ${#mounts[@]})); then
  echo "--- the image's /etc on the image's filesystem (before issue 16's fix), the rest as a job container"
  c=$(start "${no_etc[@]}"); fp=$(daemon $c)
  run "200 x /usr/bin/true" 'for i in $(seq 200); do /usr/bin/true; done'
  run "20 x gcc -c empty.c" 'cd /tmp && : > e.c && for i in $(seq 20); do gcc -c e.c -o e.o; done'
  docker rm -f $c >/dev/null
  echo "--- as a job container"
fi
c=$(start "${mounts[@]}"); fp=$(daemon $c)
run "exec baseline (bash -c true)" "true"
run "200 x /bin/true" 'for i in $(seq 200); do /bin/true; done'
run "200 x /usr/bin/true" 'for i in $(seq 200); do /usr/bin/true; done'
run "200 x sh -c :" 'for i in $(seq 200); do sh -c :; done'
run "20 x gcc -c empty.c" 'cd /tmp && : > e.c && for i in $(seq 20); do gcc -c e.c -o e.o; done'
echo "--- strace of the daemon while 50 x /usr/bin/true run"
command -v strace >/dev/null && {
  strace -f -qq -e trace=openat,newfstatat,fstatat64,readlinkat,statx,getxattr,lgetxattr,fgetxattr,flistxattr,llistxattr -p $fp -o "$out" &
  sp=$!; sleep 1
  docker exec $c bash -c 'for i in $(seq 50); do /usr/bin/true; done'
  sleep 0.5; kill $sp; wait $sp 2>/dev/null || true
  sed -E 's/^[0-9]+ +//; s/0x[0-9a-f]+/X/g; s/= [0-9]+.*$//; s/= -1.*$/= ERR/' "$out" | sed -E 's/\(([0-9]+|AT_FDCWD), /(fd, /' | sort | uniq -c | sort -rn | head -25
}
# Issue 16, phase 3: the same counts with fuse-overlayfs's `noacl` (no POSIX ACL support announced to the kernel,
# so no ACL look-up per permission check), when bench/fuse-overlayfs-opts.sh's wrapper is installed.
if [[ $("$(dirname "$0")"/fuse-overlayfs-opts.sh status) == installed* ]]; then
  docker rm -f $c >/dev/null
  echo "--- as a job container, its root mounted with fuse-overlayfs -o noacl"
  echo noacl >/run/kmf-fuse-opts
  c=$(start "${mounts[@]}"); rm -f /run/kmf-fuse-opts; fp=$(daemon $c)
  run "exec baseline (bash -c true)" "true"
  run "200 x /bin/true" 'for i in $(seq 200); do /bin/true; done'
  run "200 x /usr/bin/true" 'for i in $(seq 200); do /usr/bin/true; done'
  run "200 x sh -c :" 'for i in $(seq 200); do sh -c :; done'
  run "20 x gcc -c empty.c" 'cd /tmp && : > e.c && for i in $(seq 20); do gcc -c e.c -o e.o; done'
else
  echo "(bench/fuse-overlayfs-opts.sh install: also the counts with fuse-overlayfs -o noacl)"
fi
