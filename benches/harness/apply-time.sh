#!/usr/bin/env bash
# How long a node takes to apply an update, per-file deltas against chunks, for one or more builds
# of osdeploy measured in the same run: the A/B comparison behind a change to the apply path.
#
# Usage (root): benches/harness/apply-time.sh PAIR WORK RUNS OSDEPLOY...
#   PAIR      a pair from make-os-pair.sh (PAIR/old, PAIR/new)
#   OSDEPLOY  osdeploy binaries to compare (copy each build aside: target/ is rebuilt in place)
#   GENERATORS="BIN..." (environment, optional) builds that make one origin each, to compare the
#             deltas they generate; default: the first OSDEPLOY only
#   LOOP_DIRECT_IO=1 (environment, optional) the nodes' loop device writes with O_DIRECT
# Each generator makes an origin (an archive at zstd level 3 holding OLD, then NEW with
# `delta generate --to NEW`; commits dated by a fixed SOURCE_DATE_EPOCH, so every origin holds
# the same commits); the first binary makes a node holding OLD, on a fresh loop-mounted xfs
# (reflink=1) as in pull-vs-peers.sh; the origins are served by nginx on loopback. Each run then
# pulls NEW into a reflinked copy of that node with every binary from every origin in turn, with
# deltas and with `--no-deltas`, page cache dropped before each pull. Writes WORK/apply.tsv
# (binary — with `@origin N` when there are several —, case, wall s, user s, sys s, peak RSS KiB,
# bytes served, requests; user and sys are osdeploy's own process, not its deflate children) and
# prints each one's median wall time per case and the ratio deltas / chunks.
set -euo pipefail
die() { echo "apply-time: $*" >&2; exit 1; }
[ $# -ge 4 ] || die "usage: $0 PAIR WORK RUNS OSDEPLOY..."
[ "$(id -u)" = 0 ] || die "must run as root"
P=$(realpath "$1"); mkdir -p "$2"; W=$(realpath "$2"); runs=$3; shift 3
bins=(); for b in "$@"; do [ -x "$b" ] || die "$b is not executable"; bins+=("$(realpath "$b")"); done
PORT=${PORT:-18092}
# shellcheck source=benches/harness/nginx.sh
source "$(dirname "$0")/nginx.sh"
cleanup() {
  nginx_stop
  local dev; dev=$(findmnt -n -o SOURCE "$W/nodes" 2>/dev/null || true)
  umount "$W/nodes" 2>/dev/null || true
  case $dev in /dev/loop*) losetup -d "$dev" 2>/dev/null || true ;; esac
}
trap cleanup EXIT
mkdir -p "$W/nodes"
umount "$W/nodes" 2>/dev/null || true
rm -f "$W/nodes.img"; truncate -s 12G "$W/nodes.img"; mkfs.xfs -q -f -m reflink=1 "$W/nodes.img"
if [ -n "${LOOP_DIRECT_IO:-}" ]; then
  # The loop device writes through to the disk (O_DIRECT), as a node's own disk does, instead of
  # into the page cache of the image file (where writeback before the final syncfs goes unseen).
  mount "$(losetup --direct-io=on --find --show "$W/nodes.img")" "$W/nodes"
else
  mount -o loop "$W/nodes.img" "$W/nodes"
fi
nginx_start
gens=(); for g in ${GENERATORS:-${bins[0]}}; do [ -x "$g" ] || die "$g is not executable"; gens+=("$(realpath "$g")"); done
osd=${bins[0]}
"$osd" --repo "$W/nodes/base" init --mode bare > /dev/null
for i in "${!gens[@]}"; do
  g=${gens[$i]}; srv=$W/www/repo$i; rm -rf "$srv"
  "$g" --repo "$srv" init --mode archive --compression-level 3 > /dev/null
  SOURCE_DATE_EPOCH=1700000000 "$g" --repo "$srv" commit -b os --version old "$P/old" > /dev/null
  "$osd" --repo "$W/nodes/base" remote add "origin$i" "http://127.0.0.1:$PORT/repo$i" --insecure > /dev/null
  [ "$i" = 0 ] && "$osd" --repo "$W/nodes/base" pull origin0 os > /dev/null
  SOURCE_DATE_EPOCH=1700086400 "$g" --repo "$srv" commit -b os --version new "$P/new" > /dev/null
  "$g" --repo "$srv" delta generate --to os > "$W/generate$i.txt"
done
T=$W/apply.tsv
printf 'binary\tcase\twall_s\tuser_s\tsys_s\tmax_rss_kib\tbytes\trequests\n' > "$T"
for run in $(seq "$runs"); do
  for b in "${bins[@]}"; do
    for i in "${!gens[@]}"; do
      label=$b; [ "${#gens[@]}" -gt 1 ] && label="$b @origin $i"
      for case in deltas chunks; do
        rm -rf "$W/nodes/run"; cp -a --reflink=always "$W/nodes/base" "$W/nodes/run"
        args=(); [ "$case" = chunks ] && args=(--no-deltas)
        sync; echo 3 > /proc/sys/vm/drop_caches; log_reset
        /usr/bin/time -f '%e %U %S %M' -o "$W/time.out" "$b" --repo "$W/nodes/run" pull "${args[@]}" "origin$i" os \
          > "$W/pull.out" 2>&1 || { cat "$W/pull.out" >&2; die "$label: the $case pull failed"; }
        read -r wall user sys rss < "$W/time.out"; read -r requests bytes _ < <(log_sum)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$case" "$wall" "$user" "$sys" "$rss" "$bytes" "$requests" >> "$T"
        echo "run $run: $label $case ${wall} s"
      done
    done
  done
done
"${bins[0]}" --repo "$W/nodes/run" fsck > /dev/null
echo
python3 - "$T" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for binary in dict.fromkeys(r["binary"] for r in rows):
    median = {c: statistics.median(float(r["wall_s"]) for r in rows if r["binary"] == binary and r["case"] == c)
              for c in ("deltas", "chunks")}
    print(f"{binary}: deltas {median['deltas']:.2f} s, chunks {median['chunks']:.2f} s (medians of "
          f"{sum(r['binary'] == binary for r in rows) // 2} runs): {median['deltas'] / median['chunks']:.2f} x")
PY
