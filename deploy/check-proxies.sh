#!/usr/bin/env bash
# Checks the proxy files tokengate ships with the proxies themselves (CI runs it):
#   nginx -t          deploy/nginx/tokengate.conf (drop-in) and tokengate-forward-auth.conf
#                     (auth_request), each with its snippets, in a scratch prefix
#   caddy validate    deploy/caddy/Caddyfile (forward_auth)
# Envoy (deploy/envoy/ext_authz.yaml) is not installable here: that file is marked untested.
# The end-to-end tests (tests/it/nginx.rs, tests/it/forward_auth_peers.rs) run the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -days 1 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
for site in tokengate.conf tokengate-forward-auth.conf; do
  sed -e "s|/etc/nginx/snippets/|$PWD/deploy/nginx/|g" \
    -e "s|/etc/ssl/certs/tokengate.pem|$dir/cert.pem|; s|/etc/ssl/private/tokengate.key|$dir/key.pem|" \
    "deploy/nginx/$site" >"$dir/site.conf"
  cat >"$dir/nginx.conf" <<CONF
pid $dir/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http { access_log off; include $dir/site.conf; }
CONF
  nginx -t -q -p "$dir" -c "$dir/nginx.conf"
  echo "nginx -t deploy/nginx/$site: ok"
done
HOME="$dir" XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" \
  caddy validate --config deploy/caddy/Caddyfile --adapter caddyfile 2>&1 | grep -v '"level":"info"'
