#!/usr/bin/env bash
# Builds the demo's sample OS tree: make-sample-tree.sh OUT 1 (a small "release 1") or
# make-sample-tree.sh OUT 2 BASE (release 2: BASE with an updated library, a changed config,
# a new and a removed file). Content is deterministic so the demo's figures repeat.
set -euo pipefail
out=${1:?usage: make-sample-tree.sh OUT VERSION [BASE]}; version=${2:?version}
rm -rf "$out"
if [ "$version" = 1 ]; then
  mkdir -p "$out"/{etc/ssh,usr/bin,usr/lib,usr/share/doc/demo,var/lib,tmp}
  # reproducible incompressible bytes: AES-CTR keystream of a fixed passphrase
  gen() { head -c $(($2 << 20)) /dev/zero | openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$1"; }
  gen libdemo 24 > "$out/usr/lib/libdemo.so.1"
  gen demod 6 > "$out/usr/bin/demod"
  chmod 755 "$out/usr/bin/demod"
  for i in $(seq 1 200); do printf 'Documentation page %d of the sample OS.\n' "$i" > "$out/usr/share/doc/demo/page$i.txt"; done
  ln -s demod "$out/usr/bin/demo"
  ln "$out/usr/bin/demod" "$out/usr/bin/demod-compat"
  printf 'Port 22\nPermitRootLogin no\n' > "$out/etc/ssh/sshd_config"
  chmod 1777 "$out/tmp"
else
  base=${3:?release 2 needs BASE}
  cp -a "$base" "$out"
  # a security update patches 256 KiB in the middle of the library
  { yes patched || true; } | head -c 262144 | dd of="$out/usr/lib/libdemo.so.1" bs=1M seek=10 conv=notrunc status=none oflag=seek_bytes
  printf 'Port 22\nPermitRootLogin no\nKexAlgorithms sntrup761x25519-sha512\n' > "$out/etc/ssh/sshd_config"
  printf 'new in release 2\n' > "$out/usr/share/doc/demo/NEWS"
  rm "$out/usr/share/doc/demo/page200.txt"
fi
printf 'NAME="osdeploy sample OS"\nVERSION_ID=%s\n' "$version" > "$out/etc/os-release"
touch -h -d "2026-01-0$version 00:00:00" "$out" "$out"/etc "$out"/etc/os-release
