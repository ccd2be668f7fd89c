#!/usr/bin/env python3
"""What observability costs: (1) GET /metrics with 4 ready engines (fake vLLM engines, each
re-exposing its own metrics), median and p99 over SCRAPES; (2) the per-request overhead of
request metrics + the access log: vllamad CPU time per request and requests/s for a small
OpenAI chat completion through the pass-through, with [metrics] and log.access on vs both
off, 3 alternating runs of REQUESTS each.

usage: cargo build --release --workspace && tests/bench/metrics_cost.py [SCRAPES] [REQUESTS]
"""
import http.client, json, os, signal, socket, statistics, subprocess, sys, tempfile, time

scrapes = int(sys.argv[1]) if len(sys.argv) > 1 else 200
n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
target = os.environ.get("TARGET", "target/release")
fake = os.path.abspath(os.path.join(target, "fake-vllm"))
from procs import cpu_seconds, free_port, on_off


def start(d, on, models):
    port = free_port()
    cfg = os.path.join(d, "v.toml")
    text = (f'[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{d}/a.sock"\n'
            f'[paths]\nstate_dir = "{d}/state"\nruntime_dir = "{d}/run"\ncache_dir = "{d}/cache"\n'
            f'[log]\nfilter = "info"\nformat = "text"\naccess = {"true" if on else "false"}\n'
            f'[metrics]\nenabled = {"true" if on else "false"}\n'
            f'[engine]\nprogram = "{fake}"\nmax_loaded = {max(models, 1)}\n')
    for i in range(models):
        m = os.path.join(d, f"m{i}"); os.makedirs(m, exist_ok=True)
        open(os.path.join(m, "config.json"), "w").write('{"model_type":"llama"}')
        text += f'[models."m{i}"]\nsource = "{m}"\nenv = {{ FAKE_VLLM_TOKEN_MS = "0", FAKE_VLLM_STARTUP_MS = "50" }}\n'
    open(cfg, "w").write(text)
    p = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg],
                         stderr=open(os.path.join(d, "log"), "w"))
    while not os.path.exists(f"{d}/a.sock"):
        time.sleep(0.01)
    return p, port


def chat(conn, model):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    conn.request("POST", "/v1/chat/completions", body, {"Host": "localhost", "Content-Type": "application/json"})
    r = conn.getresponse(); r.read()
    assert r.status == 200, r.status


# 1. /metrics with 4 engines.
with tempfile.TemporaryDirectory() as d:
    p, port = start(d, True, 4)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(4):
        chat(conn, f"m{i}")
    times = []
    for _ in range(scrapes):
        t = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Host": "localhost"})
        body = conn.getresponse().read()
        times.append((time.perf_counter() - t) * 1000)
    assert body.count(b'vllm_num_requests_running{model="') == 4, body[:2000]
    p.send_signal(signal.SIGTERM); p.wait(30)
times.sort()
print(f"GET /metrics, 4 ready engines: median {statistics.median(times):.2f} ms, "
      f"p99 {times[int(len(times) * 0.99) - 1]:.2f} ms ({len(body)} bytes, {scrapes} scrapes)")


# 2. Per-request overhead, on vs off.
def run(on):
    with tempfile.TemporaryDirectory() as d:
        p, port = start(d, on, 1)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(50):
            chat(conn, "m0")  # warm: engine loaded, connections pooled
        c0, t0 = cpu_seconds(p.pid), time.perf_counter()
        for _ in range(n):
            chat(conn, "m0")
        wall, cpu = time.perf_counter() - t0, cpu_seconds(p.pid) - c0
        p.send_signal(signal.SIGTERM); p.wait(30)
        return cpu / n * 1e6, n / wall


on_off(run, "metrics + access log", n)
