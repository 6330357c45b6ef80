#!/usr/bin/env bash
# Builds the Debian package of osdeploy from a built binary: the binary, the boot-time systemd
# units (enabled on installation) and the update agent's unit (not enabled), the initramfs-tools hook and local-bottom
# script (the initramfs is rebuilt through initramfs-tools' trigger), the dracut module, man pages and shell
# completions that the binary generates from its own command line, the deployment and fleet guides, and examples
# (the agent's drain hooks, its Kubernetes DaemonSet). Needs dpkg-deb and objdump (Debian: dpkg, binutils).
#
#   deploy-cli/dist/build-deb.sh BINARY OUTDIR     writes OUTDIR/osdeploy_VERSION_ARCH.deb
set -euo pipefail
die() { echo "build-deb: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 BINARY OUTDIR"
[ -x "$1" ] || die "$1 is not an executable"
bin=$(realpath "$1")
out=$(realpath -m "$2")
top=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -1)
[ -n "$version" ] || die "no version in $top/Cargo.toml"
arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binary uses is the libc6 it needs.
glibc=$(objdump -T "$bin" | sed -n 's/.*GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -V | tail -1)
[ -n "$glibc" ] || die "cannot tell which glibc $bin needs"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/osdeploy
install -D -m755 "$bin" "$pkg/usr/bin/osdeploy"
for unit in osdeploy-boot-check.service osdeploy-mark-good.service osdeploy-agent.service; do
  install -D -m644 "$top/systemd/$unit" "$pkg/usr/lib/systemd/system/$unit"
done
install -D -m755 "$top/deploy-cli/dist/initramfs-tools/hooks/osdeploy" "$pkg/usr/share/initramfs-tools/hooks/osdeploy"
install -D -m755 "$top/deploy-cli/dist/initramfs-tools/scripts/local-bottom/osdeploy" \
  "$pkg/usr/share/initramfs-tools/scripts/local-bottom/osdeploy"
for file in module-setup.sh osdeploy-prepare-root.sh osdeploy-prepare-root.service; do
  mode=755; [ "${file%.service}" = "$file" ] || mode=644
  install -D -m$mode "$top/deploy-cli/dist/dracut/90osdeploy/$file" "$pkg/usr/lib/dracut/modules.d/90osdeploy/$file"
done
mkdir -p "$pkg/usr/share/man/man1"
"$bin" man-pages "$pkg/usr/share/man/man1"
gzip -9n "$pkg"/usr/share/man/man1/*.1
install -d "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
  "$pkg/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$pkg/usr/share/bash-completion/completions/osdeploy"
"$bin" completions zsh > "$pkg/usr/share/zsh/vendor-completions/_osdeploy"
"$bin" completions fish > "$pkg/usr/share/fish/vendor_completions.d/osdeploy.fish"
install -D -m644 "$top/docs/deployments.md" "$pkg/usr/share/doc/osdeploy/deployments.md"
install -D -m644 "$top/docs/fleet.md" "$pkg/usr/share/doc/osdeploy/fleet.md"
# Examples, not active until copied: drain hooks for /etc/osdeploy/{drain,undrain}.d/ and the agent as a DaemonSet.
for hook in drain.d/50-kubectl-drain undrain.d/50-kubectl-uncordon; do
  install -D -m755 "$top/deploy-cli/dist/hooks/$hook" "$pkg/usr/share/doc/osdeploy/examples/hooks/$hook"
done
install -D -m644 "$top/deploy-cli/dist/kubernetes/osdeploy-agent.yaml" \
  "$pkg/usr/share/doc/osdeploy/examples/kubernetes/osdeploy-agent.yaml"
cat > "$pkg/usr/share/doc/osdeploy/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: osdeploy

Files: *
Copyright: the osdeploy developers
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
install -d -m755 "$pkg/etc/osdeploy/health.d"

mkdir -p "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: osdeploy
Version: $version
Architecture: $arch
Maintainer: osdeploy developers <osdeploy@example.invalid>
Depends: libc6 (>= $glibc)
Recommends: initramfs-tools | dracut-core
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Description: deliver immutable OS trees to fleets of hosts
 osdeploy commits OS trees into a deduplicated, content-addressed repository,
 pulls only the chunks (or per-file deltas) a node lacks, deploys a release
 into the standby slot with reflinks, boots it once on trial and keeps it only
 when its health checks pass; otherwise the bootloader falls back by itself.
 This package holds the binary, the boot-time systemd units, the update agent's
 unit, the initramfs-tools hook and dracut module that make a slot the root
 filesystem, man pages and completions.
CONTROL
# initramfs-tools rebuilds the initramfs once, whatever else is installed in the same run.
echo "activate-noawait update-initramfs" > "$pkg/DEBIAN/triggers"
cat > "$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] && command -v systemctl > /dev/null; then
  systemctl enable osdeploy-boot-check.service osdeploy-mark-good.service
fi
POSTINST
cat > "$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ "$1" = remove ] && command -v systemctl > /dev/null; then
  systemctl disable osdeploy-boot-check.service osdeploy-mark-good.service osdeploy-agent.service
fi
PRERM
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm"
mkdir -p "$out"
deb=$out/osdeploy_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" > /dev/null
echo "$deb"
