#!/usr/bin/env bash
# What the peers move to bring a node from PAIR/old to PAIR/new, measured on this machine:
#   ostree   OSTree object pull over HTTP (nginx on 127.0.0.1, bytes and requests from its access
#            log) into a bare repository holding OLD; the static delta OLD→NEW (file size,
#            generation time) and its real HTTP pull (--require-static-deltas); full NEW objects
#   casync   chunks of NEW not in OLD's chunks + the index; the real HTTP extract with --seed=OLD
#            (bytes and requests from nginx), verified against NEW
#   xdelta   xdelta3 -9 of whole deterministic tars (old.tar → new.tar), apply verified
#   zstd     zstd -19 --long --patch-from of the same tars, apply verified
#   rsync    the batch file of OLD→NEW (applied to a copy of OLD and verified), and the daemon
#            protocol over 127.0.0.1 (bytes the client received)
#   full     a full image: tar of NEW, zstd -19 --long
# Usage (root): benches/harness/peers.sh PAIR WORK [STEP...]
#   PAIR: OUT of benches/harness/make-os-pair.sh (old/, new/, {old,new}.clamp)
#   STEP: tars full ostree casync xdelta zstd rsync (default: all, in that order; xdelta, zstd
#         and full need tars)
# Writes WORK/peers.tsv (one row per measurement, rows of a rerun step replace nothing: the
# last row of a tool wins in benches/harness/table.py):
#   tool  bytes  requests  gen_s  gen_rss_kib  apply_s  apply_rss_kib  note
# and WORK/logs/ (each command's output and time). A missing tool is installed with apt-get;
# if that fails the harness stops: no peer is skipped silently. Ports: PORT (nginx, 18080),
# RSYNC_PORT (18730), both on 127.0.0.1; nginx and rsyncd are stopped on exit.
set -euo pipefail
die() { echo "peers: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: $0 PAIR WORK [STEP...]"
[ "$(id -u)" = 0 ] || die "must run as root (device nodes, ownership, dropping caches)"
P=$(realpath "$1"); mkdir -p "$2"; W=$(realpath "$2"); shift 2
steps=${*:-tars full ostree casync xdelta zstd rsync}
for x in old new; do
  [ -d "$P/$x" ] || die "$P/$x is missing: build the pair with benches/harness/make-os-pair.sh"
  [ -f "$P/$x.done" ] || die "$P/$x is not a finished tree of make-os-pair.sh"
done
PORT=${PORT:-18080}; RSYNC_PORT=${RSYNC_PORT:-18730}
R=$W/peers.tsv; L=$W/logs; mkdir -p "$L"
[ -s "$R" ] || printf 'tool\tbytes\trequests\tgen_s\tgen_rss_kib\tapply_s\tapply_rss_kib\tnote\n' > "$R"

# every peer this harness measures, as command:package
need=(ostree:ostree casync:casync xdelta3:xdelta3 zstd:zstd rsync:rsync nginx:nginx-light
      /usr/bin/time:time tar:tar python3:python3)
missing=()
for n in "${need[@]}"; do command -v "${n%%:*}" > /dev/null || missing+=("${n#*:}"); done
[ -x /usr/lib/casync/protocols/casync-http ] || missing+=(casync)
if [ ${#missing[@]} -gt 0 ]; then
  echo "peers: installing ${missing[*]} with apt-get" >&2
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } > "$L/apt.log" 2>&1; then
    tail -20 "$L/apt.log" >&2; die "could not install ${missing[*]}: the peers cannot be measured"
  fi
  for n in "${need[@]}"; do command -v "${n%%:*}" > /dev/null || die "${n%%:*} still missing after apt-get"; done
fi

row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$R"; echo "ROW: $*"; }
# timed LABEL CMD...: runs CMD under GNU time, output in logs/LABEL.out; sets T_S and T_RSS
timed() {
  local label=$1; shift
  if ! /usr/bin/time -f '%e %M' -o "$L/$label.time" "$@" > "$L/$label.out" 2>&1; then
    tail -20 "$L/$label.out" >&2; die "$label failed (see $L/$label.out)"
  fi
  read -r T_S T_RSS < <(tail -1 "$L/$label.time")
  echo "$label: ${T_S} s, ${T_RSS} KiB"
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
size() { stat -c %s "$1"; }
# same_tree A B LABEL: "identical" (or only hardlinks lost) or "DIFFERS (n items)", by rsync's
# checksum dry run
same_tree() {
  rsync -aHAXnci --delete --numeric-ids "$1/" "$2/" > "$L/verify-$3.txt" 2>&1 || true
  local n h; n=$(wc -l < "$L/verify-$3.txt"); h=$(grep -c '^hf ' "$L/verify-$3.txt" || true)
  if [ "$n" = 0 ]; then echo identical
  elif [ "$n" = "$h" ]; then echo "identical except $h hardlinks made separate files (logs/verify-$3.txt)"
  else echo "DIFFERS ($n items, logs/verify-$3.txt)"; fi
}

RSYNCD_UP=0
# shellcheck source=benches/harness/nginx.sh
source "$(dirname "$0")/nginx.sh"
cleanup() {
  nginx_stop
  if [ "$RSYNCD_UP" = 1 ] && [ -s "$W/rsync/rsyncd.pid" ]; then kill "$(cat "$W/rsync/rsyncd.pid")" || true; fi
}
trap cleanup EXIT

step_tars() {  # deterministic tars: sorted names, numeric owners, no atime/ctime, xattrs and ACLs
  for x in old new; do
    tar -C "$P/$x" --sort=name --numeric-owner --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
      --xattrs --xattrs-include='*' --acls -cf "$W/$x.tar" .
  done
  echo "tars: old $(size "$W/old.tar") B, new $(size "$W/new.tar") B"
}
need_tars() { if [ ! -s "$W/old.tar" ] || [ ! -s "$W/new.tar" ]; then step_tars; fi; }

step_full() {
  need_tars
  timed full-zstd zstd -q -f -19 --long=31 -T2 "$W/new.tar" -o "$W/new.tar.zst"
  local g=$T_S r=$T_RSS
  timed full-unzstd zstd -q -f -d --long=31 "$W/new.tar.zst" -o /dev/null
  row full-tar.zst-19 "$(size "$W/new.tar.zst")" 1 "$g" "$r" "$T_S" "$T_RSS" "tar of NEW, zstd -19 --long=31 -T2; apply = decompress"
}

step_ostree() {
  local o=$W/ostree; rm -rf "$o"; mkdir -p "$o"
  for x in old new; do   # OSTree refuses device nodes, fifos and sockets: commit a copy without them
    cp -al "$P/$x" "$o/$x-tree"
    find "$o/$x-tree" -xdev \( -type c -o -type b -o -type p -o -type s \) -delete
  done
  ostree --repo="$o/srv" init --mode=archive
  ostree --repo="$o/srv" commit -b os --tree=dir="$o/old-tree" --subject=old --timestamp="@$(cat "$P/old.clamp")" > /dev/null
  timed ostree-commit-new ostree --repo="$o/srv" commit -b os --tree=dir="$o/new-tree" --subject=new --timestamp="@$(cat "$P/new.clamp")"
  local gc=$T_S gr=$T_RSS oc nc
  oc=$(ostree --repo="$o/srv" rev-parse os^); nc=$(ostree --repo="$o/srv" rev-parse os)
  ostree --repo="$o/srv" summary -u > /dev/null
  nginx_start; ln -sfn "$o/srv" "$W/www/ostree"
  client() {  # client NAME: a bare repository holding OLD, following the server
    ostree --repo="$o/$1" init --mode=bare
    ostree --repo="$o/$1" remote add --no-gpg-verify origin "http://127.0.0.1:$PORT/ostree"
    ostree --repo="$o/$1" pull-local --remote=origin "$o/srv" "$oc" > /dev/null
    ostree --repo="$o/$1" refs --create=origin:os "$oc"
  }
  client objects; cold; log_reset
  timed ostree-pull-objects ostree --repo="$o/objects" pull --disable-static-deltas origin os
  read -r rq bb tb < <(log_sum)
  [ "$(ostree --repo="$o/objects" rev-parse origin:os)" = "$nc" ] || die "ostree object pull did not reach NEW"
  row ostree-pull-objects "$bb" "$rq" "$gc" "$gr" "$T_S" "$T_RSS" "archive repo (zlib) over HTTP into a bare repo holding OLD; body bytes (with headers $tb); gen = commit NEW"
  timed ostree-delta-generate ostree --repo="$o/srv" static-delta generate --from="$oc" --to="$nc"
  local dg=$T_S dr=$T_RSS
  ostree --repo="$o/srv" summary -u > /dev/null
  row ostree-static-delta-file "$(du -sb --apparent-size "$o/srv/deltas" | cut -f1)" - "$dg" "$dr" - - "deltas/ (superblock and parts), default options"
  client delta; cold; log_reset
  timed ostree-pull-delta ostree --repo="$o/delta" pull --require-static-deltas origin os
  read -r rq bb tb < <(log_sum)
  [ "$(ostree --repo="$o/delta" rev-parse origin:os)" = "$nc" ] || die "ostree static delta pull did not reach NEW"
  row ostree-pull-static-delta "$bb" "$rq" "$dg" "$dr" "$T_S" "$T_RSS" "pull --require-static-deltas into a bare repo holding OLD; body bytes (with headers $tb)"
  ostree --repo="$o/full" init --mode=archive
  ostree --repo="$o/full" pull-local "$o/srv" "$nc" > /dev/null
  row ostree-objects-full-NEW "$(du -sb --apparent-size "$o/full/objects" | cut -f1)" "$(find "$o/full/objects" -type f | wc -l)" - - - - "every archive object of NEW (what an empty node fetches)"
  rm -rf "$o/old-tree" "$o/new-tree" "$o/objects" "$o/delta" "$o/full"
}

step_casync() {
  local c=$W/casync; rm -rf "$c"; mkdir -p "$c"
  casync make --store="$c/store-old" "$c/old.caidx" "$P/old" > "$L/casync-make-old.out" 2>&1
  timed casync-make-new casync make --store="$c/store" "$c/new.caidx" "$P/new"
  local g=$T_S r=$T_RSS
  # chunk files are named by their id: NEW's chunks missing from OLD's store are what a node needs
  (cd "$c/store-old" && find . -name '*.cacnk' -printf '%f\n' | sort) > "$c/old.ids"
  (cd "$c/store" && find . -name '*.cacnk' -printf '%f\t%s\n' | sort) > "$c/new.ids"
  local need needb idx all allb
  need=$(cut -f1 "$c/new.ids" | comm -13 "$c/old.ids" - | wc -l)
  needb=$(awk -F'\t' 'NR==FNR {o[$1]=1; next} !($1 in o) {s+=$2} END {print s+0}' "$c/old.ids" "$c/new.ids")
  idx=$(size "$c/new.caidx"); all=$(wc -l < "$c/new.ids")
  allb=$(awk -F'\t' '{s+=$2} END {print s+0}' "$c/new.ids")
  row casync-needed-chunks+index "$((needb + idx))" "$((need + 1))" "$g" "$r" - - "$need chunks of NEW not among OLD's ($needb B, zstd) + new.caidx ($idx B)"
  row casync-full-NEW "$((allb + idx))" "$((all + 1))" - - - - "every chunk of NEW + index"
  # the real thing: extract NEW over HTTP with OLD as seed
  nginx_start; ln -sfn "$c" "$W/www/casync"; rm -rf "$c/out"; cold; log_reset
  timed casync-extract casync extract --store="http://127.0.0.1:$PORT/casync/store/" --seed="$P/old" \
    "http://127.0.0.1:$PORT/casync/new.caidx" "$c/out"
  read -r rq bb tb < <(log_sum)
  row casync-http-extract "$bb" "$rq" - - "$T_S" "$T_RSS" "extract over HTTP, --seed=OLD; body bytes (with headers $tb); result $(same_tree "$P/new" "$c/out" casync)"
  rm -rf "$c/out" "$c/store-old"
}

step_xdelta() {
  need_tars
  local b=1; while [ "$b" -lt "$(size "$W/old.tar")" ]; do b=$((b * 2)); done   # source window: all of OLD
  timed xdelta-encode xdelta3 -e -9 -f -B "$b" -s "$W/old.tar" "$W/new.tar" "$W/new.vcdiff"
  local g=$T_S r=$T_RSS
  timed xdelta-decode xdelta3 -d -f -B "$b" -s "$W/old.tar" "$W/new.vcdiff" "$W/new.xdelta.tar"
  local ok=identical; cmp -s "$W/new.tar" "$W/new.xdelta.tar" || ok=DIFFERS; rm -f "$W/new.xdelta.tar"
  row xdelta3-9-tar "$(size "$W/new.vcdiff")" 1 "$g" "$r" "$T_S" "$T_RSS" "xdelta3 -e -9 -B $b, old.tar → new.tar; apply (to the tar) $ok"
}

step_zstd() {
  need_tars
  timed zstd-patch zstd -q -f -19 --long=31 -T2 --patch-from="$W/old.tar" "$W/new.tar" -o "$W/new.patch.zst"
  local g=$T_S r=$T_RSS
  timed zstd-apply zstd -q -f -d --long=31 --patch-from="$W/old.tar" "$W/new.patch.zst" -o "$W/new.patched.tar"
  local ok=identical; cmp -s "$W/new.tar" "$W/new.patched.tar" || ok=DIFFERS; rm -f "$W/new.patched.tar"
  row zstd-19-patch-from-tar "$(size "$W/new.patch.zst")" 1 "$g" "$r" "$T_S" "$T_RSS" "zstd -19 --long=31 --patch-from=old.tar; apply (to the tar) $ok"
}

step_rsync() {
  local d=$W/rsync; rm -rf "$d"; mkdir -p "$d"
  local opts=(-aHAX --numeric-ids --delete --no-whole-file)
  timed rsync-write-batch rsync "${opts[@]}" --only-write-batch="$d/batch" "$P/new/" "$P/old/"
  local g=$T_S r=$T_RSS
  cp -a "$P/old" "$d/dst"; cold
  timed rsync-read-batch rsync "${opts[@]}" --read-batch="$d/batch" "$d/dst/"
  row rsync-batch "$(size "$d/batch")" 1 "$g" "$r" "$T_S" "$T_RSS" "--only-write-batch OLD→NEW; applied to a copy of OLD: $(same_tree "$P/new" "$d/dst" rsync-batch)"
  cat > "$d/rsyncd.conf" <<CONF
pid file = $d/rsyncd.pid
use chroot = no
[new]
  path = $P/new
  read only = yes
  uid = root
  gid = root
CONF
  rsync --daemon --config="$d/rsyncd.conf" --port="$RSYNC_PORT" --address=127.0.0.1
  RSYNCD_UP=1
  local z
  for z in none -z; do
    rm -rf "$d/dst"; cp -a "$P/old" "$d/dst"; cold
    local flags=(); [ "$z" = none ] || flags=("$z")
    local label=rsync-daemon${z/none/}
    timed "$label" rsync "${opts[@]}" "${flags[@]}" --stats "rsync://127.0.0.1:$RSYNC_PORT/new/" "$d/dst/"
    local rx tx
    rx=$(sed -n 's/^Total bytes received: \([0-9,]*\).*/\1/p' "$L/$label.out" | tr -d ,)
    tx=$(sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' "$L/$label.out" | tr -d ,)
    [ -n "$rx" ] || die "no byte count in $L/rsync-daemon$z.out"
    row "$label" "$rx" 1 - - "$T_S" "$T_RSS" "rsync:// on 127.0.0.1 (compression: $z), into a copy of OLD: bytes received; sent $tx; $(same_tree "$P/new" "$d/dst" "$label")"
  done
  kill "$(cat "$d/rsyncd.pid")"; RSYNCD_UP=0
  rm -rf "$d/dst"
}

for s in $steps; do
  declare -F "step_$s" > /dev/null || die "unknown step '$s'"
  echo "=== peers: $s"; "step_$s"
done
column -t -s $'\t' "$R" | cut -c1-160
