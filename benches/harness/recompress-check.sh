#!/usr/bin/env bash
# Whether a delta of the plain text would pay for xz and zstd content, measured on a kernel pair
# of make-os-pair.sh (--variant kernel): the figures of docs/deltas.md ("xz and zstd content").
# Usage: benches/harness/recompress-check.sh PAIR
#   xz:   the new vmlinuz's xz payload is decompressed and compressed again with the system's xz
#         and the kernel's options (scripts/xz_wrap.sh of Linux 6.1 on x86); prints whether that is
#         exact, its CPU time, and the size of a delta of the plain texts (zstd -19 --long
#         --patch-from) against the payload's.
#   zstd: 12 MB of the new initramfs's plain text compressed by the system's zstd program at
#         levels 3, 9, 19 and 1 and 3 with -T0; prints whether the zstd library osdeploy links
#         rebuilds each (target/release/zstd-exact, built here).
# Needs xz-utils, zstd, gzip, python3 and cargo.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PAIR" >&2; exit 2; }
pair=$(realpath "$1")
cd "$(dirname "$0")/../.."
cargo build -q --release -p osdeploy-benches --bin zstd-exact
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
# payload TREE OUT: the xz stream inside TREE's vmlinuz, decompressed into OUT.plain (and OUT.xz)
payload() {
  python3 - "$(ls "$1"/boot/vmlinuz-*)" "$2.xz" << 'PY'
import sys
data = open(sys.argv[1], 'rb').read()
at = data.find(b'\xfd7zXZ\x00')
if at < 0:
    sys.exit(f'{sys.argv[1]}: no xz payload')
open(sys.argv[2], 'wb').write(data[at:])
PY
  xz -dc --single-stream < "$2.xz" > "$2.plain" 2> /dev/null || true
  [ -s "$2.plain" ] || { echo "no xz payload could be decompressed from $1/boot/vmlinuz-*" >&2; exit 1; }
}
payload "$pair/old" "$w/old"
payload "$pair/new" "$w/new"
start=$(date +%s.%N)
/usr/bin/time -f '%U %S' -o "$w/xz.time" xz --check=crc32 --x86 --lzma2=dict=32MiB -c "$w/new.plain" > "$w/again.xz"
read -r user sys < "$w/xz.time"
size=$(stat -c %s "$w/again.xz")
exact=no; cmp -s -n "$size" "$w/again.xz" "$w/new.xz" && exact=yes
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
echo "xz: payload plain text $(stat -c %s "$w/new.plain") bytes, compressed again: $size bytes, exact: $exact, CPU $(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.1f", u + s}') s (wall $wall s)"
zstd -q -19 --long=27 --patch-from="$w/old.plain" "$w/new.plain" -o "$w/plain.patch" 2> /dev/null
echo "xz: delta of the plain texts (zstd -19 --long --patch-from): $(stat -c %s "$w/plain.patch") bytes"
# gzip ends on a broken pipe once head has its bytes: the size is checked instead.
gzip -dc "$(ls "$pair"/new/boot/initrd.img-*)" 2> /dev/null | head -c 12000000 > "$w/cpio" || true
[ "$(stat -c %s "$w/cpio")" = 12000000 ] || { echo "the initramfs of $pair/new has less than 12 MB of plain text" >&2; exit 1; }
for options in "-3" "-9" "-19" "-1 -T0" "-3 -T0"; do
  # shellcheck disable=SC2086
  zstd -q -f $options "$w/cpio" -o "$w/cpio.zst"
  echo "zstd $options ($(zstd --version | sed 's/.*\(v[0-9.]*\).*/\1/')): $(target/release/zstd-exact "$w/cpio" "$w/cpio.zst")"
done
