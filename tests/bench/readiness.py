#!/usr/bin/env python3
"""Readiness overhead: from the moment an engine's /health turns 200 to the moment vllamad
forwards the first request to it. Uses the fake engine, which records both times.

usage: tests/bench/readiness.py [TARGET_DIR] [RUNS]     (TARGET_DIR: target/release)
"""
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request
from procs import free_port

target = sys.argv[1] if len(sys.argv) > 1 else "target/release"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
vllamad, fake = os.path.join(target, "vllamad"), os.path.join(target, "fake-vllm")

with tempfile.TemporaryDirectory() as d:
    port = free_port()
    model = os.path.join(d, "model"); os.makedirs(model)
    open(os.path.join(model, "config.json"), "w").write("{}")
    state = os.path.join(d, "fake")
    cfg = os.path.join(d, "v.toml")
    open(cfg, "w").write(f"""[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{d}/a.sock"
[paths]\nstate_dir = "{d}/s"\nruntime_dir = "{d}/r"\ncache_dir = "{d}/c"\n[log]\nfilter = "warn"
[engine]\nprogram = "{os.path.abspath(fake)}"\nkeep_alive = 0
[models."m"]\nsource = "{model}"\nenv = {{ FAKE_VLLM_STARTUP_MS = "437", FAKE_VLLM_STATE_DIR = "{state}", FAKE_VLLM_TOKEN_MS = "0" }}
""")
    p = subprocess.Popen([vllamad, "--config", cfg], stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    overheads, totals = [], []
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}).encode()
    for i in range(runs):
        # keep_alive 0: the engine stops once idle, so each request is a cold start.
        while True:
            req = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            if os.path.exists(f"{d}/a.sock"):
                break
        t0 = time.time()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body), timeout=30).read()
        totals.append((time.time() - t0) * 1000)
        ready_at = int(open(os.path.join(state, "ready_at_ms")).read())
        first = [json.loads(l) for l in open(os.path.join(state, "requests.jsonl")) if '"/v1/chat' in l][0]
        overheads.append(first["t_ms"] - ready_at)
        os.remove(os.path.join(state, "requests.jsonl"))
        time.sleep(0.3)  # let keep_alive 0 stop it
    p.send_signal(signal.SIGTERM); p.wait(10)
print(f"readiness overhead (health 200 -> first request at the engine): median {statistics.median(overheads):.0f} ms, "
      f"p90 {sorted(overheads)[int(0.9 * len(overheads)) - 1]:.0f} ms, max {max(overheads):.0f} ms (n={runs}, health_interval 25ms)")
print(f"cold request with a 437 ms engine start: median {statistics.median(totals):.0f} ms")
