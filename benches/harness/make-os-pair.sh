#!/usr/bin/env bash
# Builds a real Debian 12 OS update pair with mmdebstrap: two plain directory trees a node would
# move between. Used by tests/real_rootfs.rs, the benchmark harness and docs/benchmarks.md.
#
# Usage (root, Debian with network access to the Debian mirrors):
#   benches/harness/make-os-pair.sh [--variant base|kernel|cloud-kernel] OUT
#
#   --variant base    (default) a container host: minbase + systemd, udev, iproute2, openssh-server,
#                     ca-certificates, containerd.
#   --variant kernel  the same plus linux-image-amd64 and initramfs-tools, so /boot holds a vmlinuz
#                     and a real initrd: OLD has bookworm's kernel, NEW the one from
#                     bookworm-security (a kernel update: modules dir, vmlinuz-*, initrd.img-*,
#                     config-* renamed when the ABI changes). Fails if both end up with one kernel.
#   --variant cloud-kernel  the same with linux-image-cloud-amd64: the same kernel update at a
#                     quarter of the size (fewer modules), for CI's round trip (tests/real_rootfs.rs).
#
# OLD = suite bookworm only (the point release on the mirror today); NEW = bookworm +
# bookworm-updates + bookworm-security (a monthly security update). Writes:
#   OUT/old, OUT/new             the trees
#   OUT/{old,new}.pkgs           dpkg-query listing: package <TAB> version <TAB> architecture
#   OUT/pkgs.diff                diff of the two listings (changed packages are the '>' lines)
#   OUT/{old,new}.release        Suite, Version and Date of each apt Release file the tree used
#   OUT/{old,new}.clamp          the mtime clamp (epoch seconds) applied to the tree
#   OUT/{old,new}.done           marker of a finished tree: the recipe and its sha256
#   OUT/kernel.txt               (kernel variants) kernel package versions and /boot of both trees
# A finished tree whose marker records the current recipe (script version, variant, suites,
# sources, package list) is kept; a missing, unfinished or differently built tree is rebuilt.
# FORCE=1 rebuilds both. DEBIAN_MIRROR and SECURITY_MIRROR override the mirrors.
#
# Reproducibility: what differs from build to build but is no OS content (apt caches and lists,
# logs, tmp, ssh host keys, ldconfig aux-cache, dpkg/debconf backups, machine ids, random seed) is
# removed, and every mtime newer than the newest `Date:` of the apt Release files used is clamped
# to that date — files shipped in .debs keep their own mtimes, files made at install time get the
# mirror's date. The package set is whatever the mirror serves at build time: the .pkgs files
# record it.
set -euo pipefail

SCRIPT_VERSION=2   # bump when the build or the scrub changes: finished trees are rebuilt
usage() { echo "usage: $0 [--variant base|kernel|cloud-kernel] OUT" >&2; exit 2; }
die() { echo "make-os-pair: $*" >&2; exit 1; }

variant=base
while [ $# -gt 0 ]; do
  case $1 in
    --variant) [ $# -ge 2 ] || usage; variant=$2; shift 2 ;;
    --variant=*) variant=${1#--variant=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || usage
out=$1

include=systemd,systemd-sysv,udev,iproute2,openssh-server,ca-certificates,containerd
case $variant in
  base) ;;
  kernel) include=$include,linux-image-amd64,initramfs-tools ;;
  cloud-kernel) include=$include,linux-image-cloud-amd64,initramfs-tools ;;
  *) die "unknown variant '$variant' (base, kernel or cloud-kernel)" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root, device nodes, ownership)"
if ! command -v mmdebstrap > /dev/null; then
  echo "make-os-pair: installing mmdebstrap with apt-get" >&2
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap; }; then
    die "mmdebstrap is missing and could not be installed (apt-get install mmdebstrap)"
  fi
fi

deb=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
sec=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
old_sources=("deb $deb bookworm main")
new_sources=("deb $deb bookworm main" "deb $deb bookworm-updates main" "deb $sec bookworm-security main")
# A fallback for mmdebstrap and the maintainer scripts; the clamp itself comes from the mirror.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}

mkdir -p "$out"
out=$(realpath "$out")

recipe() {  # recipe NAME SOURCE...: the text whose hash decides whether a finished tree is kept
  local name=$1; shift
  printf 'make-os-pair %s\nvariant %s\ntree %s\nsuite bookworm\nmmdebstrap --variant=minbase --mode=root\ninclude %s\n' \
    "$SCRIPT_VERSION" "$variant" "$name" "$include"
  printf 'source %s\n' "$@"
}

# scrub TREE: remove build-to-build noise, then clamp mtimes to the newest Release date
scrub() {
  local t=$1 clamp rel
  clamp=0
  : > "$t.release"
  for rel in "$t"/var/lib/apt/lists/*Release; do
    [ -e "$rel" ] || continue
    local d s v
    d=$(sed -n 's/^Date: //p' "$rel" | head -1)
    s=$(sed -n 's/^Suite: //p' "$rel" | head -1)
    v=$(sed -n 's/^Version: //p' "$rel" | head -1)
    printf '%s\t%s\t%s\n' "$s" "${v:--}" "$d" >> "$t.release"
    [ -n "$d" ] || continue
    d=$(date -d "$d" +%s)
    [ "$d" -gt "$clamp" ] && clamp=$d
  done
  if [ "$clamp" = 0 ]; then
    echo "make-os-pair: no apt Release Date found in $t; clamping to SOURCE_DATE_EPOCH" >&2
    clamp=$SOURCE_DATE_EPOCH
  fi
  echo "$clamp" > "$t.clamp"
  rm -rf "$t"/var/cache/apt/* "$t"/var/lib/apt/lists/* "$t"/tmp/* "$t"/var/tmp/*
  find "$t/var/log" -type f -delete
  rm -f "$t"/etc/ssh/ssh_host_*_key "$t"/etc/ssh/ssh_host_*_key.pub "$t/var/cache/ldconfig/aux-cache" \
    "$t"/var/lib/dpkg/*-old "$t"/var/cache/debconf/*-old "$t/var/lib/dbus/machine-id" \
    "$t/var/lib/systemd/random-seed" "$t/etc/initramfs-tools/.last-update" 2>/dev/null || true
  : > "$t/etc/machine-id"   # empty: systemd fills it at first boot
  find "$t" -xdev -newermt "@$clamp" -print0 | xargs -0r touch -h -d "@$clamp"
}

build() {  # build NAME SOURCE...
  local name=$1; shift
  local t=$out/$name marker=$out/$name.done text hash
  text=$(recipe "$name" "$@")
  hash=$(printf '%s\n' "$text" | sha256sum | cut -d' ' -f1)
  if [ "${FORCE:-0}" != 1 ] && [ -d "$t" ] && [ -f "$marker" ] && grep -qx "recipe-sha256 $hash" "$marker"; then
    echo "make-os-pair: keeping $t (recipe $hash)"
    return
  fi
  [ -f "$marker" ] && echo "make-os-pair: recipe of $t changed: rebuilding"
  rm -f "$marker"
  rm -rf "$t"
  local start=$SECONDS
  echo "make-os-pair: building $t ($variant) from: $*"
  mmdebstrap --variant=minbase --include="$include" --mode=root --format=directory \
    --aptopt='Acquire::Retries "3"' --skip=cleanup/apt/lists bookworm "$t" "$@"
  scrub "$t"
  dpkg-query --admindir="$t/var/lib/dpkg" -W -f='${Package}\t${Version}\t${Architecture}\n' | sort > "$t.pkgs"
  [ -s "$t.pkgs" ] || die "no packages listed for $t"
  { printf '%s\n' "$text"; echo "recipe-sha256 $hash"; echo "clamp $(cat "$t.clamp")"
    echo "built $(date -u +%FT%TZ) in $((SECONDS - start)) s"; } > "$marker.tmp"
  mv "$marker.tmp" "$marker"
  echo "make-os-pair: $t done in $((SECONDS - start)) s ($(du -sh "$t" | cut -f1), $(wc -l < "$t.pkgs") packages)"
}

kernel_of() {  # kernel_of TREE: "<linux-image package> <version>" from its listing
  awk -F'\t' '$1 ~ /^linux-image-[0-9]/ {print $1, $2}' "$1.pkgs"
}

build old "${old_sources[@]}"
build new "${new_sources[@]}"
diff "$out/old.pkgs" "$out/new.pkgs" > "$out/pkgs.diff" || true
echo "make-os-pair: $(grep -c '^>' "$out/pkgs.diff" || true) packages differ between old and new (see $out/pkgs.diff)"

if [ "$variant" != base ]; then
  ko=$(kernel_of "$out/old"); kn=$(kernel_of "$out/new")
  [ -n "$ko" ] || die "no linux-image package in $out/old.pkgs"
  [ -n "$kn" ] || die "no linux-image package in $out/new.pkgs"
  for x in old new; do
    ls "$out/$x"/boot/vmlinuz-* > /dev/null 2>&1 || die "$out/$x/boot has no vmlinuz-*"
    for i in "$out/$x"/boot/initrd.img-*; do
      [ -s "$i" ] || die "$out/$x/boot has no initrd.img-* (initramfs-tools did not run?)"
    done
  done
  {
    echo "old: $ko"; echo "new: $kn"
    for x in old new; do echo "$x /boot:"; (cd "$out/$x/boot" && find . -maxdepth 1 -type f -printf '  %P %s\n' | sort); done
    for x in old new; do echo "$x modules: $(find "$out/$x/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f ')"; done
  } > "$out/kernel.txt"
  cat "$out/kernel.txt"
  [ "$ko" != "$kn" ] || die "old and new have the same kernel ($ko): no kernel update on the mirror today? (see $out/pkgs.diff)"
fi
