#!/usr/bin/env bash
# Fuzzes every decoder that reads bytes from a server or a disk (tests/fuzz/fuzz_targets/) for
# FUZZ_SECONDS each (default 60), two at a time, starting from the committed seed corpora. New
# inputs go to a scratch directory; a crash, a panic, an allocation past 2 GiB or a slow input fails
# the run, leaves the input in tests/fuzz/artifacts/TARGET/ and prints how to replay it. libFuzzer
# without a sanitizer (stable Rust): osdeploy has no unsafe code, so what is hunted is panics,
# overflows (debug assertions on), unbounded allocations and hangs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
command -v cargo-fuzz > /dev/null || cargo install --quiet --locked cargo-fuzz --version 0.13.2
fuzz=(--fuzz-dir tests/fuzz --sanitizer none --release --debug-assertions)
cargo fuzz build "${fuzz[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run_target() {
  local target=$1
  mkdir -p "$scratch/$target" "tests/fuzz/corpus/$target"
  if cargo fuzz run "${fuzz[@]}" "$target" "$scratch/$target" "tests/fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 > "$scratch/$target.log" 2>&1; then
    echo "fuzz: $target: $(grep -E '^stat::number_of_executed_units' "$scratch/$target.log" | awk '{print $2}') runs, no crash"
  else
    tail -40 "$scratch/$target.log"
    echo "fuzz: $target FAILED; replay with: cargo fuzz run ${fuzz[*]} $target tests/fuzz/artifacts/$target/<file>" >&2
    return 1
  fi
}
status=0
targets=$(cargo fuzz list --fuzz-dir tests/fuzz)
set -- $targets
while [ $# -gt 0 ]; do
  run_target "$1" & first=$!
  second=""
  if [ $# -gt 1 ]; then run_target "$2" & second=$!; fi
  wait "$first" || status=1
  [ -z "$second" ] || wait "$second" || status=1
  shift $(( $# > 1 ? 2 : 1 ))
done
exit $status
