#!/bin/bash
# install-kernel-headers.sh SUITE KREL -- builder image layer 2 (one kernel release).
#
# - apt-get update; linux-headers-KREL must exist in SUITE, else prints exactly one line
#     kmodforge: Debian package linux-headers-KREL not found in SUITE
#   on stderr and exits 42 (the server maps 42 to "unknown kernel").
# - installs it, reads CONFIG_CC_VERSION_TEXT from the headers' include/config/auto.conf (or .config),
#   derives the compiler (gcc-N, or clang-N), installs it when missing, and checks that
#   `$CC --version | head -1` equals that text (only a different Debian revision is tolerated, with a note).
#   Exit 43 when the compiler cannot be found or does not match.
# - writes /etc/kmodforge/kernel.env (KREL, ARCH, CC, CC_VERSION_TEXT, HEADERS_PACKAGE, HEADERS_VERSION),
#   read by kmf and by the uname shim.
# Other failures (mirror unreachable, ...) exit with another non-zero code, never 42.
set -euo pipefail
SUITE=${1:?usage: install-kernel-headers.sh SUITE KREL}
KREL=${2:-}
export DEBIAN_FRONTEND=noninteractive

not_found() {
    echo "kmodforge: Debian package linux-headers-$KREL not found in $SUITE" >&2
    exit 42
}
# Anything that cannot be a Debian kernel release cannot have a headers package either.
[[ $KREL =~ ^[0-9][A-Za-z0-9.+~_-]*$ ]] || not_found

# apt-get update exits 0 even when an index could not be fetched; a missing bookworm-security index
# would then turn a real kernel into "not found". Treat any fetch error as a plain failure instead.
update_log=$(mktemp)
if ! apt-get update 2>&1 | tee "$update_log"; then
    echo "kmodforge: apt-get update failed" >&2
    exit 1
fi
if grep -Eq '^(Err:|E:|W: Failed to fetch|W: Some index files failed)' "$update_log"; then
    echo "kmodforge: apt-get update could not fetch every index; refusing to decide whether linux-headers-$KREL exists" >&2
    exit 1
fi
rm -f "$update_log"

pkg="linux-headers-$KREL"
# Not `| grep -q`: under pipefail, grep -q exiting at the first match can kill apt-cache with SIGPIPE
# and turn a real kernel into "not found" (seen in about a third of runs).
show=$(apt-cache show "$pkg" 2>/dev/null || true)
if ! grep -q '^Package: ' <<<"$show"; then
    not_found
fi

apt-get install -y --no-install-recommends "$pkg"

hdr="/usr/src/linux-headers-$KREL"
build="/lib/modules/$KREL/build"
if [[ ! -e $build/include ]]; then
    if [[ -d $hdr/include ]]; then
        mkdir -p "/lib/modules/$KREL"
        ln -sfn "$hdr" "$build"
    else
        echo "kmodforge: $pkg did not provide $build (no $hdr either)" >&2
        exit 1
    fi
fi

kconf="$build/include/config/auto.conf"
[[ -e $kconf ]] || kconf="$build/.config"
# auto.conf of Linux >= 5.17 writes strings unquoted, .config quotes them (with \" and \\ escapes).
cc_text=$(sed -n 's/^CONFIG_CC_VERSION_TEXT=//p' "$kconf" | head -n 1)
if [[ $cc_text == \"*\" ]]; then
    cc_text=${cc_text#\"}; cc_text=${cc_text%\"}
    cc_text=$(printf '%s' "$cc_text" | sed 's/\\\(.\)/\1/g')
fi
if [[ -z $cc_text ]]; then
    echo "kmodforge: no CONFIG_CC_VERSION_TEXT in $kconf" >&2
    exit 43
fi
echo "kmodforge: $KREL was built with: $cc_text"

# Derive the compiler command from the text:
#   "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"         -> gcc-12
#   "x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14) 12.2.0" -> gcc-12
#   "gcc (Debian 10.2.1-6) 10.2.1 20210110"            -> gcc-10
#   "Debian clang version 16.0.6 (15)"                 -> clang-16
first=${cc_text%% *}
cc=
case $cc_text in
    *clang\ version\ *)
        ver=$(sed -n 's/.*clang version \([0-9][0-9]*\)\..*/\1/p' <<<"$cc_text")
        [[ -n $ver ]] && cc="clang-$ver"
        ;;
    *)
        if [[ $first =~ (^|-)gcc-([0-9]+)$ ]]; then
            cc="gcc-${BASH_REMATCH[2]}"
        elif [[ $first =~ (^|-)gcc$ ]]; then
            ver=$(sed -n 's/^[^ ]* ([^)]*) \([0-9][0-9]*\)\..*/\1/p' <<<"$cc_text")
            [[ -n $ver ]] && cc="gcc-$ver"
        fi
        ;;
esac
if [[ -z $cc ]]; then
    echo "kmodforge: cannot derive a compiler from CONFIG_CC_VERSION_TEXT=\"$cc_text\"" >&2
    exit 43
fi

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "kmodforge: installing $cc"
    case $cc in
        clang-*) pkgs=("$cc" "lld-${cc#clang-}" "llvm-${cc#clang-}") ;;
        *) pkgs=("$cc") ;;
    esac
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}"; then
        echo "kmodforge: compiler $cc (for $KREL) is not installable from $SUITE" >&2
        exit 43
    fi
fi

actual=$("$cc" --version | head -n 1)
if [[ $actual != "$cc_text" ]]; then
    # Tolerate a different Debian revision of the same upstream compiler only:
    # "(Debian 12.2.0-14+deb12u1) 12.2.0" vs "(Debian 12.2.0-14) 12.2.0".
    strip_rev() { sed -E 's/\(Debian ([^ )-]+)-[^ )]*\)/(Debian \1)/; s/ \([0-9]+\)$//' <<<"$1"; }
    if [[ $(strip_rev "$actual") == "$(strip_rev "$cc_text")" ]]; then
        echo "kmodforge: note: compiler differs only in the Debian revision:"
        echo "kmodforge:   kernel built with: $cc_text"
        echo "kmodforge:   image provides:    $actual"
    else
        echo "kmodforge: compiler mismatch for $KREL:" >&2
        echo "kmodforge:   kernel built with: $cc_text" >&2
        echo "kmodforge:   $cc --version:     $actual" >&2
        exit 43
    fi
fi

case $(dpkg --print-architecture) in
    amd64) karch=x86_64 ;;
    arm64) karch=aarch64 ;;
    i386) karch=i686 ;;
    armhf|armel) karch=armv7l ;;
    ppc64el) karch=ppc64le ;;
    s390x) karch=s390x ;;
    riscv64) karch=riscv64 ;;
    *) karch=$(/bin/uname -m) ;;
esac

for v in "$KREL" "$cc" "$cc_text"; do
    if [[ $v == *\'* || $v == *$'\n'* ]]; then
        echo "kmodforge: unexpected quote or newline in '$v'" >&2
        exit 1
    fi
done
mkdir -p /etc/kmodforge
{
    echo "# kmodforge builder image: the one kernel this image builds for (shell syntax, single-quoted values)"
    echo "KREL='$KREL'"
    echo "ARCH='$karch'"
    echo "CC='$cc'"
    echo "CC_VERSION_TEXT='$cc_text'"
    echo "HEADERS_PACKAGE='$pkg'"
    echo "HEADERS_VERSION='$(dpkg-query -W -f='${Version}' "$pkg")'"
} >/etc/kmodforge/kernel.env
cat /etc/kmodforge/kernel.env

# The uname shim (installed in layer 1) must now report this kernel.
if [[ -x /usr/local/bin/uname && $(/usr/local/bin/uname -r) != "$KREL" ]]; then
    echo "kmodforge: uname shim reports $(/usr/local/bin/uname -r), expected $KREL" >&2
    exit 1
fi

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
