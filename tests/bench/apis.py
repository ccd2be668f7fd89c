#!/usr/bin/env python3
"""What each public API costs vllamad: the same streamed load (`vllamactl bench`) on one fake
engine through `/v1/chat/completions` (the OpenAI pass-through), `/v1/messages` (Anthropic),
`/v1/responses` (OpenAI Responses) and `/api/chat` (the Ollama translation); requests per
second, latency, and vllamad's CPU time per request. The three pass-throughs relay the
engine's bytes unchanged and should cost the same; the Ollama route parses and rewrites
every event.

usage: cargo build --release --workspace && tests/bench/apis.py [TOKENS] [TOKEN_MS] [ROUNDS]
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time

TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
TOKEN_MS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
LEVELS = [(1, 200), (64, 2560)]
APIS = ["openai", "anthropic", "responses", "ollama"]
target = os.path.abspath(os.environ.get("TARGET", "target/release"))
ctl = os.path.join(target, "vllamactl")
fake = os.path.join(target, "fake-vllm")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import cpu_seconds as cpu, free_port as port, wait_port


def bench(url, api, c, n):
    out = subprocess.run([ctl, "bench", "--url", url, "--api", api, "--model", "tiny", "-c", str(c), "-n", str(n),
                          "--max-tokens", str(TOKENS), "--warmup", "1", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench --api {api} failed: {out.stderr}")
    return json.loads(out.stdout)["levels"][0]


work = tempfile.mkdtemp()
vd = None
try:
    vp = port()
    mdir = os.path.join(work, "m"); os.makedirs(mdir)
    open(os.path.join(mdir, "config.json"), "w").write('{"model_type":"llama"}')
    cfg = os.path.join(work, "v.toml")
    open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:{vp}"\n[admin]\nsocket = "{work}/a.sock"\n'
                         f'[paths]\nstate_dir = "{work}/s"\nruntime_dir = "{work}/r"\ncache_dir = "{work}/c"\n'
                         f'[log]\nformat = "text"\naccess = false\n[engine]\nprogram = "{fake}"\nmax_queue = 100000\nmax_in_flight = 100000\n'
                         f'[models."tiny"]\nsource = "{mdir}"\n'
                         f'env = {{ FAKE_VLLM_TOKEN_MS = "{TOKEN_MS}", FAKE_VLLM_STARTUP_MS = "10" }}\n')
    vd = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg],
                          stderr=open(os.path.join(work, "vllamad.log"), "w"))
    wait_port(vp)
    url = f"http://127.0.0.1:{vp}"
    bench(url, "openai", 1, 4)  # starts the engine
    results = {}  # (c, api) -> list of (result, cpu µs per request)
    for _ in range(ROUNDS):
        for c, n in LEVELS:
            for api in APIS:
                c0 = cpu(vd.pid)
                r = bench(url, api, c, n)
                per = (cpu(vd.pid) - c0) / max(r["requests"] + c, 1) * 1e6
                results.setdefault((c, api), []).append((r, per))
    print(f"fake engine: {TOKENS} tokens per request, one every {TOKEN_MS} ms, streamed; "
          f"`vllamactl bench`, {ROUNDS} rounds, medians")
    print(f"{'c':>4} {'route':<22} {'req/s':>8} {'tok/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ttft p50':>9} "
          f"{'CPU µs/req':>11} {'errors':>6}")
    med = lambda xs: sorted(xs)[len(xs) // 2]
    routes = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "responses": "/v1/responses",
              "ollama": "/api/chat"}
    for c, _ in LEVELS:
        for api in APIS:
            rs = results[(c, api)]
            pick = lambda f: med([f(r) for r, _ in rs])
            print(f"{c:>4} {routes[api]:<22} {pick(lambda r: r['requests_per_second']):>8.1f} "
                  f"{pick(lambda r: r['output_tokens_per_second']):>9.0f} {pick(lambda r: r['latency_ms']['p50']):>8.2f} "
                  f"{pick(lambda r: r['latency_ms']['p99']):>8.2f} {pick(lambda r: (r['ttft_ms'] or {'p50': 0})['p50']):>9.2f} "
                  f"{med([p for _, p in rs]):>11.0f} {sum(sum(r['errors'].values()) for r, _ in rs):>6}")
finally:
    if vd:
        vd.send_signal(signal.SIGTERM)
        try:
            vd.wait(15)
        except subprocess.TimeoutExpired:
            vd.kill()
    shutil.rmtree(work, ignore_errors=True)
