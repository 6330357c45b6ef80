#!/usr/bin/env bash
# Reads through `osdeploy mount` against a copy of the same files on the same disk, cold and warm,
# from a bare and from an archive repository; and a remote mount's cold read of a 100 MiB file
# against curl of the same bytes from the same nginx, unlimited and both held to 120 and 40 MiB/s.
# Usage (root): benches/harness/mount-bench.sh TREE WORK [RUNS]
#   TREE: a rootfs directory (e.g. PAIR/new from benches/harness/make-os-pair.sh)
#   WORK: scratch directory on a local disk (an 8 GiB btrfs loop image is created inside it)
# Needs: btrfs-progs, nginx-light, curl, GNU time (apt-get install btrfs-progs nginx-light curl time)
# Writes WORK/results.tsv: case  source  cache  run  wall_s  mib_per_s
# "cold" drops the page cache (and restarts the mount, so the kernel holds nothing of it) before
# the timed command; "warm" repeats the command right after a cold run.
set -euo pipefail
tree=$(realpath "${1:?TREE}"); mkdir -p "${2:?WORK}"; work=$(realpath "$2"); runs=${3:-3}
osd=${OSDEPLOY:-$(dirname "$0")/../../target/release/osdeploy}; osd=$(realpath "$osd")
W=$work; PORT=${PORT:-18980}
# shellcheck source=benches/harness/nginx.sh
. "$(dirname "$0")/nginx.sh"
M=$work/mnt
results=$work/results.tsv
log() { printf '%s\n' "$*" >&2; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cleanup() {
  for point in "$M"/view-*; do if mountpoint -q "$point"; then umount -l "$point" || true; fi; done
  nginx_stop
  umount "$M" 2> /dev/null || true
  [ -z "${dev:-}" ] || losetup -d "$dev" || true
}
trap cleanup EXIT

rm -f "$work/fs.img"; truncate -s 8G "$work/fs.img"
dev=$(losetup -f --show "$work/fs.img")
mkfs.btrfs -q "$dev"; mkdir -p "$M"; mount "$dev" "$M"
log "preparing: the tree, a 1 GiB and a 100 MiB random file, two repositories"
mkdir -p "$M/native/big" "$M/native/r100"
cp -a "$tree" "$M/native/rootfs"
head -c 1G /dev/urandom > "$M/native/big/blob"
head -c 100M /dev/urandom > "$M/native/r100/file"
for mode in archive bare; do
  "$osd" --repo "$M/repo-$mode" init --mode "$mode" > /dev/null
  for part in rootfs big r100; do "$osd" --repo "$M/repo-$mode" commit -b "$part" "$M/native/$part" > /dev/null; done
done

# mounted SOURCE PART: where PART (rootfs, big) of SOURCE (native, bare, archive) is read from,
# (re)mounted for the mounts, so that a cold run finds nothing of it in the kernel either.
mounted() {
  local source=$1 part=$2 point=$M/view-$1-$2
  if [ "$source" = native ]; then echo "$M/native/$part"; return; fi
  if mountpoint -q "$point"; then "$osd" umount "$point" > /dev/null; fi
  mkdir -p "$point"
  "$osd" --repo "$M/repo-$source" mount "$part" "$point" > /dev/null
  echo "$point"
}

printf 'case\tsource\tcache\trun\twall_s\tmib_per_s\n' > "$results"
# timed CASE SOURCE CACHE RUN MIB CMD...: appends a row (MiB/s left empty when MIB is 0)
timed() {
  local case=$1 source=$2 cache=$3 run=$4 mib=$5; shift 5
  /usr/bin/time -f '%e' -o "$work/time.out" "$@" > /dev/null 2> "$work/cmd.err" || { cat "$work/cmd.err" >&2; return 1; }
  local wall; wall=$(cat "$work/time.out")
  local rate=""; [ "$mib" = 0 ] || rate=$(awk -v m="$mib" -v s="$wall" 'BEGIN {printf "%.0f", m / (s > 0 ? s : 0.01)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$source" "$cache" "$run" "$wall" "$rate" >> "$results"
  log "$case $source $cache run $run: ${wall} s ${rate:+($rate MiB/s)}"
}
rootfs_mib=$(du -sm --apparent-size "$M/native/rootfs" | cut -f1)
for run in $(seq "$runs"); do
  for source in native bare archive; do
    big=$(mounted "$source" big)
    drop; timed seq-read-1GiB "$source" cold "$run" 1024 cat "$big/blob"
    timed seq-read-1GiB "$source" warm "$run" 1024 cat "$big/blob"
    root=$(mounted "$source" rootfs)
    drop; timed tar-rootfs "$source" cold "$run" "$rootfs_mib" sh -c 'tar cf - -C "$1" . | cat > /dev/null' sh "$root"
    timed tar-rootfs "$source" warm "$run" "$rootfs_mib" sh -c 'tar cf - -C "$1" . | cat > /dev/null' sh "$root"
    root=$(mounted "$source" rootfs)
    drop; timed find-stat "$source" cold "$run" 0 find "$root" -printf '%s %m %U %G %T@\n'
    timed find-stat "$source" warm "$run" 0 find "$root" -printf '%s %m %U %G %T@\n'
  done
done

log "remote: nginx serving the archive repository and the same 100 MiB as a plain file"
nginx_start
ln -sfn "$M/repo-archive" "$W/www/repo"
cp "$M/native/r100/file" "$W/www/r100"
"$osd" --repo "$M/local" init --mode archive > /dev/null
"$osd" --repo "$M/local" remote add origin "http://127.0.0.1:$PORT/repo" --insecure > /dev/null
point=$M/view-remote
mkdir -p "$point"
# Unlimited (loopback's own rate), and both held to 120 MiB/s (about 1 Gbit/s) and to 40 MiB/s
# (curl's and osdeploy's own limiters), as on links of those rates.
for run in $(seq "$runs"); do
  for limit in none 120M 40M; do
    case=remote-cold-100MiB; curl_limit=(); osd_limit=()
    if [ "$limit" != none ]; then case=remote-cold-100MiB-at-$limit; curl_limit=(--limit-rate "$limit"); osd_limit=(--limit-rate "$limit"); fi
    drop; timed "$case" curl cold "$run" 100 curl -sf "${curl_limit[@]}" -o /dev/null "http://127.0.0.1:$PORT/r100"
    rm -rf "$M/remote-cache"
    if mountpoint -q "$point"; then "$osd" umount "$point" > /dev/null; fi
    "$osd" --repo "$M/local" mount --remote origin "${osd_limit[@]}" --cache "$M/remote-cache" r100 "$point" > /dev/null
    log_reset
    drop; timed "$case" osdeploy-mount cold "$run" 100 cat "$point/file"
    read -r requests bytes _ < <(log_sum)
    log "  the mount's read: $requests requests, $bytes bytes"
  done
done
log "done: $results"
column -t -s $'\t' "$results" >&2
