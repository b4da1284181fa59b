#!/bin/bash
# bench/bootcheck-ab.sh -- two versions of the verifier's bootcheck script on the same modules, interleaved.
#
#   bench/bootcheck-ab.sh [-n RUNS] KREL A_SCRIPT B_SCRIPT DIR [DIR...]
#
# e.g. the gzip'd initramfs modules against the script before them:
#   git show 0a1b2c3:images/verifier/bootcheck >/tmp/bootcheck.old
#   bench/bootcheck-ab.sh -n 5 6.1.0-47-amd64 /tmp/bootcheck.old images/verifier/bootcheck \
#       /var/tmp/kmodforge-compat/ko/kmodforge/v4l2loopback-dkms/6.1.0-47-amd64 ...
#
# Each DIR holds the .ko files of one check (one package). For each DIR and each run, A and B run back to back
# (alternating which goes first) in the verifier image kmodforge-verifier:debian-bookworm-KREL, with the script
# bind-mounted over the image's own, in the sandbox the server uses (no network, read-only root, uid 1000,
# no capabilities). Prints per DIR and script: the median of the qemu wall time ("seconds" of the report), of the
# whole docker run, the initramfs size, and whether every run gave the same outcome.
set -euo pipefail
runs=5
if [[ ${1:-} == -n ]]; then runs=$2; shift 2; fi
(($# >= 4)) || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
krel=$1 a=$(realpath "$2") b=$(realpath "$3")
shift 3
image=kmodforge-verifier:debian-bookworm-$krel
docker image inspect "$image" >/dev/null 2>&1 || { echo "no image $image (PUT /v1/kernels/$krel?boot_check=true)" >&2; exit 2; }
median() { sort -n | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else printf "%.2f\n", (v[NR/2]+v[NR/2+1])/2}'; }
one() { # one SCRIPT DIR -> "qemu_s total_s bytes outcome"
    local script=$1 dir=$2 t0 t1 out
    t0=$(date +%s.%N)
    out=$(cd "$dir" && tar c --owner=0 --group=0 -- *.ko | docker run --rm -i --network none --read-only \
        --tmpfs /tmp:rw,exec,size=1g --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges \
        -e KMF_KREL="$krel" -v "$script:/usr/local/lib/kmodforge/bootcheck:ro" "$image" \
        bash /usr/local/lib/kmodforge/bootcheck 2>/dev/null) || true
    t1=$(date +%s.%N)
    jq -r --arg total "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" \
        '"\(.seconds) \($total) \(.initramfs_bytes) \(if .reason == null then "ok" else "failed" end)"' <<<"$out"
}
printf '%-28s %-6s %8s %8s %10s %s\n' package script qemu_s total_s initramfs outcomes
for dir in "$@"; do
    name=$(basename "$(dirname "$dir")")/$(ls "$dir"/*.ko | wc -l)ko
    : >/tmp/ab.A; : >/tmp/ab.B
    for ((i = 0; i < runs; i++)); do
        if ((i % 2)); then order="B A"; else order="A B"; fi
        for w in $order; do
            if [[ $w == A ]]; then one "$a" "$dir" >>/tmp/ab.A; else one "$b" "$dir" >>/tmp/ab.B; fi
        done
    done
    for w in A B; do
        printf '%-28s %-6s %8s %8s %10s %s\n' "$name" "$w" \
            "$(cut -d' ' -f1 /tmp/ab.$w | median)" "$(cut -d' ' -f2 /tmp/ab.$w | median)" \
            "$(cut -d' ' -f3 /tmp/ab.$w | sort -u | tr '\n' ' ')" "$(cut -d' ' -f4 /tmp/ab.$w | sort | uniq -c | tr -s ' \n' ' ')"
    done
done
