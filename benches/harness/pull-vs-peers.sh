#!/usr/bin/env bash
# A node holding OLD pulls NEW over HTTP from nginx on loopback: bytes on the wire, requests,
# wall time, peak RSS — osdeploy at several archive compression levels, with per-file deltas
# (`delta generate` timed too) and with chunks only (`--no-deltas`) — plus the full pull of
# NEW against this machine's decompress + hash + write reference (`checkout` of NEW from the
# archive repository into the same filesystem), a rate-limited full pull, the peak RSS of full
# pulls of synthetic trees of growing size, and mirroring (first run, then incremental). The
# peers (OSTree, casync, xdelta3, zstd --patch-from, rsync, full images) are measured by
# benches/harness/peers.sh; benches/harness/compare.sh runs both (and store-vs-peers.sh) in one
# run and writes the table of docs/benchmarks.md.
# Usage (root): benches/harness/pull-vs-peers.sh PAIR WORK [LEVEL...]
#   (PAIR from benches/harness/make-os-pair.sh; OSDEPLOY overrides target/release/osdeploy)
# Needs: nginx, GNU time, xfsprogs, rsync. Fails when the node's checkout after the delta update
# is not NEW byte for byte and in metadata. Writes WORK/results.tsv. Nodes live on a fresh loop-mounted
# xfs (reflink=1) made per level, as on a real node.
set -euo pipefail
P=$(realpath "${1:?PAIR}"); mkdir -p "${2:?WORK}"; W=$(realpath "$2"); shift 2
levels=${*:-3 19}
osd=${OSDEPLOY:-$(dirname "$0")/../../target/release/osdeploy}; osd=$(realpath "$osd")
PORT=${PORT:-18090}
R=$W/results.tsv
printf 'tool\tlevel\tcase\tbytes\trequests\twall_s\tmax_rss_kib\tpredicted_bytes\tpredicted_requests\n' > "$R"
mkdir -p "$W/nodes"
# shellcheck source=benches/harness/nginx.sh
source "$(dirname "$0")/nginx.sh"
nginx_start
cleanup() {
  nginx_stop
  umount "$W/nodes" 2>/dev/null || true
}
trap cleanup EXIT
fresh_nodes() {   # a new xfs for the nodes: no inode-reuse or page-cache effects from a previous run
  umount "$W/nodes" 2>/dev/null || true
  rm -f "$W/nodes.img"; truncate -s 8G "$W/nodes.img"; mkfs.xfs -q -f -m reflink=1 "$W/nodes.img"
  mount -o loop "$W/nodes.img" "$W/nodes"
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$R"; echo "ROW: $*"; }
node() {  # node NAME: an empty bare repository following origin at URL $url
  "$osd" --repo "$W/nodes/$1" init --mode bare > /dev/null
  "$osd" --repo "$W/nodes/$1" remote add origin "$url" --insecure > /dev/null
}
timed_pull() {  # timed_pull NODE LEVEL CASE PREDICTED_BYTES PREDICTED_REQUESTS [PULL ARGS]
  local n=$1 level=$2 case=$3 pb=$4 pr=$5; shift 5
  cold; log_reset
  /usr/bin/time -f '%e %M' -o "$W/time.out" "$osd" --repo "$W/nodes/$n" pull "$@" origin os > "$W/pull.out" 2>&1
  read -r wall rss < "$W/time.out"; read -r rq bb _ < <(log_sum)
  row osdeploy "$level" "$case" "$bb" "$rq" "$wall" "$rss" "$pb" "$pr"
  "$osd" --repo "$W/nodes/$n" fsck > /dev/null
}
plan() {  # plan FROM TO: sets pb and pr from the origin's delta plan
  "$osd" --repo "$srv" delta --json "$1" "$2" > "$W/delta.json"
  pb=$(sed -n 's/^  "transfer_bytes": \([0-9]*\).*/\1/p' "$W/delta.json")
  pr=$(sed -n 's/^  "requests": \([0-9]*\).*/\1/p' "$W/delta.json")
}
for level in $levels; do
  fresh_nodes
  srv=$W/www/repo-$level; rm -rf "$srv"
  "$osd" --repo "$srv" init --mode archive --compression-level "$level" > /dev/null
  "$osd" --repo "$srv" commit -b os --version old "$P/old" > /dev/null
  url=http://127.0.0.1:$PORT/repo-$level
  node update; "$osd" --repo "$W/nodes/update" pull origin os > /dev/null 2>&1
  node chunks; "$osd" --repo "$W/nodes/chunks" pull origin os > /dev/null 2>&1
  old=$("$osd" --repo "$srv" show --json os | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p')
  # mirror: a first run while the origin holds OLD, an incremental one after NEW is committed
  rm -rf "$W/mirror-$level"
  cold; log_reset
  /usr/bin/time -f '%e %M' -o "$W/time.out" "$osd" mirror --insecure "$url" "$W/mirror-$level" > /dev/null 2>&1
  read -r wall rss < "$W/time.out"; read -r rq bb _ < <(log_sum)
  row mirror "$level" first "$bb" "$rq" "$wall" "$rss" - -
  "$osd" --repo "$srv" commit -b os --version new "$P/new" > /dev/null
  new=$("$osd" --repo "$srv" show --json os | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p')
  cold
  /usr/bin/time -f '%e %M' -o "$W/time.out" "$osd" --repo "$srv" delta generate --to os > "$W/generate-$level.txt"
  read -r wall rss < "$W/time.out"
  row generate "$level" "delta generate --to NEW (from OLD)" - - "$wall" "$rss" - -
  cold; log_reset
  /usr/bin/time -f '%e %M' -o "$W/time.out" "$osd" mirror --insecure "$url" "$W/mirror-$level" > /dev/null 2>&1
  read -r wall rss < "$W/time.out"; read -r rq bb _ < <(log_sum)
  row mirror "$level" incremental "$bb" "$rq" "$wall" "$rss" - -

  plan "$old" "$new"; timed_pull update "$level" update "$pb" "$pr"
  # The delta update is exact: the node's checkout of NEW equals NEW in content and metadata.
  # XFS also shows POSIX ACLs as trusted.SGI_ACL_* attributes; -A compares the ACLs themselves.
  "$osd" --repo "$W/nodes/update" checkout origin/os "$W/nodes/update-checkout" > /dev/null
  differs=$(rsync -naHAX --checksum --delete --numeric-ids --itemize-changes --filter='-x trusted.SGI_ACL_*' \
    "$P/new/" "$W/nodes/update-checkout/")
  if [ -n "$differs" ]; then
    echo "pull-vs-peers: the node's checkout after the delta update differs from NEW:" >&2
    echo "$differs" | head -50 >&2
    exit 1
  fi
  echo "the delta update's checkout equals NEW (rsync -aHAX --checksum)"
  rm -rf "$W/nodes/update-checkout"
  "$osd" --repo "$srv" delta --no-deltas --json "$old" "$new" > "$W/delta.json"
  pb=$(sed -n 's/^  "transfer_bytes": \([0-9]*\).*/\1/p' "$W/delta.json")
  pr=$(sed -n 's/^  "requests": \([0-9]*\).*/\1/p' "$W/delta.json")
  timed_pull chunks "$level" "update --no-deltas" "$pb" "$pr" --no-deltas
  plan none "$new"
  node full; timed_pull full "$level" full "$pb" "$pr"
  # the reference: decompress + hash + write NEW from the archive repository into the same xfs
  cold
  /usr/bin/time -f '%e %M' -o "$W/time.out" "$osd" --repo "$srv" checkout os "$W/nodes/reference" > /dev/null 2>&1
  read -r wall rss < "$W/time.out"
  row reference "$level" "checkout-from-archive" - - "$wall" "$rss" - -
  node limited; timed_pull limited "$level" "full --limit-rate 50M" "$pb" "$pr" --limit-rate 50M
done
# Peak RSS against tree size: full pulls of synthetic trees (random data, 64 KiB–4 MiB files).
for mib in 256 1024; do
  fresh_nodes
  tree=$W/synthetic-$mib; rm -rf "$tree"; mkdir -p "$tree"
  left=$((mib << 20)); i=0
  while [ $left -gt 0 ]; do
    size=$(( 65536 << (i % 7) )); [ $size -gt $left ] && size=$left
    mkdir -p "$tree/d$((i / 100))"; head -c "$size" /dev/urandom > "$tree/d$((i / 100))/f$i"
    left=$((left - size)); i=$((i + 1))
  done
  srv=$W/www/synthetic-$mib; rm -rf "$srv"; url=http://127.0.0.1:$PORT/synthetic-$mib
  "$osd" --repo "$srv" init --mode archive > /dev/null
  "$osd" --repo "$srv" commit -b os "$tree" > /dev/null
  node synth; plan none os; timed_pull synth 3 "full synthetic ${mib} MiB ($i files)" "$pb" "$pr"
done
column -t -s $'\t' "$R"
