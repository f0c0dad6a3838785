#!/usr/bin/env bash
# End-to-end load benchmark: installs wrk and nginx (Debian packages), builds release binaries,
# then runs benches/load.py (direct vs nginx vs tokengate, interleaved, medians and ratios).
# Usage: bash benches/load.sh [--rounds 3] [--seconds 5] [--workers 1,2]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq wrk nginx-light >/dev/null 2>&1 || apt-get install -y -qq wrk nginx >/dev/null
fi
# --scenarios hsm: SoftHSM2 as the HSM, OpenSC's pkcs11-tool to make its key.
if [[ " $* " == *hsm* ]] && ! command -v pkcs11-tool >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq softhsm2 opensc >/dev/null
fi
# The Debian package starts a system nginx on :80; it is not ours to measure.
cargo build --release --bin tokengate --example bench_backend
exec python3 benches/load.py "$@"
