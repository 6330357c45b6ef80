#!/usr/bin/env bash
# Installs the Debian packages osdeploy's tests and demo use (idempotent; mmdebstrap builds the
# real OS pair of tests/real_rootfs.rs, git runs the self-containment guard, cpio builds the
# initramfs images of tests/deltas.rs, QEMU, OVMF, mtools, sfdisk and the EFI boot loaders the
# VM boots of tests/vm_boot.rs). Needs root or sudo.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
pkgs=(btrfs-progs xfsprogs e2fsprogs util-linux rsync attr libcap2-bin mmdebstrap openssl grub2-common nginx-light libubootenv-tool systemd git cpio \
  qemu-system-x86 ovmf mtools dosfstools fdisk binutils grub-efi-amd64-bin systemd-boot-efi etcd-server etcd-client protobuf-compiler libprotobuf-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
