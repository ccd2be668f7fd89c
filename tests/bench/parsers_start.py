#!/usr/bin/env python3
"""Engine start time with and without the tool/reasoning parsers, on the real engine.

The same tiny Qwen-3-style model (tests/real-engine/make_tiny_model.py --family qwen3) is
configured twice: `with` gets the family's parsers (--enable-auto-tool-choice
--tool-call-parser hermes --reasoning-parser qwen3), `without` has tool_parser and
reasoning_parser "none". vllamad starts each in turn (alternating, one loaded at a time) and
`vllamactl preload` reports the time to ready; medians and spreads are printed.

    python3 tests/bench/parsers_start.py VLLM FAMILIES_DIR [RUNS]     (RUNS default 3)
"""
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

vllm, families = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
bins = os.path.join(root, "target", "debug")
tmp = tempfile.mkdtemp()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
model = os.path.join(families, "qwen3")
common = 'args = ["--enforce-eager", "--kv-cache-memory-bytes", "64M", "--max-model-len", "512", "--dtype", "float32"]\nenv = { VLLM_TARGET_DEVICE = "cpu" }\n'
config = f"""[api]
listen = "127.0.0.1:{port}"
[admin]
socket = "{tmp}/admin.sock"
[paths]
state_dir = "{tmp}/state"
runtime_dir = "{tmp}/run"
cache_dir = "{tmp}/cache"
[engine]
program = "{vllm}"
max_loaded = 1
load_timeout = "5m"
[log]
format = "text"
[models."with"]
source = "{model}"
{common}[models."without"]
source = "{model}"
tool_parser = "none"
reasoning_parser = "none"
{common}"""
open(f"{tmp}/vllama.toml", "w").write(config)
daemon = subprocess.Popen([f"{bins}/vllamad", "--config", f"{tmp}/vllama.toml"],
                          stdout=open(f"{tmp}/log", "w"), stderr=subprocess.STDOUT)
ctl = [f"{bins}/vllamactl", "--socket", f"{tmp}/admin.sock"]
for _ in range(100):
    if os.path.exists(f"{tmp}/admin.sock"):
        break
    time.sleep(0.1)
times = {"with": [], "without": []}
try:
    for i in range(runs):
        for name in (["with", "without"] if i % 2 == 0 else ["without", "with"]):
            out = subprocess.run(ctl + ["preload", name], capture_output=True, text=True, timeout=400)
            m = re.search(r"is ready \(([0-9.]+)s\)", out.stdout)
            if not m:
                sys.exit(f"preload {name} failed: {out.stdout}{out.stderr}")
            times[name].append(float(m.group(1)))
            subprocess.run(ctl + ["unload", name], capture_output=True, timeout=120)
            print(f"run {i + 1} {name:8s} {times[name][-1]:6.1f} s", flush=True)
finally:
    daemon.terminate()
    daemon.wait(60)
for name, t in times.items():
    print(f"{name:8s} median {statistics.median(t):5.1f} s  (min {min(t):.1f}, max {max(t):.1f}, n={len(t)})")
