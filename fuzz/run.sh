#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (the libfuzzer-sys crate), on the stable toolchain.
# Builds every target in fuzz/fuzz_targets/, runs each for SECONDS (default 60) on its corpus in
# fuzz/corpus/TARGET, then merges what it found into a minimal corpus (the one committed).
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the run: make it a regression
# test (tests/it/fuzz_findings.rs or a unit test) before fixing it.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]        e.g. bash fuzz/run.sh 10 chunked route
#
# No cargo-fuzz and no nightly: the coverage instrumentation libFuzzer needs (SanitizerCoverage)
# is plain stable -C flags. Only AddressSanitizer needs a nightly flag; the library forbids
# unsafe code, so it is off unless FUZZ_ASAN=1 (which uses RUSTC_BOOTSTRAP=1).
#   FUZZ_PROFILE=dev   unoptimized (builds in ~2.5 min instead of ~10; CI uses it)
#   FUZZ_MERGE=0       keep the corpus as it is (CI: nothing is committed there)
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
profile="${FUZZ_PROFILE:-release}"
host=$(rustc -vV | sed -n 's/^host: //p')
flags="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
if [ "${FUZZ_ASAN:-0}" = 1 ]; then
  flags+=" -Zsanitizer=address"
  export RUSTC_BOOTSTRAP=1 ASAN_OPTIONS="detect_odr_violation=0"
fi
# --target keeps the instrumentation out of build scripts and proc macros.
RUSTFLAGS="$flags" CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_RELEASE_DEBUG=0 \
  cargo build --quiet --profile "$profile" --target "$host" --bins
dir="target/$host/$([ "$profile" = dev ] && echo debug || echo "$profile")"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^tokengate-fuzz$')
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  dict=()
  case "$t" in relay_differential | request_head | response_head) dict=(-dict=dict/http.dict) ;; esac
  mkdir -p "corpus/$t" "artifacts/$t"
  found=$(mktemp -d)
  if ! "$dir/$t" "$found" "corpus/$t" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    grep -vE '^#[0-9]+ ' "$log" | tail -40 >&2
    echo "$t: a finding; its input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -oE 'DONE +cov: [0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  printf '%-20s %4ss  %9s runs  coverage %5s  %s new inputs\n' "$t" "$seconds" "$runs" "$cov" "$(ls "$found" | wc -l)"
  if [ "${FUZZ_MERGE:-1}" = 1 ]; then
    # The minimal set of inputs covering what the old corpus and this run's finds cover.
    merged=$(mktemp -d)
    "$dir/$t" -merge=1 "$merged" "corpus/$t" "$found" -max_len=4096 >/dev/null 2>&1
    rm -rf "corpus/$t" && mv "$merged" "corpus/$t"
  fi
  rm -rf "$found"
done
