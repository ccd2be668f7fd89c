#!/usr/bin/env python3
"""Proxy overhead, in one go: the fake engine at a fixed token rate, the same streamed load
(`vllamactl bench`) (a) straight to the engine, (b) through vllamad's OpenAI pass-through,
(c) through vllamad's Ollama NDJSON translation, (d) through nginx proxying to the engine,
at c = 1, 64, 256; ratios against (a) and (d); vllamad's RSS and CPU time per request.

`latency` instead measures what each proxy adds alone: one-token answers, not streamed, from
an engine that does not wait (c = 1 and 64), so the latencies are the proxies' and the
client's, and (b) − (a) and (d) − (a) are the added time.

usage: cargo build --release --workspace && sudo tests/bench/proxy.py [TOKENS] [TOKEN_MS]
       sudo tests/bench/proxy.py latency
(installs nginx from apt when missing)
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time

LATENCY = sys.argv[1:2] == ["latency"]
if LATENCY:
    TOKENS, TOKEN_MS, STREAM, LEVELS = 1, 0, False, [(1, 4000), (64, 40000)]
else:
    TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    TOKEN_MS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    STREAM, LEVELS = True, [(1, 100), (64, 1280), (256, 2560)]
target = os.path.abspath(os.environ.get("TARGET", "target/release"))
ctl = os.path.join(target, "vllamactl")
fake = os.path.join(target, "fake-vllm")
from procs import cpu_seconds as cpu, free_port as port, rss_mib


def wait_port(p):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"port {p} never opened")


def nginx_cpu():
    out = subprocess.run(["pgrep", "-x", "nginx"], capture_output=True, text=True).stdout.split()
    return sum(cpu(int(p)) for p in out)


def bench(url, api, model, c, n):
    out = subprocess.run([ctl, "bench", "--url", url, "--api", api, "--model", model, "-c", str(c),
                          "-n", str(n), "--max-tokens", str(TOKENS), "--warmup", "1", "--json"]
                         + ([] if STREAM else ["--no-stream"]),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench failed: {out.stderr}")
    return json.loads(out.stdout)["levels"][0]


work = tempfile.mkdtemp()
env = {**os.environ, "FAKE_VLLM_TOKEN_MS": str(TOKEN_MS), "FAKE_VLLM_STARTUP_MS": "10"}
procs = []
try:
    # The engine for (a) and (d), on TCP.
    ep = port()
    procs.append(subprocess.Popen([fake, "serve", "tiny", "--served-model-name", "tiny", "--host", "127.0.0.1",
                                   "--port", str(ep)], env=env, stderr=subprocess.DEVNULL))
    wait_port(ep)
    # nginx in front of it.
    if not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], check=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["systemctl", "stop", "nginx"], capture_output=True)
    subprocess.run(["pkill", "-x", "nginx"], capture_output=True)
    npt = port()
    conf = os.path.join(work, "nginx.conf")
    open(conf, "w").write(f"""worker_processes 2; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; upstream engine {{ server 127.0.0.1:{ep}; keepalive 512; }}
  server {{ listen 127.0.0.1:{npt}; location / {{ proxy_pass http://engine; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 600s; }} }} }}""")
    procs.append(subprocess.Popen(["nginx", "-c", conf, "-p", work, "-g", "daemon off;"]))
    wait_port(npt)
    # vllamad with its own engine (same binary, same token rate), over a Unix socket.
    vp = port()
    mdir = os.path.join(work, "m"); os.makedirs(mdir)
    open(os.path.join(mdir, "config.json"), "w").write('{"model_type":"llama"}')
    cfg = os.path.join(work, "v.toml")
    open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:{vp}"\n[admin]\nsocket = "{work}/a.sock"\n'
                         f'[paths]\nstate_dir = "{work}/s"\nruntime_dir = "{work}/r"\ncache_dir = "{work}/c"\n'
                         f'[log]\nformat = "text"\n[engine]\nvllm = "{fake}"\nmax_queue = 100000\n'
                         f'[models."tiny"]\nsource = "{mdir}"\n'
                         f'env = {{ FAKE_VLLM_TOKEN_MS = "{TOKEN_MS}", FAKE_VLLM_STARTUP_MS = "10" }}\n')
    vd = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg],
                          stderr=open(os.path.join(work, "vllamad.log"), "w"))
    procs.append(vd)
    wait_port(vp)
    rss_idle = rss_mib(vd.pid)

    rows = []
    for c, n in LEVELS:
        a = bench(f"http://127.0.0.1:{ep}", "openai", "tiny", c, n)
        n0 = nginx_cpu()
        d = bench(f"http://127.0.0.1:{npt}", "openai", "tiny", c, n)
        cpu_d = (nginx_cpu() - n0) / max(d["requests"] + c, 1) * 1e6
        c0 = cpu(vd.pid)
        b = bench(f"http://127.0.0.1:{vp}", "openai", "tiny", c, n)
        cpu_b = (cpu(vd.pid) - c0) / max(b["requests"] + c, 1) * 1e6
        c0 = cpu(vd.pid)
        o = bench(f"http://127.0.0.1:{vp}", "ollama", "tiny", c, n)
        cpu_o = (cpu(vd.pid) - c0) / max(o["requests"] + c, 1) * 1e6
        rows.append((c, a, b, o, d, cpu_b, cpu_o, cpu_d, rss_mib(vd.pid)))

    print(f"fake engine: {TOKENS} tokens per request, one every {TOKEN_MS} ms; "
          f"{'streamed' if STREAM else 'not streamed'}; `vllamactl bench`")
    print(f"vllamad RSS idle {rss_idle:.1f} MiB")
    hdr = f"{'c':>4} {'path':<26} {'req/s':>8} {'tok/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ttft p50':>9} {'ttft p99':>9} {'errors':>6}"
    print(hdr)
    for c, a, b, o, d, cpu_b, cpu_o, cpu_d, rss in rows:
        for name, r in (("(a) engine direct", a), ("(b) vllamad OpenAI", b), ("(c) vllamad Ollama NDJSON", o), ("(d) nginx", d)):
            t = r["ttft_ms"] or {"p50": 0, "p99": 0}
            print(f"{c:>4} {name:<26} {r['requests_per_second']:>8.1f} {r['output_tokens_per_second']:>9.0f} "
                  f"{r['latency_ms']['p50']:>8.3f} {r['latency_ms']['p99']:>8.3f} {t['p50']:>9.2f} {t['p99']:>9.2f} "
                  f"{sum(r['errors'].values()):>6}")
        add = lambda x, y, k: x["latency_ms"][k] - y["latency_ms"][k]
        print(f"     ratios tok/s: b/a {b['output_tokens_per_second'] / a['output_tokens_per_second']:.3f}  "
              f"c/a {o['output_tokens_per_second'] / a['output_tokens_per_second']:.3f}  "
              f"b/d {b['output_tokens_per_second'] / d['output_tokens_per_second']:.3f}  "
              f"d/a {d['output_tokens_per_second'] / a['output_tokens_per_second']:.3f}")
        print(f"     added latency vs (a): vllamad p50 {add(b, a, 'p50') * 1000:+.0f} µs p99 {add(b, a, 'p99') * 1000:+.0f} µs; "
              f"nginx p50 {add(d, a, 'p50') * 1000:+.0f} µs p99 {add(d, a, 'p99') * 1000:+.0f} µs")
        print(f"     CPU per request: vllamad OpenAI {cpu_b:.0f} µs, vllamad Ollama {cpu_o:.0f} µs, "
              f"nginx (master + workers) {cpu_d:.0f} µs; vllamad RSS after {rss:.1f} MiB")
finally:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)
