#!/usr/bin/env python3
"""Time from process start to READY=1, and idle RSS, of vllamad.

Usage: tests/bench/startup.py [PATH_TO_VLLAMAD] [RUNS]
Starts vllamad RUNS times (default 20) with a fake NOTIFY_SOCKET and a throwaway config,
measures the time from fork/exec to the READY=1 datagram, reads VmRSS once ready and again
after 100 requests, then stops it with SIGTERM. Prints median/min/max.
"""
import os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request
from procs import free_port

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/vllamad"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

ready_ms, rss_idle, rss_after = [], [], []
for _ in range(runs):
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        cfg = os.path.join(d, "v.toml")
        with open(cfg, "w") as f:
            f.write(f'[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{d}/a.sock"\n[log]\nfilter = "warn"\n')
        ns = os.path.join(d, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); sock.bind(ns); sock.settimeout(10)
        env = dict(os.environ, NOTIFY_SOCKET=ns)
        t0 = time.perf_counter()
        p = subprocess.Popen([binary, "--config", cfg], env=env, stderr=subprocess.DEVNULL)
        while True:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg.splitlines():
                break
        ready_ms.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.2)
        rss_idle.append(rss_kib(p.pid))
        for _ in range(100):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version").read()
        rss_after.append(rss_kib(p.pid))
        p.send_signal(signal.SIGTERM); p.wait(10)

def show(name, xs, unit):
    print(f"{name}: median {statistics.median(xs):.2f} {unit}, min {min(xs):.2f}, max {max(xs):.2f} (n={len(xs)})")

show("start -> READY=1", ready_ms, "ms")
show("RSS idle after READY", [x / 1024 for x in rss_idle], "MiB")
show("RSS after 100 requests", [x / 1024 for x in rss_after], "MiB")
