#!/usr/bin/env python3
"""Real vLLM on the CPU, with and without vllamad in front.

  eval "$(tests/real-engine/install.sh)"; export VLLAMA_REAL_VLLM VLLAMA_TINY_MODEL
  cargo build --release && tests/bench/real_engine.py [RUNS]

1. Cold start, median of RUNS (default 5): `vllm serve` alone (spawn -> /health 200, polled
   every 25 ms) against vllamad's preload of the same model (admin request -> ready).
2. Request latency on one warm engine: straight to its Unix socket against through
   vllamad's TCP listener, interleaved, at concurrency 1 and 8 (chat, 16 tokens, not
   streamed). Prints medians, p90 and the ratio.
"""
import http.client, json, os, signal, socket, statistics, subprocess, sys, tempfile, threading, time
from procs import free_port

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
vllm, model = os.environ["VLLAMA_REAL_VLLM"], os.environ["VLLAMA_TINY_MODEL"]
target = os.environ.get("TARGET", "target/release")
ARGS = ["--enforce-eager", "--kv-cache-memory-bytes", "64M", "--max-model-len", "512", "--dtype", "float32"]
ENV = {"PATH": os.environ["PATH"], "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=300)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(conn, method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"content-type": "application/json"})
    r = conn.getresponse()
    return r.status, r.read()


def direct_cold_start(tmp):
    sock = os.path.join(tmp, "direct.sock")
    if os.path.exists(sock):
        os.remove(sock)
    env = dict(ENV, TMPDIR=tmp)
    t0 = time.perf_counter()
    p = subprocess.Popen([vllm, "serve", model, "--served-model-name", "m", "--uds", sock] + ARGS,
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        try:
            if call(UnixHTTP(sock), "GET", "/health")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.025)
    took = time.perf_counter() - t0
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    time.sleep(1)
    return took


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def load(make_conn, path, body, concurrency, per_worker):
    latencies, lock = [], threading.Lock()

    def worker():
        conn = make_conn()
        for _ in range(per_worker):
            t = time.perf_counter()
            status, _ = call(conn, "POST", path, body)
            assert status == 200, status
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return latencies, time.perf_counter() - t0


with tempfile.TemporaryDirectory() as d:
    direct = [direct_cold_start(d) for _ in range(runs)]

    port = free_port()
    cfg = os.path.join(d, "v.toml")
    with open(cfg, "w") as f:
        f.write(f'''[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{d}/admin.sock"
[paths]\nstate_dir = "{d}/s"\nruntime_dir = "{d}/r"\ncache_dir = "{d}/c"\n[log]\nfilter = "warn"
[engine]\nprogram = "{vllm}"\nload_timeout = "5m"\nargs = {json.dumps(ARGS)}\nenv = {{ VLLM_TARGET_DEVICE = "cpu" }}
[models."m"]\nsource = "{model}"\n''')
    daemon = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg], stderr=subprocess.DEVNULL)
    while not os.path.exists(f"{d}/admin.sock"):
        time.sleep(0.05)
    through = []
    for i in range(runs):
        t0 = time.perf_counter()
        status, body = call(UnixHTTP(f"{d}/admin.sock"), "POST", "/v1/preload", {"model": "m"})
        assert b'"state":"ready"' in body, body
        through.append(time.perf_counter() - t0)
        if i + 1 < runs:
            call(UnixHTTP(f"{d}/admin.sock"), "POST", "/v1/unload", {"model": "m"})
            time.sleep(1)
    print(f"cold start (n={runs}): vllm serve alone median {statistics.median(direct):.1f} s "
          f"[{min(direct):.1f}-{max(direct):.1f}]; through vllamad median {statistics.median(through):.1f} s "
          f"[{min(through):.1f}-{max(through):.1f}]")

    engines = json.loads(call(UnixHTTP(f"{d}/admin.sock"), "GET", "/v1/engines")[1])
    engine_sock = engines[0]["endpoint"].removeprefix("unix:")
    served = engines[0]["served_name"]
    body = {"model": served, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16, "ignore_eos": True}
    via = dict(body, model="m")
    for c, per in ((1, 40), (8, 10)):
        load(lambda: UnixHTTP(engine_sock), "/v1/chat/completions", body, c, 2)  # warm-up
        results = {"direct": [], "vllamad": []}
        walls = {"direct": 0.0, "vllamad": 0.0}
        for _ in range(3):  # interleave blocks so drift hits both alike
            lat, wall = load(lambda: UnixHTTP(engine_sock), "/v1/chat/completions", body, c, per)
            results["direct"] += lat; walls["direct"] += wall
            lat, wall = load(lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=300),
                             "/v1/chat/completions", via, c, per)
            results["vllamad"] += lat; walls["vllamad"] += wall
        dm, vm = statistics.median(results["direct"]), statistics.median(results["vllamad"])
        print(f"c={c}: direct p50 {dm*1000:.1f} ms p90 {percentile(results['direct'], 0.9)*1000:.1f} ms; "
              f"via vllamad p50 {vm*1000:.1f} ms p90 {percentile(results['vllamad'], 0.9)*1000:.1f} ms; "
              f"ratio p50 {vm/dm:.3f}; throughput ratio {walls['direct']/walls['vllamad']:.3f} "
              f"(n={len(results['direct'])} each)")
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(60)
