#!/bin/sh
# POST_BUILD: runs in build/ after the modules were copied to ../<kver>/<arch>/module/ (DKMS's order).
# Only relative paths: a DKMS build script cannot count on DKMS's variables being exported.
echo "kmf-post: args=$*"
echo "kmf-post: cwd=$(basename "$PWD")"
if [ -f kmf_generated.h ] && [ -f sub/kmf_dir_b.ko ]; then echo "kmf-post: build-tree=yes"; else echo "kmf-post: build-tree=no"; fi
printf 'kmf-post: modules='
for f in ../*/*/module/*.ko; do printf '%s ' "${f##*/}"; done
echo
