#!/bin/bash
# Starts the Garage node, waits for it, and makes sure of (first start: creates) the
# single-node layout, the access key AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (imported,
# named kmodforge; other keys of that name, replaced ones, are deleted) and the bucket
# $GARAGE_BUCKET (default kmodforge) with read, write and owner for the key. Then marks
# itself ready (/tmp/garage-ready, the healthcheck's file) and waits on the server;
# SIGTERM stops it.
set -euo pipefail
die() { echo "garage-entrypoint: $*" >&2; exit 1; }
bucket=${GARAGE_BUCKET:-kmodforge}
key_name=kmodforge
[[ ${AWS_ACCESS_KEY_ID:-} =~ ^GK[0-9a-f]{24}$ ]] \
  || die "AWS_ACCESS_KEY_ID must be GK and 24 hex digits (scripts/cluster.sh writes one to .cluster.env)"
[[ ${AWS_SECRET_ACCESS_KEY:-} =~ ^[0-9a-f]{64}$ ]] \
  || die "AWS_SECRET_ACCESS_KEY must be 64 hex digits (scripts/cluster.sh writes one to .cluster.env)"
rm -f /tmp/garage-ready

mkdir -p /var/lib/garage/meta /var/lib/garage/data
if [[ ! -s $GARAGE_RPC_SECRET_FILE ]]; then
  (umask 077 && od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$GARAGE_RPC_SECRET_FILE.tmp" \
    && mv -f "$GARAGE_RPC_SECRET_FILE.tmp" "$GARAGE_RPC_SECRET_FILE")
fi

garage server &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit $?' TERM INT

# Runs a garage command that must succeed; its output on stdout, else stops naming $1.
must() {
  local what=$1 out; shift
  out=$(garage "$@" 2>&1) || { kill -TERM "$pid" 2>/dev/null; die "$what failed (garage $*): $(tail -n1 <<<"$out")"; }
  printf '%s\n' "$out"
}
# Waits up to $1 seconds for `garage ${@:2}` to succeed while the server lives.
wait_for() {
  local secs=$1 deadline; shift
  deadline=$(($(date +%s) + secs))
  until garage "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "the garage server exited"
    (($(date +%s) < deadline)) || { kill -TERM "$pid" 2>/dev/null; die "\`garage $*\` still fails after $secs s"; }
    sleep 0.2
  done
}

wait_for 60 status
version=$(must "reading the cluster layout" layout show | sed -n 's/^Current cluster layout version: //p')
if [[ $version == 0 ]]; then
  node_id=$(must "reading the node id" node id -q)
  node_id=${node_id%%@*}
  # The capacity only weighs nodes against each other; it is no quota.
  must "assigning the node a role" layout assign -z dc1 -c 10G "$node_id" >/dev/null
  must "applying the layout" layout apply --version 1 >/dev/null
  echo "garage-entrypoint: first start, layout assigned to node ${node_id:0:16}"
elif [[ ! $version =~ ^[0-9]+$ ]]; then
  die "cannot read the cluster layout version from \`garage layout show\`"
fi
wait_for 60 health -q

if ! out=$(garage key info "$AWS_ACCESS_KEY_ID" 2>&1); then
  [[ $out == *"NoSuchAccessKey"* || $out == *"not found"* ]] \
    || die "looking up key $AWS_ACCESS_KEY_ID failed: $(tail -n1 <<<"$out")"
  # The secret goes in argv here, inside this container only.
  must "importing key $AWS_ACCESS_KEY_ID" key import -n "$key_name" --yes "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
  echo "garage-entrypoint: imported key $AWS_ACCESS_KEY_ID"
fi
# The key in the environment is the only one of ours: a replaced one (a new
# .cluster.env) stops working.
keys=$(must "listing keys" key list)
while read -r old; do
  [[ -n $old ]] || continue
  must "deleting the replaced key $old" key delete --yes "$old" >/dev/null
  echo "garage-entrypoint: deleted the replaced key $old"
done < <(awk -v name="$key_name" -v id="$AWS_ACCESS_KEY_ID" '$1 ~ /^GK/ && $3 == name && $1 != id {print $1}' <<<"$keys")
if ! out=$(garage bucket info "$bucket" 2>&1); then
  [[ $out == *"NoSuchBucket"* || $out == *"not found"* ]] \
    || die "looking up bucket $bucket failed: $(tail -n1 <<<"$out")"
  must "creating bucket $bucket" bucket create "$bucket" >/dev/null
  echo "garage-entrypoint: created bucket $bucket"
fi
must "granting key $AWS_ACCESS_KEY_ID on bucket $bucket" \
  bucket allow --read --write --owner "$bucket" --key "$AWS_ACCESS_KEY_ID" >/dev/null

touch /tmp/garage-ready
echo "garage-entrypoint: ready: S3 at :3900, region garage, bucket $bucket, key $AWS_ACCESS_KEY_ID"
wait "$pid"
