#!/bin/sh
# PRE_BUILD that fails with the exit status given as its argument.
echo "kmf-pre-fail: exiting with status $1"
exit "$1"
