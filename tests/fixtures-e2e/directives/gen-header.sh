#!/bin/sh
# PRE_BUILD: writes kmf_generated.h in the current directory (DKMS: build/), which kmf_dir_a.c includes.
# $1 is the argument given in dkms.conf. Records whether PATCH[0] was already applied (DKMS: patches
# come before PRE_BUILD) and the name of the working directory.
set -e
arg=${1:-none}
if grep -q 'kmf-patched' kmf_dir_a.c; then saw=yes; else saw=no; fi
cat >kmf_generated.h <<H
#define KMF_PRE_ARG "$arg"
#define KMF_PRE_SAW_PATCH "$saw"
#define KMF_PRE_CWD "$(basename "$PWD")"
H
echo "kmf-pre: wrote kmf_generated.h (arg=$arg, saw_patch=$saw)"
