#!/usr/bin/env bash
# Every check osdeploy has: installs the system packages the tests need, then a self-containment
# guard, formatting, lints and all tests (unit tests; integration tests on loop-mounted
# btrfs/xfs/ext4 images; a real Debian rootfs round trip, and its update with a kernel update, the
# pair built by benches/harness/make-os-pair.sh), a short fuzzing run of every decoder, and a check
# that a build without debug assertions ignores crash points.
# Runs as root (loop devices, device nodes, ownership).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The run needs a few GB beside the sources (target/, the OS pair, the VM images): the free space
# is printed at the start and at the end, so that a full disk is recognised as one.
free_space() { df -h --output=avail,target . | tail -1 | awk -v when="$1" '{print "test.sh: " $1 " free on " $2 " " when}'; }
free_space "at the start"
scratch=$(mktemp -d)
vm_job=""
pair_job=""
finish() {
  for job in "$vm_job" "$pair_job"; do
    if [ -n "$job" ] && kill -0 "$job" 2> /dev/null; then kill -- -"$job" 2> /dev/null || true; fi
  done
  free_space "at the end"
  rm -rf "$scratch"
}
trap finish EXIT
# The real Debian OS pair of tests/real_rootfs.rs (a container host with a kernel update, the
# cloud kernel's; a few minutes, most of it downloads and dpkg) is built while the tests compile,
# in a process group of its own; the tests find it finished and keep it.
os_pair=${OSDEPLOY_OS_PAIR:-$PWD/target/os-pair}
export OSDEPLOY_OS_PAIR=$os_pair
set -m
benches/harness/make-os-pair.sh --variant cloud-kernel "$os_pair" > "$scratch/os-pair.log" 2>&1 &
pair_job=$!
set +m
# A clone must pass on its own: no tracked file may use a folder beside the repository (the
# pattern is built from pieces so that this line does not match itself).
outside="\.\./""shared"
if git rev-parse --is-inside-work-tree > /dev/null 2>&1 && git grep -n -e "$outside" -- . ; then
  echo "test.sh: the files above refer to a folder outside the repository" >&2
  exit 1
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
# The VM boots (the `vm_boot` suite of the integration tests) are emulated and take about 6
# minutes, most of it one busy core: they run beside the other tests and the fuzzing, in a process
# group of their own (set -m), from the package directory as cargo runs them; the other tests skip
# them by their module's name.
tests=$(cargo test --workspace --no-run --message-format=json | grep '"name":"integration"' |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[ -x "$tests" ] || { echo "test.sh: the integration tests' executable was not found" >&2; exit 1; }
# Listed into a file first: `grep -q` stops reading at its first match, and the test binary, still
# writing, fails with a broken pipe (pipefail makes that the script's failure).
"$tests" --list > "$scratch/tests.list"
grep -q '^vm_boot::.*: test$' "$scratch/tests.list" || { echo "test.sh: the integration tests list no VM test" >&2; exit 1; }
set -m
(cd deploy-cli && exec "$tests" vm_boot::) > "$scratch/vm_boot.log" 2>&1 &
vm_job=$!
set +m
pair_status=0
wait "$pair_job" || pair_status=$?
pair_job=""
[ "$pair_status" = 0 ] || { cat "$scratch/os-pair.log"; echo "test.sh: building the OS pair failed (exit $pair_status)" >&2; exit 1; }
grep '^make-os-pair: .* done in' "$scratch/os-pair.log" || grep '^make-os-pair: keeping' "$scratch/os-pair.log"
cargo test --workspace -- --skip vm_boot::
# Every decoder fuzzed for a short while from the committed corpora (tests/fuzz, libFuzzer).
FUZZ_SECONDS=${FUZZ_SECONDS:-45} scripts/fuzz.sh
vm_status=0
wait "$vm_job" || vm_status=$?
vm_job=""
echo "test.sh: the VM tests (tests/vm_boot.rs), run beside the others:"
cat "$scratch/vm_boot.log"
[ "$vm_status" = 0 ] || { echo "test.sh: the VM tests failed (exit $vm_status)" >&2; exit 1; }
# Crash points act in debug builds only (the tests'): a build without debug assertions, as the
# release build is, must ignore the variable (profile no-assertions: the release's flags, unoptimised).
cargo build --profile no-assertions -q -p osdeploy
mkdir "$scratch/tree"; echo release > "$scratch/tree/file"
target/no-assertions/osdeploy --repo "$scratch/repo" init --mode archive > /dev/null
OSDEPLOY_CRASH_AT=commit:before-ref target/no-assertions/osdeploy --repo "$scratch/repo" commit -b main "$scratch/tree" > /dev/null
target/no-assertions/osdeploy --repo "$scratch/repo" refs > "$scratch/refs"
grep -q ' main$' "$scratch/refs" ||
  { echo "test.sh: a build without debug assertions obeyed OSDEPLOY_CRASH_AT" >&2; exit 1; }
echo "test.sh: all checks passed"
