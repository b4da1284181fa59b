#!/bin/bash
# bootstrap-base.sh SUITE TAG
#
# Creates the Debian base image TAG (e.g. debian:bookworm-slim) from the Debian mirror when it is
# missing, for machines without a container registry:
#
#   mmdebstrap --variant=minbase --include=ca-certificates SUITE - | docker import --change 'CMD ["bash"]' - TAG
#
# The kmodforge server calls this only when TAG is neither present locally nor pullable.
# - If TAG already exists: prints so and exits 0.
# - Installs mmdebstrap with apt-get when it is missing (needs root, as does mmdebstrap's default mode).
# - Keeps the apt sources that mmdebstrap writes inside the image, so that apt works in containers made
#   from it. For stable suites those must list SUITE, SUITE-updates and SUITE-security (newer kernel
#   headers, e.g. linux-headers-6.1.0-56-amd64, exist only in bookworm-security); a customize hook checks
#   that and adds a missing line before the image is packed.
# Environment: MMDEBSTRAP_MIRROR (optional) overrides the Debian mirror URL (default: mmdebstrap's own,
#   deb.debian.org); the security line then still uses deb.debian.org/debian-security.
set -euo pipefail

usage() { echo "usage: $0 SUITE TAG   (e.g. $0 bookworm debian:bookworm-slim)" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
SUITE=$1
TAG=$2
[[ $SUITE =~ ^[a-z][a-z0-9.-]*$ ]] || { echo "bootstrap-base: bad suite name: $SUITE" >&2; exit 2; }
[[ -n $TAG ]] || usage

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "bootstrap-base: image $TAG already exists; nothing to do"
    exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "bootstrap-base: installing mmdebstrap with apt-get" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "bootstrap-base: mmdebstrap is missing and we are not root; install it (apt-get install mmdebstrap)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

# Customize hook, run by mmdebstrap with the chroot directory as $1. Checks (and if needed completes) the
# apt sources for stable suites. Suites without -updates/-security (sid, unstable, ...) are left alone.
hook_file=$(mktemp /tmp/kmodforge-bootstrap-hook.XXXXXX)
trap 'rm -f "$hook_file"' EXIT
cat >"$hook_file" <<'HOOK'
set -e
root=$1; suite=$2
case "$suite" in sid|unstable|experimental|rc-buggy) exit 0 ;; esac
list="$root/etc/apt/sources.list"
all=$(cat "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*.list "$root"/etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if ! grep -q -- "$suite-updates" <<<"$all"; then
    echo "bootstrap-base: $suite-updates missing from apt sources; adding it" >&2
    echo "deb http://deb.debian.org/debian $suite-updates main" >>"$list"
fi
if ! grep -q -- "$suite-security" <<<"$all"; then
    echo "bootstrap-base: $suite-security missing from apt sources; adding it" >&2
    echo "deb http://security.debian.org/debian-security $suite-security main" >>"$list"
fi
echo "bootstrap-base: apt sources in the image:" >&2
cat "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/* 2>/dev/null | sed "s/^/    /" >&2 || true
HOOK

mirror_args=()
[[ -n ${MMDEBSTRAP_MIRROR:-} ]] && mirror_args=("$MMDEBSTRAP_MIRROR")

echo "bootstrap-base: building $TAG from Debian $SUITE with mmdebstrap (minbase + ca-certificates)" >&2
start=$SECONDS
# Imported under a temporary tag first: a failed mmdebstrap still feeds `docker import` an empty (or
# truncated) stream, and an empty image under TAG would pass the "already exists" check forever.
tmp_tag="kmodforge-bootstrap:$SUITE-$$"
cleanup() { rm -f "$hook_file"; docker rmi -f "$tmp_tag" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# The hook uses bash syntax (here-strings); mmdebstrap runs it on the host with $1 = the chroot.
mmdebstrap --variant=minbase --include=ca-certificates \
    --customize-hook="bash $hook_file \"\$1\" $SUITE" \
    "$SUITE" - "${mirror_args[@]}" \
    | docker import --change 'CMD ["bash"]' - "$tmp_tag"

# Final check from the image itself: apt must see the suite's security updates.
if [[ $SUITE != sid && $SUITE != unstable && $SUITE != experimental ]]; then
    if ! docker run --rm --network none "$tmp_tag" sh -c \
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -q -- '$SUITE-security'"; then
        echo "bootstrap-base: $TAG has no $SUITE-security in its apt sources" >&2
        exit 1
    fi
fi
docker tag "$tmp_tag" "$TAG"
echo "bootstrap-base: created $TAG in $((SECONDS - start))s"
