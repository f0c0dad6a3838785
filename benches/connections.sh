#!/usr/bin/env bash
# Memory per idle connection: a release tokengate (one worker, forwarding to the bench backend),
# 5,000 idle HTTP/1.1 keep-alive connections; then a fresh one and 5,000 idle HTTP/2 ones. RSS
# per connection, and RSS 10 s after they close. Usage: bash benches/connections.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-5000}"
ulimit -n "$(ulimit -Hn)"
cargo build --release --bin tokengate --example bench_backend --example idle_connections
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
target/release/examples/bench_backend 127.0.0.1:3911 &
cat > "$dir/tokengate.yaml" <<YAML
listen: 127.0.0.1:3912
admin_listen: 127.0.0.1:3913
workers: 1
upstream: { url: "http://127.0.0.1:3911" }
limits: { max_connections: 100000, idle_timeout: 10m }
YAML
for proto in h1 h2; do
  target/release/tokengate run --config "$dir/tokengate.yaml" --log-level warn &
  tg=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:3913/readyz >/dev/null && break; sleep 0.1; done
  target/release/examples/idle_connections 127.0.0.1:3912 "$tg" "$proto" "$n"
  kill "$tg"; wait "$tg" 2>/dev/null || true
done
