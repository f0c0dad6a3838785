#!/usr/bin/env python3
"""Memory per idle connection: nginx (Debian's package) and tokengate side by side, in one run.

Each proxy runs one worker in front of the bench backend (examples/bench_backend.rs) and is
started fresh for each case. examples/idle_connections.rs opens N connections (one exchange on
each first), reads the RSS of the whole proxy (nginx: master and worker) before, with them open,
and 10 s after they close. Cases: HTTP/1.1 keep-alive, HTTP/2 h2c (prior knowledge), a proxied
WebSocket (client + upstream connection), and with --large the large HTTP/1.1 case (100,000
connections, or as many as the file-descriptor limit allows: the script raises it as far as it
may and says so).

Usage: python3 benches/connections.py [--n 5000] [--large 100000] [--also NAME=BIN]
(--also measures another tokengate build beside, e.g. the previous commit's)
(builds the release binaries and installs nginx when missing)
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
BACKEND, NGINX_H1, NGINX_H2, TG, TG_ADMIN = 3921, 3922, 3923, 3924, 3925


def wait_port(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def raise_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return limit
        except (ValueError, OSError):
            continue
    return soft


def nginx(workdir):
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile 250000;
events {{ worker_connections 250000; }}
http {{
  access_log off;
  keepalive_timeout 10m;
  keepalive_requests 100000;
  http2_idle_timeout 10m;
  upstream app {{ server 127.0.0.1:{BACKEND}; keepalive 32; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  server {{
    listen 127.0.0.1:{NGINX_H1};
    listen 127.0.0.1:{NGINX_H2} http2;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 10m;
      proxy_send_timeout 10m;
    }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stderr=subprocess.DEVNULL)
    wait_port(NGINX_H1)
    wait_port(NGINX_H2)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return proc, [proc.pid] + [int(c) for c in children]


def tokengate(workdir, binary):
    conf = os.path.join(workdir, "tokengate.yaml")
    with open(conf, "w") as f:
        f.write(f"listen: 127.0.0.1:{TG}\nadmin_listen: 127.0.0.1:{TG_ADMIN}\nworkers: 1\n"
                f"upstream: {{ url: \"http://127.0.0.1:{BACKEND}\" }}\n"
                "limits: { max_connections: 250000, idle_timeout: 10m }\n")
    proc = subprocess.Popen([binary, "run", "--config", conf, "--log-level", "warn"],
                            stderr=subprocess.DEVNULL)
    wait_port(TG)
    return proc, [proc.pid]


def measure(workdir, proxy, mode, n, builds):
    proc, pids = nginx(workdir) if proxy == "nginx" else tokengate(workdir, builds[proxy])
    port = TG if proxy != "nginx" else (NGINX_H2 if mode == "h2" else NGINX_H1)
    try:
        run = subprocess.run([os.path.join(RELEASE, "examples", "idle_connections"), f"127.0.0.1:{port}",
                              ",".join(map(str, pids)), mode, str(n)], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"{proxy} {mode}: the client failed: {run.stderr.strip()}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{proxy:<10} {mode} {n}: {per_conn(result):.2f} KiB each, {left(result):.0f} % left after closing",
              file=sys.stderr, flush=True)
        return result
    finally:
        proc.terminate()
        proc.wait()


def per_conn(r):
    return (r["open_kib"] - r["before_kib"]) / r["n"]


def left(r):
    grown = r["open_kib"] - r["before_kib"]
    return (r["after_kib"] - r["before_kib"]) / grown * 100 if grown > 0 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--large", type=int, default=0, help="also N idle HTTP/1.1 connections (e.g. 100000)")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=BIN")
    args = ap.parse_args()
    builds = {"tokengate": os.path.join(RELEASE, "tokengate")}
    builds.update(dict(a.split("=", 1) for a in args.also))
    proxies = ["nginx"] + list(builds)
    if not shutil.which("nginx"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq nginx-light || apt-get install -y -qq nginx",
                       shell=True, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["cargo", "build", "-q", "--release", "--bin", "tokengate", "--example", "bench_backend",
                    "--example", "idle_connections"], cwd=ROOT, check=True)
    # Each WebSocket case holds two sockets per client in the proxy (client and upstream).
    limit = raise_fd_limit(max(args.large, 2 * args.n) + 2000)
    workdir = tempfile.mkdtemp(prefix="tokengate-conns-")
    backend = subprocess.Popen([os.path.join(RELEASE, "examples", "bench_backend"), f"127.0.0.1:{BACKEND}"])
    try:
        wait_port(BACKEND)
        rows = []
        for mode, name in (("h1", "HTTP/1.1 keep-alive"), ("h2", "HTTP/2 (h2c prior knowledge)"),
                           ("ws", "proxied WebSocket (client + upstream)")):
            r = {proxy: measure(workdir, proxy, mode, args.n, builds) for proxy in proxies}
            rows.append((name, r))
        large = None
        if args.large and not args.skip_large:
            n = min(args.large, limit - 1000)
            large = (n, {proxy: measure(workdir, proxy, "h1", n, builds) for proxy in proxies})
    finally:
        backend.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    print(f"\n{args.n} idle connections each, one worker, RSS of the whole process ({version})\n")
    others = proxies[1:]
    print("| idle connection | nginx | " + " | ".join(others) + " | " + " | ".join(f"{o}/nginx" for o in others) + " |")
    print("|---|---:|" + "---:|" * (2 * len(others)))
    for name, r in rows:
        a = per_conn(r["nginx"])
        cells = [f"{per_conn(r[o]):.1f} KiB" for o in others] + [f"{per_conn(r[o]) / a:.2f}x" for o in others]
        print(f"| {name} | {a:.1f} KiB | " + " | ".join(cells) + " |")
    print("\n| growth left 10 s after they closed | " + " | ".join(proxies) + " |")
    print("|---|" + "---:|" * len(proxies))
    for name, r in rows:
        print(f"| {name} | " + " | ".join(f"{left(r[p]):.0f} %" for p in proxies) + " |")
    if large:
        n, r = large
        print(f"\n{n} idle HTTP/1.1 connections (fd limit {limit}"
              f"{'' if n >= args.large else f'; {args.large} need a higher hard limit than this machine allows'}):")
        for proxy in proxies:
            grown = (r[proxy]["open_kib"] - r[proxy]["before_kib"]) / 1024
            total = r[proxy]["open_kib"] / 1024
            projected = r[proxy]["before_kib"] / 1024 + grown * args.large / n
            print(f"  {proxy:<10} RSS {total:7.1f} MiB ({per_conn(r[proxy]):.2f} KiB each)"
                  f"{'' if n >= args.large else f' -> {projected:.1f} MiB projected at {args.large}'}")


if __name__ == "__main__":
    main()
