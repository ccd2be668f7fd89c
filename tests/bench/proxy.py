#!/usr/bin/env python3
"""Proxy overhead, in one go: the fake engine at a fixed token rate, the same streamed load
(`vllamactl bench`) (a) straight to the engine, (b) through vllamad's OpenAI pass-through,
(c) through vllamad's Ollama NDJSON translation, (d) through nginx proxying to the engine,
at c = 1, 64, 256; ratios against (a) and (d); vllamad's RSS and CPU time per request.
CPU time is read from the scheduler's nanosecond counters of each process's threads
(clock ticks, 10 ms, were 2-5 % of a round's CPU and moved the ratios by that much).

(e) LiteLLM's proxy (`litellm[proxy]`, one worker) in front of the same engine, when it is
installed: `VLLAMA_LITELLM` names its `litellm` program (default
/var/cache/vllama/litellm-venv/bin/litellm, made by `python3 -m venv
/var/cache/vllama/litellm-venv && /var/cache/vllama/litellm-venv/bin/pip install
'litellm[proxy]'`; tests/run does not install it: it is large and only this benchmark uses it).

`latency` instead measures what each proxy adds alone: one-token answers, not streamed, from
an engine that does not wait (c = 1 and 64), so the latencies are the proxies' and the
client's, and (b) − (a) and (d) − (a) are the added time.

Each level runs ROUNDS times (3), the paths alternating within a round; the tables give the
median of the rounds and their spread (min–max), and the ratios to nginx are given twice:
of the medians, and round by round (each round's ratio, then their median and spread).

usage: cargo build --release --workspace && sudo tests/bench/proxy.py [TOKENS] [TOKEN_MS]
       sudo tests/bench/proxy.py latency
(nginx: $VLLAMA_NGINX, else on PATH, else installed from apt)
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time

LATENCY = sys.argv[1:2] == ["latency"]
if LATENCY:
    TOKENS, TOKEN_MS, STREAM, LEVELS = 1, 0, False, [(1, 2000), (64, 20000)]
else:
    TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    TOKEN_MS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    STREAM, LEVELS = True, [(1, 100), (64, 1280), (256, 2560)]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
target = os.path.abspath(os.environ.get("TARGET", "target/release"))
ctl = os.path.join(target, "vllamactl")
fake = os.path.join(target, "fake-vllm")
LITELLM = os.environ.get("VLLAMA_LITELLM", "/var/cache/vllama/litellm-venv/bin/litellm")
from procs import cpu_ns_seconds as cpu, free_port as port, rss_mib, stop_all, wait_port


def tree_cpu(pid):
    """CPU seconds of a process and its descendants (uvicorn workers, nginx's)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo.extend(int(k) for k in kids)
    return total


def bench(url, api, model, c, n):
    # LiteLLM's proxy wants its master key; the others ignore it.
    out = subprocess.run([ctl, "bench", "--url", url, "--api", api, "--model", model, "-c", str(c),
                          "-n", str(n), "--max-tokens", str(TOKENS), "--warmup", "1", "--json",
                          "--api-key", "sk-bench-master-key"]
                         + ([] if STREAM else ["--no-stream"]),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench failed: {out.stderr}")
    return json.loads(out.stdout)["levels"][0]


def nginx_binary():
    found = os.environ.get("VLLAMA_NGINX") or shutil.which("nginx")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["systemctl", "stop", "nginx"], capture_output=True)
    return "nginx"


def median_spread(values):
    v = sorted(values)
    return v[len(v) // 2], v[0], v[-1]


work = tempfile.mkdtemp()
env = {**os.environ, "FAKE_VLLM_TOKEN_MS": str(TOKEN_MS), "FAKE_VLLM_STARTUP_MS": "10"}
procs = []
try:
    # The engine for (a), (d) and (e), on TCP.
    ep = port()
    procs.append(subprocess.Popen([fake, "serve", "tiny", "--served-model-name", "tiny", "--host", "127.0.0.1",
                                   "--port", str(ep)], env=env, stderr=subprocess.DEVNULL))
    wait_port(ep)
    # nginx in front of it.
    npt = port()
    conf = os.path.join(work, "nginx.conf")
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    open(conf, "w").write(f"""worker_processes 2; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; upstream engine {{ server 127.0.0.1:{ep}; keepalive 512; }}
  client_body_temp_path {work}/cb; proxy_temp_path {work}/pt; fastcgi_temp_path {work}/ft;
  uwsgi_temp_path {work}/ut; scgi_temp_path {work}/st;
  server {{ listen 127.0.0.1:{npt}; location / {{ proxy_pass http://engine; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 600s; }} }} }}""")
    ng = subprocess.Popen([nginx_binary(), "-c", conf, "-p", work, "-g", "daemon off;"])
    procs.append(ng)
    wait_port(npt)
    # LiteLLM's proxy in front of it, when installed.
    lp, lite = None, None
    if os.access(LITELLM, os.X_OK):
        lp = port()
        lconf = os.path.join(work, "litellm.yaml")
        open(lconf, "w").write(f"""model_list:
  - model_name: tiny
    litellm_params:
      model: openai/tiny
      api_base: http://127.0.0.1:{ep}/v1
      api_key: none
litellm_settings:
  telemetry: false
""")
        lenv = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                "LITELLM_MASTER_KEY": "sk-bench-master-key",
                "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
        lite = subprocess.Popen([LITELLM, "--config", lconf, "--host", "127.0.0.1", "--port", str(lp),
                                 "--num_workers", "1"], env=lenv, stdout=open(os.path.join(work, "litellm.log"), "w"),
                                stderr=subprocess.STDOUT)
        procs.append(lite)
        wait_port(lp, 120)
    # vllamad with its own engine (same binary, same token rate), over a Unix socket.
    vp = port()
    mdir = os.path.join(work, "m"); os.makedirs(mdir)
    open(os.path.join(mdir, "config.json"), "w").write('{"model_type":"llama"}')
    cfg = os.path.join(work, "v.toml")
    open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:{vp}"\n[admin]\nsocket = "{work}/a.sock"\n'
                         f'[paths]\nstate_dir = "{work}/s"\nruntime_dir = "{work}/r"\ncache_dir = "{work}/c"\n'
                         f'[log]\nformat = "text"\n[engine]\nprogram = "{fake}"\nmax_queue = 100000\nmax_in_flight = 100000\n'
                         f'[models."tiny"]\nsource = "{mdir}"\n'
                         f'env = {{ FAKE_VLLM_TOKEN_MS = "{TOKEN_MS}", FAKE_VLLM_STARTUP_MS = "10" }}\n')
    vd = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg],
                          stderr=open(os.path.join(work, "vllamad.log"), "w"))
    procs.append(vd)
    wait_port(vp)
    rss_idle = rss_mib(vd.pid)

    # (name, URL, API, the proxy's CPU seconds so far, the share of the level's requests).
    # vllamad's own process only: its engine is its child, and the engine's CPU is no more
    # the proxy's than the direct path's engine is nginx's (counting the tree charged
    # vllamad ~27 µs a request that the engine spent). nginx and LiteLLM: their workers too.
    own = lambda: cpu(vd.pid)
    paths = [("(a) engine direct", f"http://127.0.0.1:{ep}", "openai", None, 1),
             ("(b) vllamad OpenAI", f"http://127.0.0.1:{vp}", "openai", own, 1),
             ("(c) vllamad Ollama NDJSON", f"http://127.0.0.1:{vp}", "ollama", own, 1),
             ("(d) nginx", f"http://127.0.0.1:{npt}", "openai", lambda: tree_cpu(ng.pid), 1)]
    if lite:
        # Two orders of magnitude slower per request: a tenth of the requests (or a
        # twentieth when not streamed), so a round takes minutes, not an hour.
        paths.append(("(e) LiteLLM", f"http://127.0.0.1:{lp}", "openai", lambda: tree_cpu(lite.pid),
                      10 if STREAM else 20))
    # Each path once, so engines, pools and LiteLLM's lazy imports are warm.
    for _, url, api, _, _ in paths:
        bench(url, api, "tiny", 4, 40)

    print(f"fake engine: {TOKENS} tokens per request, one every {TOKEN_MS} ms; "
          f"{'streamed' if STREAM else 'not streamed'}; `vllamactl bench`; median of {ROUNDS} "
          f"alternating rounds [min–max]")
    print(f"vllamad RSS idle {rss_idle:.1f} MiB")
    for c, n in LEVELS:
        runs = {p[0]: [] for p in paths}
        for _ in range(ROUNDS):
            for name, url, api, spent, share in paths:
                c0 = spent() if spent else 0.0
                r = bench(url, api, "tiny", c, max(n // share, 2 * c))
                r["cpu_us"] = ((spent() - c0) / max(r["requests"] + c, 1) * 1e6) if spent else None
                runs[name].append(r)
        print(f"\nc = {c}, {n} requests a round")
        print(f"{'path':<26} {'req/s':>22} {'tok/s':>22} {'p50 ms':>24} {'p99 ms':>24} {'CPU/req µs':>20} {'err':>4}")
        med = {}
        for name, rs in runs.items():
            cols = []
            for key in ("rps", "tps", "p50", "p99", "cpu"):
                vals = [{"rps": r["requests_per_second"], "tps": r["output_tokens_per_second"],
                         "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                         "cpu": r["cpu_us"]}[key] for r in rs]
                if vals[0] is None:
                    cols.append(""); continue
                m, lo, hi = median_spread(vals)
                med[(name, key)] = m
                cols.append(f"{m:.1f} [{lo:.1f}–{hi:.1f}]" if key in ("rps", "tps", "cpu") else f"{m:.3f} [{lo:.2f}–{hi:.2f}]")
            errs = sum(sum(r["errors"].values()) for r in rs)
            print(f"{name:<26} {cols[0]:>22} {cols[1]:>22} {cols[2]:>24} {cols[3]:>24} {cols[4]:>20} {errs:>4}")
        a, b, o, d = (p[0] for p in paths[:4])
        e = paths[4][0] if lite else None
        line = (f"  ratios (medians): req/s b/d {med[(b, 'rps')] / med[(d, 'rps')]:.3f}, b/a {med[(b, 'rps')] / med[(a, 'rps')]:.3f}; "
                f"tok/s c/b {med[(o, 'tps')] / med[(b, 'tps')]:.3f}; CPU/req b/d {med[(b, 'cpu')] / med[(d, 'cpu')]:.2f}, "
                f"c/b {med[(o, 'cpu')] / med[(b, 'cpu')]:.2f}")
        if e:
            line += f"; req/s b/e {med[(b, 'rps')] / med[(e, 'rps')]:.2f}, CPU/req e/b {med[(e, 'cpu')] / med[(b, 'cpu')]:.1f}"
        print(line)
        print(f"  p99 b − d {(med[(b, 'p99')] - med[(d, 'p99')]) * 1000:+.0f} µs; vllamad RSS after {rss_mib(vd.pid):.1f} MiB")
        # The same ratios taken round by round (the paths of a round ran within seconds of
        # each other), so that a host that speeds up or slows down between rounds moves
        # both sides of each ratio together.
        pair = lambda f: median_spread([f(x, y) for x, y in zip(runs[b], runs[d])])
        by_round = [("req/s b/d", pair(lambda x, y: x["requests_per_second"] / y["requests_per_second"]), "{:.3f}"),
                    ("p99 b − d µs", pair(lambda x, y: (x["latency_ms"]["p99"] - y["latency_ms"]["p99"]) * 1000), "{:+.0f}"),
                    ("CPU/req b/d", pair(lambda x, y: x["cpu_us"] / y["cpu_us"]), "{:.2f}"),
                    ("CPU/req c/b", median_spread([x["cpu_us"] / y["cpu_us"] for x, y in zip(runs[o], runs[b])]), "{:.2f}")]
        print("  round by round (median [min–max]): " + "; ".join(
            f"{name} {fmt.format(m)} [{fmt.format(lo)}–{fmt.format(hi)}]" for name, (m, lo, hi), fmt in by_round))
finally:
    stop_all(procs)
    shutil.rmtree(work, ignore_errors=True)
