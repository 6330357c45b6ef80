#!/usr/bin/env bash
# osdeploy end-to-end demo on the embedded sample tree (demo/make-sample-tree.sh):
# an origin commits and signs release 1 in an archive repository and serves it over HTTP; a node
# (a sysroot on a loop-mounted btrfs when run as root, a temp directory otherwise) pulls it,
# switches to it with reflinks, boots it (simulated) and marks it good after its health check;
# the origin publishes release 2 — we look at history, diff and the planned delta — and the node
# pulls only what changed, switches, boots it, but a failing health check keeps it from becoming
# the default: after its trial boots run out, the node falls back to release 1 by itself.
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

step "Origin: an archive repository with release 1, signed, served over HTTP"
origin="$work/origin"
run "$osd" --repo "$origin" init --mode archive
run "$osd" --repo "$origin" commit --branch stable/x86_64 --version 1 --subject "Release 1" "$work/rootfs-1"
run "$osd" key generate "$work/release.key"
run "$osd" --repo "$origin" sign --key "$work/release.key"
"$osd" serve "$origin" --listen 127.0.0.1:0 2> "$work/serve.log" &
server=$!
for _ in $(seq 50); do grep -q 'http://' "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.log")
echo "origin served at $url"

if [ "$(id -u)" = 0 ] && command -v mkfs.btrfs >/dev/null; then
  step "Node: a sysroot on a loop-mounted btrfs"
  truncate -s 1G "$work/node.img"
  loopdev=$(losetup -f --show "$work/node.img")
  mkfs.btrfs -q "$loopdev" > /dev/null
  mnt="$work/node"; mkdir -p "$mnt"; mount "$loopdev" "$mnt"
  export OSDEPLOY_SYSROOT="$mnt"
else
  step "Node: a sysroot in a temp directory (not root: no loop-mounted btrfs, so copies)"
  export OSDEPLOY_SYSROOT="$work/node"; mkdir -p "$OSDEPLOY_SYSROOT"
fi
export OSDEPLOY_CONFIG_DIR="$work/etc-osdeploy"
mkdir -p "$OSDEPLOY_CONFIG_DIR/health.d"
printf '#!/bin/sh\necho "health: containerd answers"; exit 0\n' > "$OSDEPLOY_CONFIG_DIR/health.d/10-runtime"
chmod +x "$OSDEPLOY_CONFIG_DIR/health.d/10-runtime"
mkdir -p "$OSDEPLOY_SYSROOT/var/lib/containerd"
echo "a cached container image" > "$OSDEPLOY_SYSROOT/var/lib/containerd/image.tar"
run "$osd" init-sysroot --bootloader file
run "$osd" remote add origin "$url" --key "$work/release.pub"
run "$osd" pull origin stable/x86_64
run "$osd" switch
run "$osd" boot-check
run "$osd" mark-good
run "$osd" status

step "Origin: release 2 — history, diff, and what a node must download"
run "$osd" --repo "$origin" commit --branch stable/x86_64 --version 2 --subject "Release 2: libdemo security fix" "$work/rootfs-2"
run "$osd" --repo "$origin" delta generate --to stable/x86_64
run "$osd" --repo "$origin" sign --key "$work/release.key"
run "$osd" --repo "$origin" log stable/x86_64
v1=$("$osd" --repo "$origin" log --json stable/x86_64 | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p' | tail -1)
run "$osd" --repo "$origin" diff "${v1:0:8}" stable/x86_64
run "$osd" --repo "$origin" delta "${v1:0:8}" stable/x86_64
run "$osd" --repo "$origin" cat stable/x86_64 /etc/os-release

step "Node: ask the origin over HTTP what the update costs (the node's own pull plan is the same), pull it (only what changed) and switch (plan first); the new release fails its health check"
run "$osd" delta --remote origin "$v1" stable/x86_64
run "$osd" pull --dry-run
run "$osd" pull
run "$osd" switch --dry-run
run "$osd" switch
printf '#!/bin/sh\necho "health: containerd does not answer"; exit 1\n' > "$OSDEPLOY_CONFIG_DIR/health.d/10-runtime"
run "$osd" boot-check
run "$osd" mark-good || echo "(mark-good refused: release 2 stays on trial, release 1 stays the default)"
for _ in 1 2 3; do run "$osd" boot-check; done
run "$osd" status
run cat "$OSDEPLOY_SYSROOT/var/lib/containerd/image.tar"
if [ -n "$mnt" ]; then run btrfs filesystem du -s "$mnt/osdeploy/slots/a" "$mnt/osdeploy/slots/b" "$mnt/osdeploy/repo/objects"; fi

step "Integrity: re-hash every object on both sides"
run "$osd" --repo "$origin" fsck
run "$osd" fsck
step "Done"
