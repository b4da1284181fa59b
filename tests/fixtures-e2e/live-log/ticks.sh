#!/bin/sh
# ticks.sh N: prints "kmf-live: tick I" once a second, N times.
i=1
while [ "$i" -le "$1" ]; do
	echo "kmf-live: tick $i"
	sleep 1
	i=$((i + 1))
done
