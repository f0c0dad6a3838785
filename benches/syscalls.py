#!/usr/bin/env python3
"""System calls and CPU per request, split into user and system time: nginx forwarding,
tokengate forwarding, and tokengate's token route, one worker each, interleaved; and the floor
beneath them, `null_proxy.c`: a relay that only moves bytes, one read and one write per message
like the two proxies, with no parsing, timer or allocation (built with `cc` when there is one).

On loopback most of a proxy's CPU is the kernel's: a `send` also runs the receiver's TCP work.
This shows how much, and whether a proxy makes more socket calls than it must. CPU comes from
`/proc/PID/stat` in one wrk run; system calls are counted in a second run by `perf stat` on the
`raw_syscalls:sys_enter` and `syscalls:sys_enter_*` tracepoints (root, or
`kernel.perf_event_paranoid` ≤ 1; Debian's `linux-perf`), which make each call dearer, and not
by strace, whose stops change what is measured.

Usage (after `bash benches/load.sh` has installed nginx/wrk and built the release binaries):
    python3 benches/syscalls.py [--rounds 5] [--seconds 5] [--binary PATH]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (shared helpers: ports, wrk, nginx config, backend)

CALLS = ["recvfrom", "sendto", "writev", "readv", "read", "write", "getsockopt", "epoll_wait"]
NULL_PORT = 3906
EVENTS = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{c}" for c in CALLS]


def counted(port, pids, seconds, path, script):
    """Two wrk runs: one for user and system µs per request, then one under `perf stat` for the
    system calls per request (the tracepoints make each call dearer, so CPU is not read there)."""
    user0, sys0 = load.cpu_split(pids)
    requests = load.wrk(port, path, seconds, 50, (), script)[0]
    user1, sys1 = load.cpu_split(pids)
    row = {"user": (user1 - user0) / requests * 1e6, "system": (sys1 - sys0) / requests * 1e6}
    out = os.path.join(tempfile.gettempdir(), f"tokengate-perf-{os.getpid()}-{time.monotonic_ns()}.txt")
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", ",".join(map(str, pids)), "-o", out],
                            stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    requests = load.wrk(port, path, seconds, 50, (), script)[0]
    perf.send_signal(2)
    perf.wait()
    with open(out) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[0].replace(".", "").isdigit():
                row[fields[2].split("sys_enter_")[-1].replace("raw_syscalls:sys_enter", "all calls")] = (
                    float(fields[0]) / requests)
    os.remove(out)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(load.RELEASE, "tokengate"))
    args = ap.parse_args()
    for tool in ("perf", "nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (benches/load.sh installs nginx and wrk; perf is Debian's linux-perf)")
    workdir = tempfile.mkdtemp(prefix="tokengate-syscalls-")
    backend = subprocess.Popen([os.path.join(load.RELEASE, "examples", "bench_backend"),
                                f"127.0.0.1:{load.BACKEND_PORT}"])
    targets = ["nginx forward", "tokengate forward", "tokengate token"]
    null_relay = os.path.join(workdir, "null_proxy")
    if shutil.which("cc") and subprocess.run(["cc", "-O2", "-o", null_relay, os.path.join(load.BENCHES, "null_proxy.c")]
                                             ).returncode == 0:
        targets.append("null relay")
    results = {t: [] for t in targets}
    try:
        load.wait_port(load.BACKEND_PORT)
        for _ in range(args.rounds):
            for target in targets:
                if target == "nginx forward":
                    proc, pids = load.start_nginx(workdir, 1)
                    port, pids = load.NGINX_PORT, pids[1:]  # the worker, not the idle master
                elif target == "null relay":
                    proc = subprocess.Popen([null_relay, str(NULL_PORT), str(load.BACKEND_PORT)])
                    port, pids = NULL_PORT, [proc.pid]
                    load.wait_port(port)
                else:
                    proc, pids = load.start_tokengate(workdir, 1, load.TOKEN_ROUTE.format(cache="false"),
                                                      binary=args.binary)
                    port = load.TG_PORT
                path, script = ("/generate-token", "post.lua") if target.endswith("token") else ("/", None)
                try:
                    load.wrk(port, path, 1, 50, (), script)  # warm-up: connections, pools, the auth cache
                    results[target].append(counted(port, pids, args.seconds, path, script))
                finally:
                    load.stop(proc)
    finally:
        load.stop(backend)
    columns = ["user", "system", "all calls"] + CALLS
    print(f"per request, one worker, wrk -c50, medians of {args.rounds} rounds (CPU in µs)")
    print(f"{'':<20}" + "".join(f"{c:>12}" for c in columns))
    for target, rows in results.items():
        print(f"{target:<20}" + "".join(f"{statistics.median(r.get(c, 0.0) for r in rows):>12.2f}" for c in columns))
    cpu = {t: statistics.median(r["user"] + r["system"] for r in rows) for t, rows in results.items()}
    print(f"CPU per request: tokengate forward / nginx {cpu['tokengate forward'] / cpu['nginx forward']:.2f}, "
          f"token route / tokengate forward {cpu['tokengate token'] / cpu['tokengate forward']:.2f}")
    if "null relay" in cpu:
        print(f"the floor: null relay / nginx {cpu['null relay'] / cpu['nginx forward']:.2f}")


if __name__ == "__main__":
    main()
