#!/usr/bin/env python3
"""Pull throughput and memory: vllamad pulling a model of BYTES (default 2 GiB) of weights
from the fake hub on loopback (tests/src/bin/fake-hub.rs), against curl fetching the same
files to the same disk; and vllamad's peak RSS (VmHWM) during the pull.

usage: cargo build --release --workspace && tests/bench/pull.py [BYTES] [RUNS]
"""
import json, os, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

size = int(sys.argv[1]) if len(sys.argv) > 1 else 2 << 30
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
target = os.environ.get("TARGET", "target/release")

hub = subprocess.Popen([os.path.join(target, "fake-hub")], stdout=subprocess.PIPE, text=True,
                       env={**os.environ, "FAKE_HUB_BIG_BYTES": str(size)})
port = int(hub.stdout.readline().split()[1])
endpoint = f"http://127.0.0.1:{port}"
commit = json.load(urllib.request.urlopen(f"{endpoint}/api/models/acme/big/revision/main"))["sha"]
tree = json.load(urllib.request.urlopen(f"{endpoint}/api/models/acme/big/tree/{commit}?recursive=true"))
wanted = ["config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json", "model.safetensors"]
total = sum(e["size"] for e in tree if e["path"] in wanted)


def vllamad_pull():
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as d:
        cfg = os.path.join(d, "v.toml")
        open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:0"\n[admin]\nsocket = "{d}/a.sock"\n'
                             f'[paths]\nstate_dir = "{d}/state"\nruntime_dir = "{d}/run"\ncache_dir = "{d}/cache"\n'
                             f'[store]\nendpoint = "{endpoint}"\n[log]\nformat = "text"\n')
        p = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg], stderr=subprocess.DEVNULL)
        while not os.path.exists(f"{d}/a.sock"):
            time.sleep(0.01)
        t = time.perf_counter()
        subprocess.run([os.path.join(target, "vllamactl"), "--socket", f"{d}/a.sock", "pull", "acme/big"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        secs = time.perf_counter() - t
        hwm = next(int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmHWM:"))
        p.send_signal(signal.SIGTERM); p.wait(10)
        return secs, hwm / 1024


def curl_pull():
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as d:
        args = ["curl", "-sSfL", "--no-progress-meter", "--parallel", "--parallel-max", "4"]
        for f in wanted:
            args += ["-o", os.path.join(d, f), f"{endpoint}/acme/big/resolve/{commit}/{f}"]
        t = time.perf_counter()
        subprocess.run(args, check=True)
        return time.perf_counter() - t


v, c = [], []
for _ in range(runs):
    c.append(curl_pull())
    v.append(vllamad_pull())
hub.kill()
vs = statistics.median(s for s, _ in v)
cs = statistics.median(c)
mib = total / (1 << 20)
print(f"{mib:.0f} MiB over loopback, median of {runs}:")
print(f"  curl (4 parallel, to disk):              {cs:6.2f} s  {mib / cs:7.0f} MiB/s")
print(f"  vllamad pull (to disk, verified, linked): {vs:6.2f} s  {mib / vs:7.0f} MiB/s")
print(f"  ratio vllamad/curl throughput: {cs / vs:.2f}")
print(f"  vllamad peak RSS (VmHWM) during the pull: {max(h for _, h in v):.1f} MiB")
