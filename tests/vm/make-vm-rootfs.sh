#!/usr/bin/env bash
# Builds the Debian 12 root filesystem that tests/vm_boot.rs boots in QEMU: minbase, systemd, udev
# and the cloud kernel (virtio drivers, small), with initramfs-tools (the image's initramfs) and
# dracut-core (which the test runs for the dracut variant). Root only; needs the Debian mirror
# (DEBIAN_MIRROR overrides it).
#
#   tests/vm/make-vm-rootfs.sh OUT
#
# Writes OUT/rootfs and OUT/rootfs.done (the recipe's sha256): a finished tree built from the same
# recipe is kept, anything else is rebuilt. osdeploy itself is not in it: the test installs the
# binary under test, the initramfs hook and the units, then rebuilds the initramfs.
set -euo pipefail

RECIPE_VERSION=2
die() { echo "make-vm-rootfs: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 OUT"
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root)"
command -v mmdebstrap > /dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"
out=$(realpath -m "$1")
mkdir -p "$out"
deb=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=systemd,systemd-sysv,udev,linux-image-cloud-amd64,initramfs-tools,dracut-core
recipe="make-vm-rootfs $RECIPE_VERSION
mmdebstrap --variant=minbase --mode=root bookworm
include $include
source deb $deb bookworm main"
hash=$(printf '%s\n' "$recipe" | sha256sum | cut -d' ' -f1)
if [ -d "$out/rootfs" ] && grep -qx "recipe-sha256 $hash" "$out/rootfs.done" 2> /dev/null; then
  echo "make-vm-rootfs: keeping $out/rootfs"
  exit 0
fi
rm -rf "$out/rootfs" "$out/rootfs.done"
start=$SECONDS
# MODULES=dep cannot see the VM's hardware from here: the initramfs carries the virtio, btrfs,
# ext4 and vfat drivers it boots with. No password, no getty: the guest reports on ttyS0.
mmdebstrap --variant=minbase --include="$include" --mode=root --format=directory \
  --aptopt='Acquire::Retries "3"' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" &&
    echo MODULES=list > "$1/etc/initramfs-tools/conf.d/osdeploy-vm" &&
    mkdir -p "$1/etc/initramfs-tools" &&
    printf "%s\n" virtio_pci virtio_blk btrfs ext4 vfat nls_cp437 nls_ascii > "$1/etc/initramfs-tools/modules"' \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  bookworm "$out/rootfs" "deb $deb bookworm main"
ls "$out"/rootfs/boot/vmlinuz-* > /dev/null 2>&1 || die "no kernel in $out/rootfs/boot"
{ printf '%s\n' "$recipe"; echo "recipe-sha256 $hash"; echo "built in $((SECONDS - start)) s"; } > "$out/rootfs.done"
echo "make-vm-rootfs: $out/rootfs done in $((SECONDS - start)) s ($(du -sh "$out/rootfs" | cut -f1))"
