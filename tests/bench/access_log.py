#!/usr/bin/env python3
"""Per-request cost of the access log (and request ids/spans, always on): vllamad's CPU time
per request and requests/s for GET /api/version over keep-alive, with log.access on and off,
logging text to a file as under a plain service manager. Runs each mode 3 times, alternating.

usage: cargo build --release && tests/bench/access_log.py [REQUESTS]
"""
import http.client, os, signal, socket, subprocess, sys, tempfile, time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
target = os.environ.get("TARGET", "target/release")
from procs import cpu_seconds, free_port, on_off


def run(access):
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        cfg = os.path.join(d, "v.toml")
        open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{d}/a.sock"\n'
                             f'[log]\nfilter = "info"\nformat = "text"\naccess = {"true" if access else "false"}\n')
        log = open(os.path.join(d, "log"), "w")
        p = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg], stderr=log)
        while not os.path.exists(f"{d}/a.sock"):
            time.sleep(0.01)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        c0, t0 = cpu_seconds(p.pid), time.perf_counter()
        for _ in range(n):
            conn.request("GET", "/api/version", headers={"Host": "localhost"})
            conn.getresponse().read()
        wall, cpu = time.perf_counter() - t0, cpu_seconds(p.pid) - c0
        p.send_signal(signal.SIGTERM); p.wait(10)
        return cpu / n * 1e6, n / wall


on_off(run, "access log", n)
