#!/usr/bin/env bash
# A node holding OLD pulls NEW over HTTP from nginx on loopback: bytes on the wire, requests,
# wall time, peak RSS — osdeploy at several archive compression levels. The peers (OSTree object
# pull and static delta, casync) are measured by ../shared/data/measure-baseline.sh in the same
# session; docs/benchmarks.md puts both side by side.
# Usage (root): benches/harness/pull-vs-peers.sh PAIR WORK [LEVEL...]   (PAIR from make-os-pair.sh)
# Needs: nginx, GNU time. Writes WORK/results.tsv.
set -euo pipefail
P=$(realpath "${1:?PAIR}"); mkdir -p "${2:?WORK}"; W=$(realpath "$2"); shift 2
levels=${*:-3 19}
osd=${OSDEPLOY:-$(dirname "$0")/../../target/release/osdeploy}; osd=$(realpath "$osd")
PORT=${PORT:-18090}
R=$W/results.tsv
printf 'tool\tlevel\tcase\tbytes\trequests\twall_s\tmax_rss_kib\tpredicted_bytes\tpredicted_requests\n' > "$R"
mkdir -p "$W/nginx/logs" "$W/www"
cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 1; pid $W/nginx/nginx.pid; error_log $W/nginx/logs/error.log;
events { worker_connections 256; }
http { log_format b '\$request \$status \$body_bytes_sent \$bytes_sent';
  access_log $W/nginx/logs/access.log b; sendfile on; types { } default_type application/octet-stream;
  server { listen 127.0.0.1:$PORT; root $W/www; } }
CONF
nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" -e "$W/nginx/logs/error.log"
trap 'nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" -e "$W/nginx/logs/error.log" -s stop || true' EXIT
log_reset() { : > "$W/nginx/logs/access.log"; }
log_sum() { awk '{n++; b+=$(NF-1)} END {print n+0, b+0}' "$W/nginx/logs/access.log"; }
for level in $levels; do
  srv=$W/www/repo-$level; rm -rf "$srv" "$W"/node-*
  "$osd" --repo "$srv" init --mode archive --compression-level "$level" > /dev/null
  "$osd" --repo "$srv" commit -b os --version old "$P/old" > /dev/null
  url=http://127.0.0.1:$PORT/repo-$level
  # full pull of NEW into an empty node (after NEW is committed below), and the update pull
  "$osd" --repo "$W/node-update" init --mode bare > /dev/null
  "$osd" --repo "$W/node-update" remote add origin "$url" --insecure > /dev/null
  "$osd" --repo "$W/node-update" pull origin os > /dev/null 2>&1
  old=$("$osd" --repo "$srv" show --json os | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p')
  "$osd" --repo "$srv" commit -b os --version new "$P/new" > /dev/null
  new=$("$osd" --repo "$srv" show --json os | sed -n 's/.*"commit": "\([0-9a-f]*\)".*/\1/p')
  for case in update full; do
    node=$W/node-$case
    if [ "$case" = full ]; then
      "$osd" --repo "$node" init --mode bare > /dev/null
      "$osd" --repo "$node" remote add origin "$url" --insecure > /dev/null
      from=none
    else
      from=$old
    fi
    "$osd" --repo "$srv" delta --json "$from" "$new" > "$W/delta.json"
    pb=$(sed -n 's/^  "transfer_bytes": \([0-9]*\).*/\1/p' "$W/delta.json")
    pr=$(sed -n 's/^  "requests": \([0-9]*\).*/\1/p' "$W/delta.json")
    sync; echo 3 > /proc/sys/vm/drop_caches
    log_reset
    /usr/bin/time -f '%e %M' -o "$W/time.out" "$osd" --repo "$node" pull origin os > "$W/pull.out" 2>&1
    read -r wall rss < "$W/time.out"
    read -r rq bb < <(log_sum)
    printf 'osdeploy\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$level" "$case" "$bb" "$rq" "$wall" "$rss" "$pb" "$pr" >> "$R"
    echo "level $level $case: $bb bytes in $rq requests, ${wall}s, ${rss} KiB (delta predicted $pb bytes, $pr requests)"
    "$osd" --repo "$node" fsck > /dev/null
  done
done
column -t -s $'\t' "$R"
