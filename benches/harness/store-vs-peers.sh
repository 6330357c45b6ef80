#!/usr/bin/env bash
# Commit and checkout of a real rootfs: osdeploy against OSTree and cp, measured in the same run.
# Usage (root): benches/harness/store-vs-peers.sh TREE WORK [RUNS]
#   TREE: a rootfs directory (e.g. PAIR/new from benches/harness/make-os-pair.sh)
#   WORK: scratch directory on a local disk (loop images are created inside it)
# Needs: ostree, btrfs-progs, xfsprogs, GNU time (apt-get install ostree btrfs-progs xfsprogs time)
# Writes WORK/results.tsv: tool  op  fs  run  wall_s  max_rss_kib  extra_used_kib  note
# Page cache is dropped before every timed run, so reads come from disk as on a real node, and
# every timed command is followed by `sync` inside the timing: a checked-out slot or a commit
# counts only once it is durable (osdeploy syncs by itself; OSTree's checkout does not).
set -euo pipefail
tree=$(realpath "${1:?TREE}"); mkdir -p "${2:?WORK}"; work=$(realpath "$2"); runs=${3:-3}
osd=${OSDEPLOY:-$(dirname "$0")/../../target/release/osdeploy}; osd=$(realpath "$osd")
results=$work/results.tsv
# OSTree cannot commit device nodes, fifos or sockets: every tool gets the same copy without them.
rsync -aHAX --delete --no-devices --no-specials "$tree/" "$work/tree/"
tree=$work/tree
printf 'tool\top\tfs\trun\twall_s\tmax_rss_kib\textra_used_kib\tnote\n' > "$results"
log() { printf '%s\n' "$*" >&2; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# timed TOOL OP FS RUN NOTE CMD... : runs CMD under GNU time after dropping caches, appends a row
timed() {
  local tool=$1 op=$2 fs=$3 run=$4 note=$5; shift 5
  local before after
  drop; sleep 1   # let the filesystem finish freeing what the previous run's rm released
  before=$(df --output=used -k "${MNT:-$work}" | tail -1)
  /usr/bin/time -f '%e %M' -o "$work/time.out" sh -c '"$@" && sync' sh "$@" > "$work/cmd.out" 2>&1 ||
    { cat "$work/cmd.out" >&2; return 1; }
  after=$(df --output=used -k "${MNT:-$work}" | tail -1)
  read -r wall rss < "$work/time.out"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$op" "$fs" "$run" "$wall" "$rss" $((after - before)) "$note" >> "$results"
  log "$tool $op $fs run $run: ${wall}s rss ${rss}KiB extra $((after - before))KiB"
}

# 1. commit into archive repositories on the local disk
for run in $(seq 1 "$runs"); do
  rm -rf "$work/osd-archive" "$work/ostree-archive"
  "$osd" --repo "$work/osd-archive" init --mode archive > /dev/null
  timed osdeploy commit local "$run" "archive, zstd level $(sed -n 's/.*"compression_level": \([0-9]*\).*/\1/p' "$work/osd-archive/config")" \
    "$osd" --repo "$work/osd-archive" commit -b bench "$tree"
  ostree --repo="$work/ostree-archive" init --mode=archive
  timed ostree commit local "$run" "archive (zlib)" ostree --repo="$work/ostree-archive" commit -b bench --tree=dir="$tree"
done
printf 'osdeploy archive repo: %s\nostree archive repo: %s\n' "$(du -sh "$work/osd-archive" | cut -f1)" "$(du -sh "$work/ostree-archive" | cut -f1)" > "$work/sizes.txt"

# 2. checkout on reflink-capable filesystems: each tool's node-side repo on the same filesystem
for fs in btrfs xfs; do
  img=$work/$fs.img; MNT=$work/mnt-$fs
  rm -f "$img"; truncate -s 4G "$img"; dev=$(losetup -f --show "$img")
  if [ "$fs" = btrfs ]; then mkfs.btrfs -q "$dev"; else mkfs.xfs -q -m reflink=1 "$dev"; fi
  mkdir -p "$MNT"; mount "$dev" "$MNT"
  "$osd" --repo "$MNT/osd" init --mode bare > /dev/null
  "$osd" --repo "$MNT/osd" commit -b bench "$tree" > /dev/null
  ostree --repo="$MNT/ostree" init --mode=bare
  ostree --repo="$MNT/ostree" commit -b bench --tree=dir="$tree" > /dev/null
  cp -a "$tree" "$MNT/src"
  for run in $(seq 1 "$runs"); do
    # the whole node-side step: osdeploy switch into a fresh sysroot's standby slot (checkout, /etc
    # merge, state, bootloader), its repository on the same filesystem
    rm -rf "$MNT/sys"; mkdir -p "$MNT/sys"
    "$osd" --sysroot "$MNT/sys" init-sysroot --bootloader file > /dev/null
    "$osd" --sysroot "$MNT/sys" commit -b bench "$tree" > /dev/null 2>&1
    timed osdeploy switch "$fs" "$run" "init-sysroot, then switch" "$osd" --sysroot "$MNT/sys" switch bench
    rm -rf "$MNT/co-osd" "$MNT/co-ostree" "$MNT/co-cp"
    timed osdeploy checkout "$fs" "$run" "bare repo, FICLONE" "$osd" --repo "$MNT/osd" checkout bench "$MNT/co-osd"
    timed ostree checkout "$fs" "$run" "bare repo, hardlinks" ostree --repo="$MNT/ostree" checkout bench "$MNT/co-ostree"
    timed cp checkout "$fs" "$run" "cp -a --reflink=always" cp -a --reflink=always "$MNT/src" "$MNT/co-cp"
  done
  umount "$MNT"; losetup -d "$dev"; rm -f "$img"; unset MNT
done
column -t -s $'\t' "$results"
cat "$work/sizes.txt"
