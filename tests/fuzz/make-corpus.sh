#!/usr/bin/env bash
# Builds the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/) from real files: an
# archive repository holding two releases of a small tree, with delta objects of every codec and a
# signed summary, and the node files of sysroots with the GRUB and U-Boot backends. Run as root
# after `cargo build -p osdeploy`; the corpora are committed, so this runs only when formats change.
set -euo pipefail
cd "$(dirname "$0")/../.."
osd="$PWD/target/debug/osdeploy"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/v1/usr/lib" "$work/v1/etc" "$work/v1/boot"
seq 1 3000 | sed 's/^/line /' > "$work/v1/etc/services"
head -c 20000 /dev/urandom > "$work/v1/usr/lib/libsample.so"
seq 1 2000 | gzip -n > "$work/v1/usr/lib/changelog.gz"
echo "NAME=sample" > "$work/v1/etc/os-release"
cp -a "$work/v1" "$work/v2"
seq 1 3100 | sed 's/^/line /' > "$work/v2/etc/services"
{ head -c 10000 "$work/v1/usr/lib/libsample.so"; head -c 300 /dev/urandom; tail -c 9700 "$work/v1/usr/lib/libsample.so"; } \
  > "$work/v2/usr/lib/libsample.so"
seq 1 2100 | gzip -n > "$work/v2/usr/lib/changelog.gz"

"$osd" --repo "$work/repo" init --mode archive > /dev/null
"$osd" --repo "$work/repo" commit -b stable --version 1 "$work/v1" > /dev/null
"$osd" --repo "$work/repo" commit -b stable --version 2 --deltas 1 "$work/v2" > /dev/null
"$osd" --repo "$work/repo" commit -b base --version 1 "$work/v1" > /dev/null
"$osd" key generate "$work/key" > /dev/null
"$osd" --repo "$work/repo" sign --key "$work/key" > /dev/null

for bootloader in grub uboot; do
  "$osd" --sysroot "$work/node-$bootloader" init-sysroot --bootloader "$bootloader" > /dev/null
done
cat > "$work/config.toml" <<'TOML'
boot_tries = 3
health_check_timeout = 60
pull_timeout = 30
kernel_cmdline = "root=UUID=0d7c rw quiet"

[[data_partition]]
source = "LABEL=images"
target = "/var/lib/containerd"
fstype = "ext4"
options = "noatime"
TOML

# The pull target's remote: the repository as served (it signs it again at start).
rm -rf tests/fuzz/remote
cp -a "$work/repo" tests/fuzz/remote
rm -rf tests/fuzz/remote/tmp tests/fuzz/remote/lock tests/fuzz/remote/gc.lock tests/fuzz/remote/summary.sig \
  tests/fuzz/remote/signatures

rm -rf tests/fuzz/corpus
mkdir -p tests/fuzz/corpus/pull
for flags in 0 1 2 3; do printf "\\x0$flags" > "tests/fuzz/corpus/pull/plain-$flags"; done
# One edit of each served file: a byte overwritten at offset 100, or the file cut at 10 bytes
# (flags, file, operation, offset as 4 bytes little-endian, length, bytes).
for file in $(seq 0 15); do
  hex=$(printf '%02x' "$file")
  printf "\\x00\\x$hex\\x00\\x64\\x00\\x00\\x00\\x01\\xff" > "tests/fuzz/corpus/pull/flip-$file"
  printf "\\x01\\x$hex\\x01\\x0a\\x00\\x00\\x00\\x00" > "tests/fuzz/corpus/pull/cut-$file"
done
cargo run -q --manifest-path tests/fuzz/Cargo.toml --example seed_corpus -- tests/fuzz/corpus "$work/repo" \
  state="$work/node-grub/osdeploy/state" config="$work/config.toml" \
  grub="$work/node-grub/boot/grub/grubenv" uboot="$work/node-uboot/boot/uboot.env"
for target in tests/fuzz/corpus/*; do echo "$target: $(ls "$target" | wc -l) seeds"; done
