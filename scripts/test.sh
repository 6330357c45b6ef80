#!/usr/bin/env bash
# Every check osdeploy has: installs the system packages the tests need, then a self-containment
# guard, formatting, lints and all tests (unit tests; integration tests on loop-mounted
# btrfs/xfs/ext4 images; a real Debian rootfs round trip, its pair built by
# benches/harness/make-os-pair.sh). Runs as root (loop devices, device nodes, ownership).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# A clone must pass on its own: no tracked file may use a folder beside the repository (the
# pattern is built from pieces so that this line does not match itself).
outside="\.\./""shared"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1 && git grep -n -e "$outside" -- . ; then
  echo "test.sh: the files above refer to a folder outside the repository" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
