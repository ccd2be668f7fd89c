#!/usr/bin/env python3
"""Cost of pulling a model the store already has (revision and tree asked again, nothing
downloaded), for two vllamad binaries: OLD NEW (paths). Used to measure building the hub
client's TLS configuration once per process instead of once per pull.

usage: cargo build --workspace && cargo build --release -p vllama-testkit &&
       tests/bench/repull.py OLD_VLLAMAD NEW_VLLAMAD
"""
import json, os, socket, statistics, subprocess, sys, tempfile, time
hubp = subprocess.Popen(["target/release/fake-hub"], stdout=subprocess.PIPE, text=True, env={**os.environ, "FAKE_HUB_BIG_BYTES": "1048576"})
port = int(hubp.stdout.readline().split()[1])
def run(binary, n=30):
    d = tempfile.mkdtemp()
    open(f"{d}/v.toml","w").write(f'[api]\nlisten="127.0.0.1:0"\n[admin]\nsocket="{d}/a.sock"\n[paths]\nstate_dir="{d}/s"\nruntime_dir="{d}/r"\ncache_dir="{d}/c"\n[store]\nendpoint="http://127.0.0.1:{port}"\n[log]\nformat="text"\nfilter="warn"\n')
    p = subprocess.Popen([binary, "--config", f"{d}/v.toml"], stderr=subprocess.DEVNULL)
    while not os.path.exists(f"{d}/a.sock"): time.sleep(0.01)
    ctl = ["target/debug/vllamactl", "--socket", f"{d}/a.sock", "pull", "acme/tiny"]
    subprocess.run(ctl, check=True, capture_output=True)  # first: downloads
    ts = []
    for _ in range(n):
        t = time.perf_counter(); subprocess.run(ctl, check=True, capture_output=True); ts.append((time.perf_counter()-t)*1000)
    p.terminate(); p.wait()
    return statistics.median(ts)
res = {}
for _ in range(3):
    for name, binary in (("old", sys.argv[1]), ("new", sys.argv[2])):
        res.setdefault(name, []).append(run(binary))
hubp.kill()
for k, v in res.items(): print(k, "median ms per pull of an already-stored model:", [round(x,1) for x in v])
