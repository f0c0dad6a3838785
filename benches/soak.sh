#!/usr/bin/env bash
# Soak: a release tokengate (one worker) under 10 minutes of mixed load, reloaded every 30 s:
# keep-alive HTTP/1.1 GETs and uploads, HTTP/2 streams, a token route behind a session hook,
# short and long-lived WebSockets (examples/soak.rs drives it and holds the backend). Prints
# requests and errors by kind, and tokengate's RSS and open fds after warm-up, at the middle
# and at the end; exits 1 on any error or when RSS grew more than 10 % after warm-up.
#   bash benches/soak.sh [SECONDS]     (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet --bin tokengate --example soak
exec target/release/examples/soak target/release/tokengate "${1:-600}"
