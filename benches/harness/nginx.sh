# shellcheck shell=bash
# Sourced by the harness scripts: nginx serving $W/www on 127.0.0.1:$PORT, and the body bytes
# and requests it served, counted from its access log.
#   nginx_start   starts it (once; later calls do nothing)
#   nginx_stop    stops it if it runs (call it from the script's EXIT trap)
#   log_reset     forgets what was served so far
#   log_sum       prints: requests, body bytes, bytes with HTTP headers
NGINX_UP=0
nginx_cmd() { nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" -e "$W/nginx/logs/error.log" "$@"; }
nginx_start() {
  [ "$NGINX_UP" = 1 ] && return
  mkdir -p "$W/nginx/logs" "$W/www"
  cat > "$W/nginx/nginx.conf" <<CONF
worker_processes 1; pid $W/nginx/nginx.pid; error_log $W/nginx/logs/error.log;
events { worker_connections 256; }
http { log_format counted '\$request \$status \$body_bytes_sent \$bytes_sent';
  access_log $W/nginx/logs/access.log counted; sendfile on; types { } default_type application/octet-stream;
  server { listen 127.0.0.1:$PORT; root $W/www; } }
CONF
  nginx_cmd
  NGINX_UP=1
}
nginx_stop() { if [ "$NGINX_UP" = 1 ]; then nginx_cmd -s stop || true; NGINX_UP=0; fi; }
log_reset() { : > "$W/nginx/logs/access.log"; }
log_sum() { awk '{n++; b+=$(NF-1); t+=$NF} END {print n+0, b+0, t+0}' "$W/nginx/logs/access.log"; }
