#!/usr/bin/env bash
# bench/eval-speed.sh [--runs N] [--kernel KREL] [--package PKG] OLD_KMF NEW_KMF -- `kmf prepare` (unpack +
# dkms.conf evaluation with DKMS's own code) of a Debian DKMS package, with two versions of images/builder/kmf,
# interleaved, in one container shaped like a job container (the builder image, read-only root, uid 1000, no
# network, no capabilities, tmpfs for /tmp, /var/lib/dkms and the source dir). Prints each run, the medians,
# and whether both versions produced the same dump (byte for byte). Issue 16, phase 3: v4l2loopback's dkms.conf
# sources the kernel's .config, and DKMS's `set | grep ^DKMS_DIRECTIVE` then lists 6,445 variables.
#   git show a675cde:images/builder/kmf >/tmp/kmf.old && bench/eval-speed.sh /tmp/kmf.old images/builder/kmf
# Needs Docker and the builder image of KREL (a server made it); fetches PKG with tests/fixtures/fetch-debian-dkms.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=7 krel=6.1.0-47-amd64 pkg=v4l2loopback-dkms
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --kernel) krel=$2; shift 2 ;;
    --package) pkg=$2; shift 2 ;;
    -*) sed -n '2,9p' "$0" >&2; exit 2 ;;
    *) break ;;
  esac
done
(($# == 2)) || { sed -n '2,9p' "$0" >&2; exit 2; }
old=$1 new=$2
img=kmodforge-builder:debian-bookworm-$krel
docker image inspect "$img" >/dev/null || { echo "no image $img: let a server build for $krel first" >&2; exit 1; }
work=$(mktemp -d)
c=""
trap 'docker rm -f $c >/dev/null 2>&1; rm -rf "$work"' EXIT
src=$(tests/fixtures/fetch-debian-dkms.sh "$pkg" "$work/src")
name=$(sed -n 's/^PACKAGE_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$src/dkms.conf")
ver=$(sed -n 's/^PACKAGE_VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$src/dkms.conf")
tar -C "$src" -cf "$work/src.tar" .
c=$(docker run -d --read-only --network none --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /var/lib/dkms:rw,exec,size=1g,uid=1000,gid=1000 --tmpfs /tmp:rw,exec,size=512m,mode=1777 \
  --tmpfs "/usr/src/$name-$ver:rw,exec,size=256m,uid=1000,gid=1000" "$img" sleep infinity)
docker exec -i "$c" sh -c 'cat >/tmp/kmf-old && chmod +x /tmp/kmf-old' <"$old"
docker exec -i "$c" sh -c 'cat >/tmp/kmf-new && chmod +x /tmp/kmf-new' <"$new"
env=(-e KMF_MODULE="$name" -e KMF_VERSION="$ver" -e KMF_KREL="$krel" -e KMF_JOBS=2)
declare -A times
for ((i = 1; i <= runs; i++)); do
  for v in old new; do
    t0=$(date +%s.%N)
    docker exec -i "${env[@]}" "$c" /tmp/kmf-$v prepare <"$work/src.tar" >"$work/dump-$v" 2>"$work/err-$v" \
      || { cat "$work/err-$v" >&2; exit 1; }
    t1=$(date +%s.%N)
    s=$(echo "$t1 - $t0" | bc)
    times[$v]+=" $s"
    echo "run $i $v: $s s (docker exec included)"
  done
done
med() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mo=$(med "${times[old]}") mn=$(med "${times[new]}")
echo "$pkg on $krel, $runs runs each: old $mo s, new $mn s (median), new/old $(echo "scale=2; $mn / $mo" | bc)"
if cmp -s "$work/dump-old" "$work/dump-new"; then echo "dumps: identical"; else echo "dumps: DIFFERENT"; exit 1; fi
