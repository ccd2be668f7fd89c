#!/usr/bin/env python3
"""The fault campaign: vllamad with one fake model per engine fault, and concurrent Ollama
and OpenAI requests (streamed and whole) spread over them. Every request must end within a
bound, with an answer or a clear error in its API's shape; afterwards no engine process may
be left and vllamad's RSS and open fds must be back near their baseline. Prints the counts by
fault and outcome.

`soak SECONDS [CONCURRENCY]` instead runs for that long with 90 % of the requests on the
healthy engine and the faults at a low rate, sampling vllamad's RSS and open fds every 10 s:
growth after the first minute (warm-up) is what counts. `SOAK_FAULTS` (default 0.1) is the
share of requests sent to the faulty engines. `VLLAMAD_PREFIX` runs vllamad under a tool
(`heaptrack -o /tmp/vd`); vllamad is then ended with SIGKILL after the run, so what it still
holds shows in the tool's report as not freed.

usage: cargo build --release --workspace && tests/bench/faults.py [REQUESTS] [CONCURRENCY]
       tests/bench/faults.py soak 600 64
"""
import http.client, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time
from collections import Counter

SOAK = sys.argv[1:2] == ["soak"]
args = sys.argv[2:] if SOAK else sys.argv[1:]
REQUESTS = 0 if SOAK else int(args[0]) if args else 1000
SOAK_S = float(args[0]) if SOAK and args else 600.0
CONCURRENCY = int(args[1]) if len(args) > 1 else (64 if SOAK else 16)
FAULT_SHARE = float(os.environ.get("SOAK_FAULTS", "0.1"))
BOUND_S = 20.0  # load_timeout 3 s + stall 1 s + restarts' backoff, with room
target = os.path.abspath(os.environ.get("TARGET", "target/release"))
fake = os.path.join(target, "fake-vllm")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procs import free_port, rss_mib, wait_port

FAULTS = {
    "healthy": {},
    "crash at start": {"FAKE_VLLM_FAIL_STARTUP": "CUDA out of memory"},
    "crash mid-stream": {"FAKE_VLLM_CRASH_MID_STREAM": "1"},
    "exit 0": {"FAKE_VLLM_EXIT_AFTER": "1"},
    "hang at start": {"FAKE_VLLM_HANG": "1"},
    "hang mid-stream": {"FAKE_VLLM_STALL": "1"},
    "truncated SSE": {"FAKE_VLLM_CUT_STREAM": "1"},
    "garbage SSE": {"FAKE_VLLM_GARBAGE": "1"},
    "noisy output": {"FAKE_VLLM_NOISE": "1"},
    "/health flapping": {"FAKE_VLLM_HEALTH_FLAP": "1"},
    "SIGTERM ignored + grandchild": {"FAKE_VLLM_IGNORE_SIGTERM": "1", "FAKE_VLLM_GRANDCHILD": "1",
                                     "FAKE_VLLM_EXIT_AFTER": "3"},
}
slug = lambda f: "f" + str(list(FAULTS).index(f))


def admin(sock, path):
    s = socket.socket(socket.AF_UNIX); s.connect(sock)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return json.loads(body or b"[]")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def classify(api, stream, status, body):
    """How one request ended: answered, or which kind of clear error."""
    if status != 200:
        try:
            v = json.loads(body)
        except ValueError:
            return "UNCLEAR: non-JSON error"
        shaped = isinstance(v.get("error"), str) if api == "ollama" else isinstance(v.get("error"), dict)
        return f"error {status}" if shaped else "UNCLEAR: error not in the API's shape"
    if api == "ollama":
        lines = [l for l in body.splitlines() if l.strip()]
        try:
            last = json.loads(lines[-1]) if lines else {}
        except ValueError:
            return "UNCLEAR: cut NDJSON"
        if "error" in last:
            return "error in stream"
        return "answered" if last.get("done") else "UNCLEAR: no done line"
    if not stream:
        try:
            v = json.loads(body)
        except ValueError:
            return "UNCLEAR: cut JSON"
        return "answered" if v.get("choices") else "UNCLEAR: no choices"
    events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
    if events and events[-1] == "[DONE]":
        bad = any(not e.startswith("{") or e == "{garbage" for e in events[:-1])
        return "answered (engine garbage relayed)" if bad else "answered"
    if events and '"error"' in events[-1]:
        return "error in stream"
    return "UNCLEAR: cut stream"


def one(port, model, api, stream):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND_S + 5)
    if api == "ollama":
        path = "/api/chat"
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                "options": {"num_predict": 8}}
    else:
        path = "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 8}
    started = time.monotonic()
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
        outcome = classify(api, stream, r.status, text)
    except (OSError, http.client.HTTPException) as e:
        outcome = f"UNCLEAR: {type(e).__name__}"
    finally:
        c.close()
    took = time.monotonic() - started
    if took > BOUND_S:
        outcome = f"UNBOUNDED ({took:.0f} s): {outcome}"
    return outcome, took


work = tempfile.mkdtemp()
vd = None
try:
    port = free_port()
    models = ""
    for fault, env in FAULTS.items():
        d = os.path.join(work, slug(fault)); os.makedirs(d)
        open(os.path.join(d, "config.json"), "w").write('{"model_type":"llama"}')
        envs = ", ".join(f'{k} = "{v}"' for k, v in {**env, "FAKE_VLLM_STARTUP_MS": "50", "FAKE_VLLM_TOKEN_MS": "5"}.items())
        models += f'[models."{slug(fault)}"]\nsource = "{d}"\nenv = {{ {envs} }}\n'
    cfg = os.path.join(work, "v.toml")
    open(cfg, "w").write(
        f'[api]\nlisten = "127.0.0.1:{port}"\n[admin]\nsocket = "{work}/a.sock"\n'
        f'[paths]\nstate_dir = "{work}/s"\nruntime_dir = "{work}/r"\ncache_dir = "{work}/c"\n'
        f'[log]\nformat = "text"\naccess = false\n'
        f'[engine]\nprogram = "{fake}"\nmax_loaded = {len(FAULTS)}\nload_timeout = "3s"\nstop_grace = "1s"\n'
        f'stall_timeout = "1s"\nrestart_backoff_max = "2s"\nmax_queue = 100000\n' + models)
    prefix = os.environ.get("VLLAMAD_PREFIX", "").split()
    vd = subprocess.Popen(prefix + [os.path.join(target, "vllamad"), "--config", cfg],
                          stderr=open(os.path.join(work, "vllamad.log"), "w"))
    wait_port(port)
    wrapper_pid = vd.pid
    if prefix:  # the tool's own process is vd; measure vllamad itself
        class Real: pass
        real = Real()
        for pid in subprocess.run(["pgrep", "-f", "--", f"--config {cfg}"], capture_output=True, text=True).stdout.split():
            if open(f"/proc/{pid}/comm").read().strip() == "vllamad":
                real.pid = int(pid)
        real.wait, real.kill, real.send_signal = vd.wait, vd.kill, lambda _: os.kill(real.pid, signal.SIGKILL)
        vd = real
    rss0, fds0 = rss_mib(vd.pid), fds(vd.pid)
    rng = random.Random(7)
    pick = lambda: (("healthy" if rng.random() >= FAULT_SHARE else rng.choice(list(FAULTS))) if SOAK else rng.choice(list(FAULTS)),
                    rng.choice(["ollama", "openai"]), rng.random() < 0.7)
    plan = [pick() for _ in range(REQUESTS)]
    results, lock = [], threading.Lock()
    todo = iter(plan)
    deadline = time.monotonic() + SOAK_S
    samples = []

    def sampler():
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), rss_mib(vd.pid), fds(vd.pid)))
            time.sleep(10)

    def worker():
        while True:
            with lock:
                item = (pick() if time.monotonic() < deadline else None) if SOAK else next(todo, None)
            if item is None:
                return
            fault, api, stream = item
            outcome, took = one(port, slug(fault), api, stream)
            with lock:
                results.append((fault, outcome, took))

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    if SOAK:
        threads.append(threading.Thread(target=sampler))
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.monotonic() - t0
    engines = admin(f"{work}/a.sock", "/v1/engines")
    faults_seen = sum(e.get("crashes", 0) + e.get("restarts", 0) for e in engines)
    for fault in FAULTS:
        subprocess.run([os.path.join(target, "vllamactl"), "--socket", f"{work}/a.sock", "unload", "--force",
                        slug(fault)], capture_output=True)
    time.sleep(2)
    left = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True).stdout.split()
    left = [p for p in left if int(p) not in (vd.pid, wrapper_pid)]
    rss1, fds1 = rss_mib(vd.pid), fds(vd.pid)

    if SOAK:
        warm = [x for x in samples if x[0] - t0 >= 60] or samples
        rss_w, fd_w = warm[0][1], warm[0][2]
        print(f"soak: {len(results)} requests in {wall:.0f} s at c = {CONCURRENCY} "
              f"({len(results) / wall:.0f}/s); {100 - 100 * FAULT_SHARE:.0f} % healthy, the rest over the faults")
        print(f"RSS after warm-up {rss_w:.1f} MiB → max {max(x[1] for x in warm):.1f} → end {warm[-1][1]:.1f} MiB "
              f"(growth {100 * (warm[-1][1] - rss_w) / rss_w:+.1f} %); "
              f"fds {fd_w} → max {max(x[2] for x in warm)} → end {warm[-1][2]}")
        print("RSS MiB by minute: " + " ".join(f"{x[1]:.1f}" for x in samples[::6]))
    print(f"{len(results)} requests at c = {CONCURRENCY} over {len(FAULTS)} fake engines, one fault each; "
          f"70 % streamed; Ollama and OpenAI routes; bound {BOUND_S:.0f} s; {wall:.0f} s in all")
    by = Counter((f, o) for f, o, _ in results)
    worst = {}
    for f, o, t in results:
        worst[f] = max(worst.get(f, 0), t)
    print(f"{'fault':<30} {'outcome':<36} {'count':>5}")
    for fault in FAULTS:
        for (f, o), n in sorted(by.items()):
            if f == fault:
                print(f"{fault:<30} {o:<36} {n:>5}")
        print(f"{'':<30} {'slowest request':<36} {worst.get(fault, 0):>5.1f} s")
    unclear = sum(n for (f, o), n in by.items() if o.startswith(("UNCLEAR", "UNBOUNDED")))
    print(f"engine faults vllamad handled (crashes, hangs killed, failed starts, restarts): {faults_seen}")
    print(f"unclear or unbounded endings: {unclear}; engine processes left: {len(left)}")
    print(f"vllamad RSS {rss0:.1f} → {rss1:.1f} MiB, open fds {fds0} → {fds1}")
    sys.exit(1 if unclear or left else 0)
finally:
    if vd:
        vd.send_signal(signal.SIGTERM)
        try:
            vd.wait(30)
        except subprocess.TimeoutExpired:
            vd.kill()
    shutil.rmtree(work, ignore_errors=True)
