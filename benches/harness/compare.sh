#!/usr/bin/env bash
# One command for the whole comparison of docs/benchmarks.md, osdeploy and its peers in one run:
#   1. cargo build --release -p osdeploy
#   2. the real OS pair (benches/harness/make-os-pair.sh; a finished pair is kept)
#   3. the peers (benches/harness/peers.sh: OSTree, casync, xdelta3, zstd, rsync, full image)
#   4. osdeploy pull, mirror and the reference (benches/harness/pull-vs-peers.sh, LEVELs)
#   5. commit / checkout / switch against OSTree and cp (benches/harness/store-vs-peers.sh)
#   6. the tables (benches/harness/table.py) and the update chart (benches/harness/chart.py)
# Usage (root): benches/harness/compare.sh WORK [LEVEL...]      (LEVEL: origin zstd levels, "3 19")
#   PAIR        the pair's directory (default: $OSDEPLOY_OS_PAIR, else target/os-pair)
#   VARIANT     make-os-pair.sh variant (base)
#   STORE_RUNS  runs of store-vs-peers.sh (3; 0 skips it)
# Writes WORK/peers/peers.tsv, WORK/pull/results.tsv, WORK/store/results.tsv (fresh each run),
# WORK/run.txt (date, commit, machine, tool versions), WORK/stages.tsv (seconds per stage) and
# WORK/table.md (printed too) and WORK/update.svg.
set -euo pipefail
die() { echo "compare: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 WORK [LEVEL...]"
[ "$(id -u)" = 0 ] || die "must run as root"
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
mkdir -p "$1"; W=$(realpath "$1"); shift
levels=${*:-3 19}
pair=${PAIR:-${OSDEPLOY_OS_PAIR:-$repo/target/os-pair}}
target=${CARGO_TARGET_DIR:-$repo/target}
export OSDEPLOY=$target/release/osdeploy
S=$W/stages.tsv; printf 'stage\tseconds\n' > "$S"
stage() {  # stage NAME CMD...: runs CMD, logs to WORK/NAME.log, records its duration
  local name=$1 start=$SECONDS; shift
  echo "=== compare: $name ($(date -u +%T))"
  if ! "$@" > "$W/$name.log" 2>&1; then tail -30 "$W/$name.log" >&2; die "$name failed (see $W/$name.log)"; fi
  printf '%s\t%s\n' "$name" $((SECONDS - start)) >> "$S"
  echo "    $((SECONDS - start)) s"
}
command -v python3 > /dev/null || die "python3 is needed for the table (apt-get install python3)"

stage build sh -c "cd '$repo' && cargo build --release -p osdeploy"
stage pair bash "$here/make-os-pair.sh" --variant "${VARIANT:-base}" "$pair"
rm -rf "$W/peers/peers.tsv" "$W/pull/results.tsv" "$W/store/results.tsv"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
  echo "pair: $pair ($(du -sh "$pair/new" | cut -f1) NEW, $(grep -c '^>' "$pair/pkgs.diff" || true) packages changed)"
  echo "levels: $levels; store runs: ${STORE_RUNS:-3}"
} > "$W/run.txt"
stage peers bash "$here/peers.sh" "$pair" "$W/peers"
{
  echo "versions: osdeploy $("$OSDEPLOY" --version 2>/dev/null | head -1 || echo '?')"
  for p in ostree casync xdelta3 zstd rsync nginx-light; do echo "  $p $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo '?')"; done
} >> "$W/run.txt"
# shellcheck disable=SC2086  # LEVELs are words
stage pull bash "$here/pull-vs-peers.sh" "$pair" "$W/pull" $levels
if [ "${STORE_RUNS:-3}" != 0 ]; then
  stage store bash "$here/store-vs-peers.sh" "$pair/new" "$W/store" "${STORE_RUNS:-3}"
fi
python3 "$here/table.py" "$W" > "$W/table.md"
python3 "$here/chart.py" "$W" "$(basename "$pair"): update OLD → NEW, bytes on the wire" > "$W/update.svg"
cat "$W/table.md"
echo
column -t "$S"
