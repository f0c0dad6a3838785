#!/usr/bin/env python3
"""End-to-end load: direct vs nginx vs tokengate, interleaved, on loopback.

Prints, per worker count, requests/s and p99 latency (wrk) and each proxy's own CPU time per
request (utime+stime from /proc/PID/stat, children included for nginx), medians over ROUNDS
interleaved rounds, and the tokengate/nginx ratios. On 2 cores requests/s mostly measures CPU
sharing between wrk, the backend and the proxy; CPU per request is the figure to compare.

Run through benches/load.sh, which installs wrk and nginx and builds the release binaries.
`--also NAME=BINARY` measures another tokengate build in the same interleaved rounds (forward,
large, and the token scenario's forward and warm rows): a change against the commit before it.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
TICK = os.sysconf("SC_CLK_TCK")

BACKEND_PORT, NGINX_PORT, TG_PORT, TG_ADMIN, FLASK_PORT = 3901, 3902, 3903, 3904, 3905
BENCHES = os.path.dirname(os.path.abspath(__file__))
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"

# A ContactsManager-style token route behind the backend's session endpoint.
TOKEN_ROUTE = """keys: [{{ id: cm, algorithm: HS256, secret: cm-secret-for-the-benchmark }}]
auth_hooks:
  session:
    type: http
    url: http://127.0.0.1:%d/api/me
    forward_headers: [cookie]
    identity: {{ id: body:/id, name: body:/name }}
    cache: {{ ttl: 5m, negative_ttl: 2s, max_entries: 1000000 }}
routes:
  - name: cm
    path: /generate-token
    methods: [GET, POST]
    auth: session
    cache_tokens: {cache}
    tokens:
      token:
        key: cm
        ttl: 24h
        claims: {{ org_id: org-1, api_key: cm-key, user_id: "{{{{ user.id }}}}", device_info: "{{{{ body.deviceInfo | {{}} }}}}" }}
    response:
      body: {{ token: "{{{{ tokens.token }}}}", expiresAt: "{{{{ expires_at }}}}", message: "Token generated for user {{{{ user.id }}}}", success: true }}
""" % BACKEND_PORT


def cpu_split(pids):
    """User and system CPU seconds of the processes `pids`, each with all its threads."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime, stime (fields 14, 15)
            system += int(fields[12])
        except FileNotFoundError:
            pass
    return user / TICK, system / TICK


def cpu_seconds(pids):
    return sum(cpu_split(pids))


def wait_port(port, path="/", timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"nothing answered on port {port}")


def wrk(port, path, seconds, connections, headers=(), script=None, shed_ok=False):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", os.path.join(BENCHES, script)]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx and not shed_ok:
        sys.exit(f"{non2xx.group(1)} non-2xx answers on port {port}{path}:\n{out}")
    return requests, rps, p99_ms, int(non2xx.group(1)) if non2xx else 0


def measure(port, pids, path, seconds, connections, headers=(), script=None, shed_ok=False):
    before = cpu_split(pids)
    requests, rps, p99, shed = wrk(port, path, seconds, connections, headers, script, shed_ok)
    after = cpu_split(pids)
    per_request = [(a - b) / requests * 1e6 if pids else float("nan") for a, b in zip(after, before)]
    return {"rps": rps, "p99": p99, "cpu_us": sum(per_request), "user_us": per_request[0], "sys_us": per_request[1],
            "shed": shed / requests * 100}


def nginx_conf(workdir, workers, master=True, buffering=False):
    """nginx as the baseline: upstream keepalive, HTTP/1.1 to the backend, no access log,
    responses streamed as tokengate does (`buffering`: nginx's default, whole responses read
    into its buffers first). `master=False` runs the one worker in the foreground process (for
    callgrind)."""
    conf = os.path.join(workdir, f"nginx-{workers}{'' if master else '-single'}{'-buffered' if buffering else ''}.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {workers};
{'' if master else 'master_process off;'}
daemon off;
pid {workdir}/nginx-{workers}.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} reuseport;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering {'on' if buffering else 'off'};
    }}
  }}
}}
""")
    return conf


def start_nginx(workdir, workers, buffering=False):
    conf = nginx_conf(workdir, workers, buffering=buffering)
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stderr=subprocess.DEVNULL)
    wait_port(NGINX_PORT)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return proc, [proc.pid] + [int(c) for c in children]


def start_tokengate(workdir, workers, extra_yaml="", log_level="warn", binary=None):
    conf = os.path.join(workdir, "tokengate.yaml")
    with open(conf, "w") as f:
        f.write(f"listen: 127.0.0.1:{TG_PORT}\nadmin_listen: 127.0.0.1:{TG_ADMIN}\n"
                f"upstream:\n  url: http://127.0.0.1:{BACKEND_PORT}\n{extra_yaml}\n")
    proc = subprocess.Popen([binary or os.path.join(RELEASE, "tokengate"), "run", "--config", conf,
                             "--workers", str(workers), "--log-level", log_level], stderr=subprocess.DEVNULL)
    wait_port(TG_ADMIN, "/readyz")
    return proc, [proc.pid]


def start_flask(workdir):
    venv = os.path.join(BENCHES, ".venv")
    if not os.path.exists(os.path.join(venv, "bin", "gunicorn")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "flask", "pyjwt", "gunicorn"], check=True)
    proc = subprocess.Popen([os.path.join(venv, "bin", "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{FLASK_PORT}",
                             "--chdir", BENCHES, "--log-level", "warning", "flask_contactsmanager:app"],
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{FLASK_PORT}/generate-token", data=b'{"userId":"u"}', method="POST")
            urllib.request.urlopen(req, timeout=1).read()
            break
        except Exception:
            time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return proc, [proc.pid] + [int(c) for c in children]


def token_scenarios(args, workdir):
    """Token routes vs forwarding (same tokengate build), and the Flask baseline."""
    workers = 2
    others = [tuple(a.split("=", 1)) for a in args.also]
    results = {"forward": [], "token warm": [], "token limited": [], "token cached": [], "token cold": [], "flask": []}
    cases = [("forward", "false", "/", None, None), ("token warm", "false", "/generate-token", "post.lua", None),
             ("token limited", "false", "/generate-token", "post.lua", None),
             ("token cached", "true", "/generate-token", "post.lua", None),
             ("token cold", "false", "/generate-token", "cold_cookie.lua", None)]
    for other, binary in others:
        for name in ("forward", "token warm"):
            results[f"{name} ({other})"] = []
            case = next(c for c in cases if c[0] == name)
            cases.append((f"{name} ({other})",) + case[1:4] + (binary,))
    # Limits that never refuse during the run, so only their cost shows.
    with_limits = TOKEN_ROUTE.replace("routes:", "rate_limits:\n  per_ip: {{ key: client_ip, rate: 100000000, per: 1s }}\n  per_user: {{ key: user, rate: 100000000, per: 1s }}\nroutes:").replace("    auth: session\n", "    auth: session\n    rate_limits: [per_ip, per_user]\n")
    for _ in range(args.rounds):
        for name, cache, path, script, binary in cases:
            route = with_limits if name == "token limited" else TOKEN_ROUTE
            proc, pids = start_tokengate(workdir, workers, route.format(cache=cache), binary=binary)
            try:
                if name != "token cold":
                    wrk(TG_PORT, path, 1, args.connections, (), script)  # warm the auth cache
                results[name].append(measure(TG_PORT, pids, path, args.seconds, args.connections, (), script))
            finally:
                stop(proc)
        proc, pids = start_flask(workdir)
        try:
            results["flask"].append(measure(FLASK_PORT, pids, "/generate-token", args.seconds, args.connections, (), "post.lua"))
        finally:
            stop(proc)
    print(f"\n== token route (ContactsManager claims, HS256), {workers} workers; flask: gunicorn -w 2")
    print(f"{'scenario':<24}{'req/s':>10}{'p99 ms':>9}{'CPU µs/req':>12}{'user':>7}{'system':>8}"
          f"   (medians of {args.rounds} rounds)")
    for name, rows in results.items():
        print(f"{name:<24}{median(rows, 'rps'):>10.0f}{median(rows, 'p99'):>9.2f}{median(rows, 'cpu_us'):>12.1f}"
              f"{median(rows, 'user_us'):>7.1f}{median(rows, 'sys_us'):>8.1f}")
    fwd, warm, flask = results["forward"], results["token warm"], results["flask"]
    print(f"token warm (cache_tokens off) / forward, CPU per request: {median(warm, 'cpu_us') / median(fwd, 'cpu_us'):.2f}")
    for other, _ in others:
        fwd_o, warm_o = results[f"forward ({other})"], results[f"token warm ({other})"]
        print(f"{other}: token warm / forward, CPU per request: {median(warm_o, 'cpu_us') / median(fwd_o, 'cpu_us'):.2f}; "
              f"this build / {other}: token warm {median(warm, 'cpu_us') / median(warm_o, 'cpu_us'):.3f}, "
              f"forward {median(fwd, 'cpu_us') / median(fwd_o, 'cpu_us'):.3f}")
    print(f"token warm / flask, requests/s: {median(warm, 'rps') / median(flask, 'rps'):.1f}x")
    limited = results["token limited"]
    print(f"token with limits / without: requests/s {median(limited, 'rps') / median(warm, 'rps'):.3f}, "
          f"CPU per request {median(limited, 'cpu_us') / median(warm, 'cpu_us'):.3f}")


# A forward-auth entry over the token route's keys and session hook (warm cache), a per-user
# limit that never refuses, and the user's id for the app; no token (the token
# route's HS256 mint is measured beside it in the same run).
FORWARD_AUTH = TOKEN_ROUTE.split("routes:")[0].format(cache="") + """forwarding: { trusted_proxies: [127.0.0.1/32] }
rate_limits:
  per_user: { key: user, rate: 100000000, per: 1s }
forward_auth:
  - name: app
    path: /_tokengate/auth
    auth: session
    rate_limits: [per_user]
    response_headers: { X-Auth-Request-User: "{{ user.id }}" }
    compat: nginx
"""


def nginx_auth_conf(workdir):
    """The baseline nginx (one worker) plus the shipped auth_request snippets, asking tokengate."""
    conf = nginx_conf(workdir, 1)
    with open(conf) as f:
        text = f.read()
    deploy = os.path.join(ROOT, "deploy", "nginx")
    text = text.replace("  upstream app {", f"  upstream tokengate_auth {{ server 127.0.0.1:{TG_PORT}; keepalive 64; }}\n  upstream app {{")
    text = text.replace("    location / {\n", f"    include {deploy}/tokengate-auth.conf;\n    location / {{\n      include {deploy}/tokengate-auth-request.conf;\n", 1)
    auth_conf = conf.replace(".conf", "-auth.conf")
    with open(auth_conf, "w") as f:
        f.write(text)
    return auth_conf


def forward_auth_scenario(args, workdir):
    """nginx alone vs nginx asking tokengate (auth_request, warm session cache) before each
    request; tokengate's CPU per decision beside its CPU per token-route request (HS256, warm)."""
    results = {"nginx": [], "nginx+auth": [], "token warm": []}
    cookie = ("Cookie: session=bench-user",)
    for _ in range(args.rounds):
        proc, pids = start_nginx(workdir, 1)
        try:
            results["nginx"].append(measure(NGINX_PORT, pids, "/", args.seconds, args.connections, cookie))
        finally:
            stop(proc)
        tg, tg_pids = start_tokengate(workdir, 1, FORWARD_AUTH)
        conf = nginx_auth_conf(workdir)
        ngx = subprocess.Popen(["nginx", "-c", conf, "-p", workdir], stderr=subprocess.DEVNULL)
        try:
            wait_port(NGINX_PORT)
            ngx_pids = [ngx.pid] + [int(c) for c in subprocess.run(["pgrep", "-P", str(ngx.pid)], capture_output=True, text=True).stdout.split()]
            wrk(NGINX_PORT, "/", 1, args.connections, cookie)  # warm the session cache
            before_tg = cpu_seconds(tg_pids)
            row = measure(NGINX_PORT, ngx_pids, "/", args.seconds, args.connections, cookie)
            row["tg_us"] = (cpu_seconds(tg_pids) - before_tg) / (row["rps"] * args.seconds) * 1e6
            results["nginx+auth"].append(row)
        finally:
            stop(ngx)
            stop(tg)
        tg, tg_pids = start_tokengate(workdir, 1, TOKEN_ROUTE.format(cache="false"))
        try:
            wrk(TG_PORT, "/generate-token", 1, args.connections, (), "post.lua")
            results["token warm"].append(measure(TG_PORT, tg_pids, "/generate-token", args.seconds, args.connections, (), "post.lua"))
        finally:
            stop(tg)
    print(f"\n== forward auth: nginx (1 worker) alone, and asking tokengate (1 worker) with the shipped auth_request snippets")
    print(f"{'target':<16}{'req/s':>10}{'p99 ms':>9}{'nginx CPU µs/req':>18}{'tokengate CPU µs':>18}   (medians of {args.rounds} rounds)")
    for name in ("nginx", "nginx+auth"):
        rows = results[name]
        tg_us = f"{median(rows, 'tg_us'):>18.1f}" if name == "nginx+auth" else f"{'-':>18}"
        print(f"{name:<16}{median(rows, 'rps'):>10.0f}{median(rows, 'p99'):>9.2f}{median(rows, 'cpu_us'):>18.1f}{tg_us}")
    alone, auth, token = results["nginx"], results["nginx+auth"], results["token warm"]
    print(f"p99 added by the decision: {median(auth, 'p99') - median(alone, 'p99'):.2f} ms "
          f"({median(auth, 'p99') / median(alone, 'p99'):.2f}x); requests/s {median(auth, 'rps') / median(alone, 'rps'):.2f}x")
    print(f"tokengate CPU per decision {median(auth, 'tg_us'):.1f} µs vs per token-route request (HS256, warm, "
          f"direct) {median(token, 'cpu_us'):.1f} µs: {median(auth, 'tg_us') / median(token, 'cpu_us'):.2f}x")


def generated_config(workdir, routes=200, keys=50):
    """TOKEN_ROUTE (cache off) plus `routes` more routes over `keys` more keys (a fifth ES256, a
    fifth RS256, the rest HS256), as benches/reload.rs generates them."""
    tg = os.path.join(RELEASE, "tokengate")
    key_lines, ids = [], []
    for i in range(keys):
        alg, prefix = ("ES256", "es") if i % 5 == 0 else ("RS256", "rs") if i % 5 == 1 else ("HS256", "hs")
        key_id = f"{prefix}-{i}"
        ids.append(key_id)
        if alg == "HS256":
            key_lines.append(f"  - {{ id: {key_id}, algorithm: HS256, secret: secret-{i}-for-the-bench }}")
            continue
        pem = os.path.join(workdir, f"{key_id}.pem")
        if not os.path.exists(pem):
            subprocess.run([tg, "keygen", "--alg", alg, "--out", pem], check=True)
        key_lines.append(f"  - {{ id: {key_id}, algorithm: {alg}, private_key_file: {pem} }}")
    t = lambda source: "'{{ " + source + " }}'"
    route_lines = [
        f"  - {{ name: r{i}, path: '/t/{i}/{{x}}', auth: session, tokens: {{ token: {{ key: {ids[i % keys]}, ttl: 1h, "
        f"claims: {{ sub: {t('user.id')}, x: {t('path.x')}, jti: {t('uuid')} }} }} }}, "
        f"response: {{ body: {{ token: {t('tokens.token')} }} }} }}"
        for i in range(routes)]
    base = TOKEN_ROUTE.format(cache="false")
    first_key, rest = base.split("\n", 1)
    keys_yaml = "keys:\n  - " + first_key[len("keys: ["):-1] + "\n" + "\n".join(key_lines) + "\n"
    return keys_yaml + rest + "\n".join(route_lines) + "\n"


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


def reload_scenario(args, workdir):
    """p99 of forwarded and token traffic with the config file rewritten every second (the file
    watcher reloads it) against the same without, in the same process and run."""
    workers = 2
    conf = os.path.join(workdir, "tokengate.yaml")
    configs = {"token route": TOKEN_ROUTE.format(cache="false"), "200 routes, 50 keys": generated_config(workdir)}
    print(f"\n== reload every second vs none, {workers} workers (p99 ms, medians of {args.rounds} rounds)")
    print(f"{'config':<22}{'traffic':<10}{'steady':>9}{'reloading':>11}{'ratio':>8}{'reloads':>9}{'ms/reload':>11}")
    for label, extra in configs.items():
        proc, pids = start_tokengate(workdir, workers, extra)
        rows = {}
        try:
            wrk(TG_PORT, "/generate-token", 1, args.connections, (), "post.lua")  # warm the auth cache
            for traffic, path, script in (("forward", "/", None), ("token", "/generate-token", "post.lua")):
                steady, reloading, reloads = [], [], 0
                for i in range(args.rounds):
                    # Alternate which goes first, so the order does not favour either.
                    if i % 2 == 0:
                        steady.append(measure(TG_PORT, pids, path, args.seconds, args.connections, (), script)["p99"])
                    before = metric(TG_ADMIN, 'tokengate_config_reloads_total{result="success"}')
                    done = [False]

                    def rewrite():
                        n = 0
                        while not done[0]:
                            time.sleep(1)
                            n += 1
                            with open(conf) as f:
                                text = f.read()
                            # A change that matters to no request: a claim of its own.
                            text = re.sub(r"org_id: org-\d+", f"org_id: org-{n}", text)
                            with open(conf, "w") as f:
                                f.write(text)

                    t = threading.Thread(target=rewrite)
                    t.start()
                    try:
                        reloading.append(measure(TG_PORT, pids, path, args.seconds, args.connections, (), script)["p99"])
                    finally:
                        done[0] = True
                        t.join()
                    time.sleep(0.5)
                    reloads += metric(TG_ADMIN, 'tokengate_config_reloads_total{result="success"}') - before
                    if i % 2 == 1:
                        steady.append(measure(TG_PORT, pids, path, args.seconds, args.connections, (), script)["p99"])
                rows[traffic] = (statistics.median(steady), statistics.median(reloading), reloads)
            total = metric(TG_ADMIN, "tokengate_config_reload_duration_seconds_sum")
            count = metric(TG_ADMIN, "tokengate_config_reload_duration_seconds_count")
            failures = metric(TG_ADMIN, 'tokengate_config_reloads_total{result="failure"}')
            if failures:
                sys.exit(f"{failures:.0f} reloads failed")
        finally:
            stop(proc)
        for traffic, (s, r, n) in rows.items():
            print(f"{label:<22}{traffic:<10}{s:>9.2f}{r:>11.2f}{r / s:>8.2f}{n:>9.0f}{total / count * 1e3:>11.2f}")


def ledger_scenario(args, workdir):
    """The token route with no ledger, a SQLite ledger (queued, then commit) and, when
    TOKENGATE_BENCH_POSTGRES_URL is set, a PostgreSQL one (a fresh schema via psql), interleaved.
    After each run the ledger's writes must equal the tokens minted: nothing is dropped."""
    workers = 2
    base = TOKEN_ROUTE.format(cache="false")
    pg = os.environ.get("TOKENGATE_BENCH_POSTGRES_URL")
    ledgers = {"no ledger": "", "sqlite queued": "queued", "sqlite commit": "commit"}
    if pg:
        ledgers["postgres queued"] = "pg"
    if args.ledgers:
        ledgers = {name: kind for name, kind in ledgers.items() if kind in ("", *args.ledgers.split(","))}
    results = {name: [] for name in ledgers}
    for i in range(args.rounds):
        for name, kind in ledgers.items():
            db = os.path.join(workdir, f"ledger-{i}-{kind}.db")
            if kind in ("queued", "commit"):
                extra = f"ledger: {{ type: sqlite, path: {db}, durability: {kind} }}\n"
            elif kind == "pg":
                schema = f"tg_bench_{os.getpid()}_{i}"
                subprocess.run(["psql", pg, "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"], check=True)
                sep = "&" if "?" in pg else "?"
                extra = f"ledger: {{ type: postgres, url: '{pg}{sep}options=-csearch_path%3D{schema}' }}\n"
            else:
                extra = ""
            proc, pids = start_tokengate(workdir, workers, base + extra)
            try:
                wrk(TG_PORT, "/generate-token", 1, args.connections, (), "post.lua", True)  # warm the auth cache
                results[name].append(measure(TG_PORT, pids, "/generate-token", args.seconds, args.connections, (), "post.lua", True))
                # Whatever was refused must be the ledger's 503 (a full queue), nothing else.
                text = urllib.request.urlopen(f"http://127.0.0.1:{TG_ADMIN}/metrics", timeout=2).read().decode()
                refused = sum(float(l.split()[-1]) for l in text.splitlines()
                              if l.startswith("tokengate_requests_total{") and 'status="200"' not in l)
                shed = sum(float(l.split()[-1]) for l in text.splitlines()
                           if l.startswith("tokengate_requests_total{") and 'status="503"' in l)
                if refused != shed:
                    sys.exit(f"{name}: {refused - shed:.0f} answers neither 200 nor the ledger's 503")
                if kind:
                    minted = metric(TG_ADMIN, "tokengate_tokens_minted_total")
                    deadline = time.time() + 10
                    while metric(TG_ADMIN, "tokengate_ledger_writes_total") < minted and time.time() < deadline:
                        time.sleep(0.05)
                    written = metric(TG_ADMIN, "tokengate_ledger_writes_total")
                    if written != minted:
                        sys.exit(f"{name}: {minted:.0f} tokens minted, {written:.0f} recorded")
            finally:
                stop(proc)
    print(f"\n== ledger, token route, {workers} workers (medians of {args.rounds} rounds; every token recorded)")
    print(f"{'ledger':<16}{'req/s':>10}{'p99 ms':>9}{'CPU µs/req':>12}{'req/s ratio':>13}{'503 %':>8}")
    none = results["no ledger"]
    for name, rows in results.items():
        ratio = median(rows, "rps") / median(none, "rps")
        print(f"{name:<16}{median(rows, 'rps'):>10.0f}{median(rows, 'p99'):>9.2f}{median(rows, 'cpu_us'):>12.1f}"
              f"{ratio:>13.2f}{median(rows, 'shed'):>8.2f}")
    print("503 %: answers refused because the ledger's queue was full (the database fell behind)")


def softhsm_token(workdir):
    """A SoftHSM2 token in `workdir` with an ES256 key labelled `es` (made inside it by
    pkcs11-tool), and a file ES256 key beside it; sets SOFTHSM2_CONF for tokengate."""
    tokens = os.path.join(workdir, "softhsm-tokens")
    os.makedirs(tokens, exist_ok=True)
    conf = os.path.join(workdir, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = conf
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"],
                   check=True, capture_output=True)
    subprocess.run(["pkcs11-tool", "--module", SOFTHSM, "--token-label", "bench", "--login", "--pin", "1234",
                    "--keypairgen", "--key-type", "EC:prime256v1", "--label", "es", "--id", "01", "--usage-sign"],
                   check=True, capture_output=True)
    pem = os.path.join(workdir, "es256.pem")
    subprocess.run([os.path.join(RELEASE, "tokengate"), "keygen", "--alg", "ES256", "--out", pem], check=True)
    return {
        "file": f"keys: [{{{{ id: cm, algorithm: ES256, private_key_file: {pem} }}}}]",
        "hsm": f"keys: [{{{{ id: cm, algorithm: ES256, pkcs11: {{{{ module: {SOFTHSM}, token_label: bench, key_label: es, pin: '1234' }}}} }}}}]",
    }


def hsm_scenario(args, workdir):
    """The token route (ES256) signing with a file key and with a key inside SoftHSM2, with and
    without cache_tokens; then forwarded GETs measured alone and while a second wrk mints through
    each key, so that the p99 shows whether signing ever holds up a worker."""
    workers = 2
    keys = softhsm_token(workdir)
    route = TOKEN_ROUTE.split("\n", 1)[1]
    cases = [("file", "false"), ("hsm", "false"), ("file", "true"), ("hsm", "true")]
    results = {f"{key} cache {'on' if cache == 'true' else 'off'}": [] for key, cache in cases}
    beside = {"alone": [], "beside file mints": [], "beside hsm mints": []}
    for _ in range(args.rounds):
        for key, cache in cases:
            proc, pids = start_tokengate(workdir, workers, (keys[key] + "\n" + route).format(cache=cache))
            try:
                wrk(TG_PORT, "/generate-token", 1, args.connections, (), "post.lua")
                name = f"{key} cache {'on' if cache == 'true' else 'off'}"
                results[name].append(measure(TG_PORT, pids, "/generate-token", args.seconds, args.connections, (), "post.lua"))
            finally:
                stop(proc)
        for name, key in [("alone", None), ("beside file mints", "file"), ("beside hsm mints", "hsm")]:
            proc, pids = start_tokengate(workdir, workers, (keys[key or "file"] + "\n" + route).format(cache="false"))
            try:
                load = None
                if key:
                    load = threading.Thread(target=wrk, args=(TG_PORT, "/generate-token", args.seconds + 2, args.connections, (), "cold_cookie.lua"))
                    load.start()
                    time.sleep(1)
                beside[name].append(measure(TG_PORT, pids, "/", args.seconds, 8))
                if load:
                    load.join()
            finally:
                stop(proc)
    print(f"\n== HSM signing (SoftHSM2 {subprocess.run(['softhsm2-util', '--version'], capture_output=True, text=True).stdout.strip()}, ES256), "
          f"token route, {workers} workers (medians of {args.rounds} rounds)")
    print(f"{'key':<16}{'mints/s':>10}{'p99 ms':>9}{'CPU µs/req':>12}")
    for name, rows in results.items():
        print(f"{name:<16}{median(rows, 'rps'):>10.0f}{median(rows, 'p99'):>9.2f}{median(rows, 'cpu_us'):>12.1f}")
    off = median(results["hsm cache off"], "rps") / median(results["file cache off"], "rps")
    on = median(results["hsm cache on"], "rps") / median(results["file cache on"], "rps")
    print(f"hsm/file mints/s: cache off {off:.2f}, cache on {on:.2f}")
    print(f"\n{'forwarded GET':<20}{'req/s':>10}{'p99 ms':>9}   (8 connections; the minting wrk: cold cookies, -c{args.connections})")
    for name, rows in beside.items():
        print(f"{name:<20}{median(rows, 'rps'):>10.0f}{median(rows, 'p99'):>9.2f}")
    ratio = median(beside["beside hsm mints"], "p99") / median(beside["beside file mints"], "p99")
    print(f"forwarded p99 beside hsm mints / beside file-key mints: {ratio:.2f}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def report(title, results, baseline="nginx", subject="tokengate"):
    print(f"\n{title}")
    print(f"{'target':<16}{'req/s':>10}{'p99 ms':>9}{'CPU µs/req':>12}{'user':>7}{'system':>8}"
          f"   (medians of {len(results[subject])} rounds)")
    for name, rows in results.items():
        print(f"{name:<16}{median(rows, 'rps'):>10.0f}{median(rows, 'p99'):>9.2f}{median(rows, 'cpu_us'):>12.1f}"
              f"{median(rows, 'user_us'):>7.1f}{median(rows, 'sys_us'):>8.1f}")
    b, s = results[baseline], results[subject]
    print(f"ratio {subject}/{baseline}: req/s {median(s, 'rps') / median(b, 'rps'):.2f}, "
          f"p99 {median(s, 'p99') / median(b, 'p99'):.2f}, CPU/req {median(s, 'cpu_us') / median(b, 'cpu_us'):.2f}")


def forwarding(args, workdir, workers, path, connections):
    """direct, nginx and tokengate forwarding GET `path` (`/`: 2 bytes, `/1m`: 1 MiB), interleaved.
    For 1 MiB, nginx also with its default `proxy_buffering on` (it reads the whole response
    into its buffers, then writes it out), beside the streaming one."""
    large = path != "/"
    nginxes = [("nginx", False)] + ([("nginx buffered", True)] if large else [])
    others = [tuple(a.split("=", 1)) for a in args.also]
    results = {"direct": []} | {name: [] for name, _ in nginxes} | {"tokengate": []} | {name: [] for name, _ in others}
    for _ in range(args.rounds):
        results["direct"].append(measure(BACKEND_PORT, [], path, args.seconds, connections))
        for name, buffering in nginxes:
            proc, pids = start_nginx(workdir, workers, buffering)
            try:
                results[name].append(measure(NGINX_PORT, pids, path, args.seconds, connections))
            finally:
                stop(proc)
        for name, binary in [("tokengate", None)] + others:
            proc, pids = start_tokengate(workdir, workers, binary=binary)
            try:
                results[name].append(measure(TG_PORT, pids, path, args.seconds, connections))
            finally:
                stop(proc)
    what = f"forwarding 1 MiB responses (wrk -c{connections})" if large else "forwarding"
    report(f"== {what}, {workers} worker(s) each", results)
    if large:
        b, s = results["nginx buffered"], results["tokengate"]
        print(f"ratio tokengate/nginx buffered: req/s {median(s, 'rps') / median(b, 'rps'):.2f}, "
              f"p99 {median(s, 'p99') / median(b, 'p99'):.2f}, CPU/req {median(s, 'cpu_us') / median(b, 'cpu_us'):.2f}")
    for name, _ in others:
        b, s = results[name], results["tokengate"]
        print(f"ratio tokengate/{name}: req/s {median(s, 'rps') / median(b, 'rps'):.3f}, "
              f"p99 {median(s, 'p99') / median(b, 'p99'):.3f}, CPU/req {median(s, 'cpu_us') / median(b, 'cpu_us'):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--ledgers", default="", help="ledger scenario: comma-separated queued, commit, pg (default: all)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=BINARY",
                    help="forward, large, token: another tokengate binary measured in the same interleaved rounds")
    ap.add_argument("--scenarios", default="forward,token", help="comma-separated: forward, large (1 MiB responses), token, forward_auth, reload, ledger, hsm")
    args = ap.parse_args()
    args.scenarios = args.scenarios.split(",")

    workdir = tempfile.mkdtemp(prefix="tokengate-load-")
    backend = subprocess.Popen([os.path.join(RELEASE, "examples", "bench_backend"), f"127.0.0.1:{BACKEND_PORT}"])
    try:
        wait_port(BACKEND_PORT)
        print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} interleaved rounds; "
              f"nginx {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}; "
              f"both proxies log nothing per request")
        if "token" in args.scenarios:
            token_scenarios(args, workdir)
        if "forward_auth" in args.scenarios:
            forward_auth_scenario(args, workdir)
        if "reload" in args.scenarios:
            reload_scenario(args, workdir)
        if "ledger" in args.scenarios:
            ledger_scenario(args, workdir)
        if "hsm" in args.scenarios:
            hsm_scenario(args, workdir)
        for workers in ([int(w) for w in args.workers.split(",")] if "forward" in args.scenarios else []):
            forwarding(args, workdir, workers, "/", args.connections)
        for workers in ([int(w) for w in args.workers.split(",")] if "large" in args.scenarios else []):
            forwarding(args, workdir, workers, "/1m", 10)
    finally:
        stop(backend)


if __name__ == "__main__":
    main()
