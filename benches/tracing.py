#!/usr/bin/env python3
"""The cost of tracing on forwarded traffic (issue 23): CPU per request and p99 of tokengate
(one worker) forwarding a small GET with `tracing` off, sampled at 0.01 and at 1.0, interleaved
ROUNDS times, medians, ratios against off. The spans go to the bench backend, which answers
every POST to /v1/traces with 200 (a collector that costs nothing), so what is measured is
tokengate's own work: the spans, the traceparent, the batching and the export requests.

Usage (after `cargo build --release --bin tokengate --example bench_backend`, wrk installed):
    python3 benches/tracing.py [--rounds 3] [--seconds 10] [--connections 50]
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (shared helpers: ports, wrk, CPU accounting, backend)

VARIANTS = {
    "off": "",
    "ratio 0.01": f"tracing: {{ exporter: otlp, endpoint: 'http://127.0.0.1:{load.BACKEND_PORT}', "
                  "sampler: traceidratio, ratio: 0.01 }",
    "ratio 1.0": f"tracing: {{ exporter: otlp, endpoint: 'http://127.0.0.1:{load.BACKEND_PORT}', "
                 "sampler: always_on }",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tokengate-tracing-")
    backend = subprocess.Popen([os.path.join(load.RELEASE, "examples", "bench_backend"),
                                f"127.0.0.1:{load.BACKEND_PORT}"])
    results = {name: [] for name in VARIANTS}
    try:
        load.wait_port(load.BACKEND_PORT)
        names = list(VARIANTS)
        for round_ in range(args.rounds):
            # A different order each round, so that no variant always follows the same one.
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                extra = VARIANTS[name]
                proc, pids = load.start_tokengate(workdir, 1, extra)
                try:
                    load.wrk(load.TG_PORT, "/", 2, args.connections)  # warm-up
                    results[name].append(load.measure(load.TG_PORT, pids, "/", args.seconds, args.connections))
                finally:
                    load.stop(proc)
    finally:
        load.stop(backend)
    print(f"\nforwarding a small GET, one worker, wrk -c{args.connections} {args.seconds}s, "
          f"medians of {args.rounds} interleaved rounds")
    print(f"{'tracing':<12}{'req/s':>10}{'p99 ms':>9}{'CPU µs/req':>12}{'CPU vs off':>12}")
    off = load.median(results["off"], "cpu_us")
    for name, rows in results.items():
        cpu = load.median(rows, "cpu_us")
        print(f"{name:<12}{load.median(rows, 'rps'):>10.0f}{load.median(rows, 'p99'):>9.2f}{cpu:>12.1f}{cpu / off:>11.2f}x")


if __name__ == "__main__":
    main()
