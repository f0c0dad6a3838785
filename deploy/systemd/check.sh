#!/usr/bin/env bash
# Checks deploy/systemd/tokengate.service with systemd's own tools (CI runs it):
#   systemd-analyze verify     the unit parses, every directive is known, the commands exist
#                              (a copy pointing at the built binary, since nothing is installed
#                              under /usr/local/bin here); any message fails the check
#   systemd-analyze security   the exposure score, offline; above 2.0 fails
# Usage: bash deploy/systemd/check.sh [TOKENGATE_BINARY]   (default target/debug/tokengate)
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=$(realpath "${1:-target/debug/tokengate}")
unit=deploy/systemd/tokengate.service
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|/usr/local/bin/tokengate|$binary|g" "$unit" >"$dir/tokengate.service"
if ! systemd-analyze verify "$dir/tokengate.service" >"$dir/verify.log" 2>&1 || [ -s "$dir/verify.log" ]; then
  cat "$dir/verify.log" >&2
  echo "systemd-analyze verify: $unit has problems" >&2
  exit 1
fi
echo "systemd-analyze verify: ok"
systemd-analyze security --offline=true "$unit" | tail -1
if ! systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null 2>&1; then
  echo "systemd-analyze security: exposure above 2.0" >&2
  exit 1
fi
