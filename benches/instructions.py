#!/usr/bin/env python3
"""Instructions per forwarded request, tokengate vs nginx, under callgrind.

CPU time on a shared 2-core VM moves ±10 % between runs; instruction counts do not. Each proxy
(one worker) runs under `valgrind --tool=callgrind --instr-atstart=no` in front of the same
backend; after a warm-up, instrumentation is switched on for a fixed wrk run and off again and
the counters are dumped, so start-up and shutdown are not counted. Counts are user-space instructions only (the kernel's
share, ~16–18 µs/req for both on loopback, is not in them). Prints instructions per request for
each and the tokengate/nginx ratio, interleaved ROUNDS times, medians.

Usage (after `bash benches/load.sh` has installed nginx/wrk and built the release binaries):
    python3 benches/instructions.py [--rounds 3] [--seconds 5] [--also NAME=BINARY ...] [--tracing] [--token]

`--tracing` also measures tokengate with `tracing` sampling 1 % and 100 % of requests (spans
exported to the bench backend as a free collector), beside tracing off: the cost of tracing in
user-space instructions, which the noise of wall-clock CPU hides at 1 %.

`--token` also measures the token route (load.py's ContactsManager route: a POST with a JSON
body, HS256, behind the backend's session endpoint, auth cache warm), per request.

`--also` measures another tokengate build in the same interleaved rounds (with `--token`, its
token route too: a change against the
commit before it: build that commit's release binary in a worktree and name it here).
"""

import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (shared helpers: ports, wrk, nginx config, backend)


def under_callgrind(cmd, out):
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", "--log-file=/dev/null"]
        + cmd
    )


def count(proc, out, port, seconds, path="/", script=None):
    """Instructions per request of one instrumented wrk run against `proc`, read from a
    callgrind dump taken right after it (the process is then killed)."""
    try:
        return _count(proc, out, port, seconds, path, script)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _count(proc, out, port, seconds, path="/", script=None):
    load.wrk(port, path, 2, 8, (), script)  # warm-up: connections, pools, caches, code paths
    control = ["callgrind_control", str(proc.pid)]
    subprocess.run(control[:1] + ["-i", "on"] + control[1:], check=True, capture_output=True)
    requests = load.wrk(port, path, seconds, 8, (), script)[0]
    subprocess.run(control[:1] + ["-i", "off"] + control[1:], check=True, capture_output=True)
    subprocess.run(control[:1] + ["--dump"] + control[1:], check=True, capture_output=True)
    proc.kill()
    proc.wait()
    dumps = sorted(glob.glob(out + "*"), key=os.path.getmtime)
    with open(dumps[-1]) as f:
        total = int(re.search(r"^totals: (\d+)", f.read(), re.M).group(1))
    for d in dumps:
        os.remove(d)
    return total / requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--also", action="append", default=[], metavar="NAME=BINARY",
                    help="another tokengate binary to measure beside target/release's")
    ap.add_argument("--tracing", action="store_true", help="also tokengate with tracing at ratio 0.01 and 1.0")
    ap.add_argument("--token", action="store_true",
                    help="also the token route (load.py's ContactsManager route, HS256, warm auth cache)")
    args = ap.parse_args()
    others = [tuple(a.split("=", 1)) for a in args.also]
    for tool in ("valgrind", "callgrind_control", "nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run `bash benches/load.sh` first (valgrind: apt-get install valgrind)")

    workdir = tempfile.mkdtemp(prefix="tokengate-instr-")
    tg_conf = os.path.join(workdir, "tokengate.yaml")
    base = (f"listen: 127.0.0.1:{load.TG_PORT}\nadmin_listen: 127.0.0.1:{load.TG_ADMIN}\n"
            f"upstream:\n  url: http://127.0.0.1:{load.BACKEND_PORT}\n")
    with open(tg_conf, "w") as f:
        f.write(base)
    configs = [("tokengate", os.path.join(load.RELEASE, "tokengate"), tg_conf)]
    configs += [(name, binary, tg_conf) for name, binary in others]
    if args.tracing:
        collector = f"http://127.0.0.1:{load.BACKEND_PORT}"
        for name, sampler in [("ratio 0.01", "traceidratio, ratio: 0.01"), ("ratio 1.0", "always_on")]:
            conf = os.path.join(workdir, f"tokengate-{name.replace(' ', '-')}.yaml")
            with open(conf, "w") as f:
                f.write(base + f"tracing: {{ exporter: otlp, endpoint: '{collector}', sampler: {sampler} }}\n")
            configs.append((name, os.path.join(load.RELEASE, "tokengate"), conf))
    if args.token:
        conf = os.path.join(workdir, "tokengate-token.yaml")
        with open(conf, "w") as f:
            f.write(base + load.TOKEN_ROUTE.format(cache="false"))
        configs.append(("token", os.path.join(load.RELEASE, "tokengate"), conf))
        configs += [(f"token {name}", binary, conf) for name, binary in others]
    backend = subprocess.Popen([os.path.join(load.RELEASE, "examples", "bench_backend"),
                                f"127.0.0.1:{load.BACKEND_PORT}"])
    results = {"nginx": []}
    for name, _, _ in configs:
        results[name] = []
    try:
        load.wait_port(load.BACKEND_PORT)
        for _ in range(args.rounds):
            out = os.path.join(workdir, "nginx.cg")
            proc = under_callgrind(["nginx", "-c", load.nginx_conf(workdir, 1, master=False), "-p", workdir], out)
            load.wait_port(load.NGINX_PORT, timeout=30)
            results["nginx"].append(count(proc, out, load.NGINX_PORT, args.seconds))
            for name, binary, conf in configs:
                out = os.path.join(workdir, f"{name.replace(' ', '-')}.cg")
                proc = under_callgrind([binary, "run", "--config", conf, "--workers", "1", "--log-level", "warn"],
                                       out)
                load.wait_port(load.TG_PORT, timeout=30)
                path, script = ("/generate-token", "post.lua") if name.split()[0] == "token" else ("/", None)
                results[name].append(count(proc, out, load.TG_PORT, args.seconds, path, script))
                time.sleep(0.5)
    finally:
        load.stop(backend)
    print(f"user-space instructions per forwarded request (callgrind, 1 worker, wrk -c8, "
          f"{args.rounds} rounds of {args.seconds}s)")
    for name, values in results.items():
        print(f"{name:<10} {statistics.median(values):>9.0f}   rounds: {', '.join(f'{v:.0f}' for v in values)}")
    for name in results:
        if name != "nginx":
            print(f"ratio {name}/nginx: {statistics.median(results[name]) / statistics.median(results['nginx']):.2f}")
    for name, _ in others:
        print(f"ratio tokengate/{name}: {statistics.median(results['tokengate']) / statistics.median(results[name]):.3f}")
    if args.token:
        print(f"token route / forwarded request: {statistics.median(results['token']) / statistics.median(results['tokengate']):.2f}")
        for name, _ in others:
            print(f"token route, tokengate/{name}: "
                  f"{statistics.median(results['token']) / statistics.median(results[f'token {name}']):.3f}")
    for name in ("ratio 0.01", "ratio 1.0") if args.tracing else ():
        print(f"tracing {name} / off: {statistics.median(results[name]) / statistics.median(results['tokengate']):.3f}")


if __name__ == "__main__":
    main()
