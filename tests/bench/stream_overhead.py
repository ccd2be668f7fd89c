#!/usr/bin/env python3
"""Ollama streaming through vllamad against the engine's own SSE stream, consumed directly.

  cargo build --release && tests/bench/stream_overhead.py [TOKENS] [TOKEN_MS]
  LEVELS=1000 tests/bench/stream_overhead.py 100 100

The fake engine emits TOKENS tokens per stream, one every TOKEN_MS ms. For each number of
concurrent streams in LEVELS (default 1,64,256): total tokens/s (a) straight from the
engine's SSE over its Unix socket and (b) as Ollama NDJSON from /api/chat through vllamad;
time to first token p50/p99; vllamad's RSS after each level and its peak (VmHWM) over the
run. The client is asyncio on raw sockets.
"""
import asyncio, json, os, signal, socket, statistics, subprocess, sys, tempfile, time
from procs import free_port, rss_mib

TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
TOKEN_MS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
LEVELS = [int(c) for c in os.environ.get("LEVELS", "1,64,256").split(",")]
target = os.environ.get("TARGET", "target/release")


async def one(open_conn, request, marker, skip):
    """Counts objects by `marker` (one per object, whatever the chunk framing); the first
    `skip` of them carry no token (SSE's role chunk). Returns (time to first token, tokens
    plus trailing non-token objects)."""
    reader, writer = await open_conn()
    t0 = time.perf_counter()
    writer.write(request)
    await writer.drain()
    first, count, buf = None, 0, b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        buf += data
        n = buf.count(marker)
        count += n
        if first is None and count > skip:
            first = time.perf_counter() - t0
        buf = buf[buf.rfind(marker) + len(marker):] if n else buf[-len(marker):]
    writer.close()
    return first or 0.0, count


async def run(open_conn, request, marker, skip, extra, concurrency):
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(open_conn, request, marker, skip) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    tokens = sum(max(0, r[1] - skip - extra) for r in results)
    return tokens / wall, ttft


def pct(xs, q):
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


with tempfile.TemporaryDirectory() as d:
    port = free_port()
    model = os.path.join(d, "model"); os.makedirs(model)
    open(os.path.join(model, "config.json"), "w").write("{}")
    cfg = os.path.join(d, "v.toml")
    open(cfg, "w").write(f'''[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{d}/a.sock"
[paths]\nstate_dir = "{d}/s"\nruntime_dir = "{d}/r"\ncache_dir = "{d}/c"\n[log]\nfilter = "warn"
[engine]\nprogram = "{os.path.abspath(os.path.join(target, "fake-vllm"))}"\nkeep_alive = -1\nmax_queue = 4096\nmax_in_flight = 4096
[models."m"]\nsource = "{model}"\nenv = {{ FAKE_VLLM_TOKEN_MS = "{TOKEN_MS}", FAKE_VLLM_STARTUP_MS = "50" }}\n''')
    daemon = subprocess.Popen([os.path.join(target, "vllamad"), "--config", cfg], stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": TOKENS}}).encode()
    ollama_req = (f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    # Load the model, then find the engine's socket.
    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/api/generate", "-d", '{"model":"m"}'], check=True)
    engine_sock = [os.path.join(f"{d}/r/engines", f) for f in os.listdir(f"{d}/r/engines") if f.endswith(".sock")][0]
    sse_body = json.dumps({"model": "m:latest", "messages": [{"role": "user", "content": "x"}], "max_tokens": TOKENS,
                           "stream": True, "stream_options": {"include_usage": True}}).encode()
    sse_req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: engine\r\nConnection: close\r\nContent-Length: {len(sse_body)}\r\n\r\n").encode() + sse_body
    direct = lambda: asyncio.open_unix_connection(engine_sock, limit=1 << 20)
    through = lambda: asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    print(f"fake engine: {TOKENS} tokens per stream, one every {TOKEN_MS} ms ({1000 / TOKEN_MS:.0f} tokens/s per stream)")
    print(f"vllamad RSS idle, model loaded: {rss_mib(daemon.pid):.1f} MiB")
    for c in LEVELS:
        # SSE objects: a role chunk, the tokens, a usage chunk ("data: [DONE]" has no "{").
        # NDJSON objects: the tokens, then the final one with the statistics.
        asyncio.run(run(direct, sse_req, b"data: {", 1, 1, min(c, 8)))  # warm-up
        d_tps, d_ttft = asyncio.run(run(direct, sse_req, b"data: {", 1, 1, c))
        v_tps, v_ttft = asyncio.run(run(through, ollama_req, b'"done":', 0, 1, c))
        print(f"c={c:>3}: direct SSE {d_tps:8.0f} tok/s, TTFT p50 {pct(d_ttft, .5):6.1f} ms p99 {pct(d_ttft, .99):6.1f} ms | "
              f"vllamad NDJSON {v_tps:8.0f} tok/s, TTFT p50 {pct(v_ttft, .5):6.1f} ms p99 {pct(v_ttft, .99):6.1f} ms | "
              f"ratio {v_tps / d_tps:.3f}, added TTFT p50 {pct(v_ttft, .5) - pct(d_ttft, .5):+.1f} ms p99 {pct(v_ttft, .99) - pct(d_ttft, .99):+.1f} ms")
        print(f"vllamad RSS after {c} streams: {rss_mib(daemon.pid):.1f} MiB, "
              f"peak so far {rss_mib(daemon.pid, 'VmHWM'):.1f} MiB")
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)
