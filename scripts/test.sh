#!/usr/bin/env bash
# Every check osdeploy has: installs the system packages the tests need, then formatting, lints
# and all tests (unit tests; integration tests on loop-mounted btrfs/xfs/ext4 images; a real
# Debian rootfs round trip). Runs as root (loop devices, device nodes, ownership).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
