#!/usr/bin/env bash
# osdeploy end-to-end demo on the embedded sample tree (demo/make-sample-tree.sh):
# an origin commits release 1 and release 2 into an archive repository; we inspect history,
# the diff and the storage saved by deduplication; then a node-style bare repository on a
# loop-mounted btrfs image (when run as root) checks release 2 out with reflinks.
# The story grows with transport (serve, pull, delta) and deployments (switch, status).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -q -p osdeploy
osd="$PWD/target/release/osdeploy"
work=$(mktemp -d /tmp/osdeploy-demo.XXXXXX)
mnt=""; loopdev=""
cleanup() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || true; fi
  if [ -n "$loopdev" ]; then losetup -d "$loopdev" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Build the sample OS, releases 1 and 2"
demo/make-sample-tree.sh "$work/rootfs-1" 1
demo/make-sample-tree.sh "$work/rootfs-2" 2 "$work/rootfs-1"
du -sh "$work"/rootfs-*

export OSDEPLOY_REPO="$work/origin"
step "Origin: an archive repository, two commits on one branch"
run "$osd" init --mode archive
run "$osd" commit --branch stable/x86_64 --version 1 --subject "Release 1" "$work/rootfs-1"
run "$osd" commit --branch stable/x86_64 --version 2 --subject "Release 2: libdemo security fix" "$work/rootfs-2"
run du -sh "$work/origin/packs"

step "History, one commit, a listing, a file"
run "$osd" log stable/x86_64
v1=$("$osd" log --json stable/x86_64 | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p' | tail -1)
run "$osd" ls stable/x86_64 /usr/bin
run "$osd" cat stable/x86_64 /etc/os-release

step "What changed from release 1 to release 2 (commit prefix ${v1:0:8} = release 1)"
run "$osd" diff "${v1:0:8}" stable/x86_64

step "What a node running release 1 must download for release 2"
run "$osd" delta "${v1:0:8}" stable/x86_64

step "Integrity: re-hash every object"
run "$osd" fsck

step "Check release 2 out of the archive repository"
run "$osd" checkout stable/x86_64 "$work/checkout-archive"
run rsync -aHAXn --checksum --itemize-changes --delete "$work/rootfs-2/" "$work/checkout-archive/"
echo "(rsync listed no differences: content and metadata identical)"

if [ "$(id -u)" = 0 ] && command -v mkfs.btrfs >/dev/null; then
  step "Node: bare repository on a loop-mounted btrfs, reflink checkout"
  truncate -s 1G "$work/node.img"
  loopdev=$(losetup -f --show "$work/node.img")
  mkfs.btrfs -q "$loopdev"
  mnt="$work/node"; mkdir -p "$mnt"; mount "$loopdev" "$mnt"
  export OSDEPLOY_REPO="$mnt/osdeploy/repo"
  run "$osd" init --mode bare
  run "$osd" commit --branch stable/x86_64 --version 2 "$work/rootfs-2"
  run "$osd" checkout stable/x86_64 "$mnt/slot-b"
  run btrfs filesystem du -s "$mnt/slot-b" "$mnt/osdeploy/repo/objects"
else
  step "Node: bare repository in a temp directory (not root: no loop-mounted btrfs, so copies)"
  export OSDEPLOY_REPO="$work/node-repo"
  run "$osd" init --mode bare
  run "$osd" commit --branch stable/x86_64 --version 2 "$work/rootfs-2"
  run "$osd" checkout stable/x86_64 "$work/slot-b"
fi
step "Done"
