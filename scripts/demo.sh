#!/usr/bin/env bash
# osdeploy end-to-end demo on the embedded sample tree (demo/make-sample-tree.sh):
# an origin commits release 1 into an archive repository and serves it over HTTP; a node (a bare
# repository on a loop-mounted btrfs when run as root) pulls it; the origin commits release 2;
# we inspect history, diff and the planned delta; the node pulls the update — only what changed,
# in a handful of requests — and checks it out with reflinks.
# The story grows with deployments (switch, status, boot-check, mark-good, rollback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -q -p osdeploy
osd="$PWD/target/release/osdeploy"
work=$(mktemp -d /tmp/osdeploy-demo.XXXXXX)
mnt=""; loopdev=""; server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
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

step "Origin: an archive repository with release 1, served over HTTP"
origin="$work/origin"
run "$osd" --repo "$origin" init --mode archive
run "$osd" --repo "$origin" commit --branch stable/x86_64 --version 1 --subject "Release 1" "$work/rootfs-1"
"$osd" serve "$origin" --listen 127.0.0.1:0 2> "$work/serve.log" &
server=$!
for _ in $(seq 50); do grep -q 'http://' "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log")
echo "origin served at $url"

if [ "$(id -u)" = 0 ] && command -v mkfs.btrfs >/dev/null; then
  step "Node: a bare repository on a loop-mounted btrfs"
  truncate -s 1G "$work/node.img"
  loopdev=$(losetup -f --show "$work/node.img")
  mkfs.btrfs -q "$loopdev" > /dev/null
  mnt="$work/node"; mkdir -p "$mnt"; mount "$loopdev" "$mnt"
  node="$mnt/osdeploy/repo"
else
  step "Node: a bare repository in a temp directory (not root: no loop-mounted btrfs, so copies)"
  mnt=""; node="$work/node/osdeploy/repo"
fi
run "$osd" --repo "$node" init --mode bare
run "$osd" --repo "$node" remote add origin "$url" --insecure
run "$osd" --repo "$node" pull origin stable/x86_64

step "Origin: release 2 — history, diff, and what a node must download"
run "$osd" --repo "$origin" commit --branch stable/x86_64 --version 2 --subject "Release 2: libdemo security fix" "$work/rootfs-2"
run "$osd" --repo "$origin" log stable/x86_64
v1=$("$osd" --repo "$origin" log --json stable/x86_64 | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p' | tail -1)
run "$osd" --repo "$origin" diff "${v1:0:8}" stable/x86_64
run "$osd" --repo "$origin" delta "${v1:0:8}" stable/x86_64
run "$osd" --repo "$origin" ls stable/x86_64 /usr/bin
run "$osd" --repo "$origin" cat stable/x86_64 /etc/os-release

step "Node: pull the update (only what changed), check it out"
run "$osd" --repo "$node" pull origin stable/x86_64
run "$osd" --repo "$node" refs
slot="$(dirname "$(dirname "$node")")/slot-b"
run "$osd" --repo "$node" checkout origin/stable/x86_64 "$slot"
run rsync -aHAXn --checksum --itemize-changes --delete "$work/rootfs-2/" "$slot/"
echo "(rsync listed no differences: content and metadata identical)"
if [ -n "$mnt" ]; then run btrfs filesystem du -s "$slot" "$node/objects"; fi

step "Integrity: re-hash every object on both sides"
run "$osd" --repo "$origin" fsck
run "$osd" --repo "$node" fsck
step "Done"
