#!/usr/bin/env bash
# Installs the Debian packages osdeploy's tests and demo use (idempotent; mmdebstrap builds the
# real OS pair of tests/real_rootfs.rs, git runs the self-containment guard, cpio builds the
# initramfs images of tests/deltas.rs, QEMU, OVMF, mtools, sfdisk and the EFI boot loaders the
# VM boots of tests/vm_boot.rs, QEMU, objcopy and cpio the power-cut guest of tests/power_cuts.rs
# (whose kernel and busybox come from `apt-get download`), etcd for tests/fleet.rs, g++ builds libFuzzer for scripts/fuzz.sh,
# strace records tests/durability.rs), and kubernetes-validate from PyPI (the Kubernetes API
# schemas the DaemonSet manifest is checked against). Needs root or sudo.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
pkgs=(btrfs-progs xfsprogs e2fsprogs util-linux rsync attr libcap2-bin mmdebstrap openssl grub2-common nginx-light libubootenv-tool systemd git cpio \
  qemu-system-x86 ovmf mtools dosfstools fdisk binutils grub-efi-amd64-bin systemd-boot-efi etcd-server etcd-client protobuf-compiler libprotobuf-dev python3 python3-venv \
  g++ strace)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v kubernetes-validate >/dev/null; then
  venv=/usr/local/lib/osdeploy-test-venv
  $SUDO python3 -m venv "$venv"
  $SUDO "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
  $SUDO ln -sf "$venv/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
fi
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
