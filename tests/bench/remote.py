#!/usr/bin/env python3
"""What a remote engine costs against a local one, on one machine: one vllamad serving the
same fake engine three ways — `local` (its own child, over the engine's Unix socket),
`remote` (the fake engine on loopback TCP, `remote = "http://…"`) and `remote-tls` (the same
over TLS with a private CA and vLLM's `--api-key`: `remote = "https://…"`, `token_file`,
`ca_file`) — then the same load (`vllamactl bench`, one-token answers from an engine that does
not wait, so the latencies are vllamad's and the client's) through each, alternating, ROUNDS
times (3); medians of the rounds with their spread.

usage: cargo build --release --workspace && tests/bench/remote.py [REQUESTS]
"""
import json, os, statistics, subprocess, sys, tempfile, time

from procs import free_port as port, stop_all, wait_port

ROUNDS = int(os.environ.get("ROUNDS", "3"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
target = os.path.abspath(os.environ.get("TARGET", "target/release"))
ctl, fake, daemon = (os.path.join(target, b) for b in ("vllamactl", "fake-vllm", "vllamad"))
KEY = "sk-bench-remote"


def certificates(d):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=bench CA")
    openssl("req", *ec, "-keyout", "key.pem", "-out", "req.csr", "-subj", "/CN=localhost")
    open(os.path.join(d, "ext.cnf"), "w").write(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")


def engine(d, p, tls):
    args = [fake, "serve", "/models/m", "--served-model-name", "m", "--host", "127.0.0.1",
            "--port", str(p)]
    if tls:
        args += ["--api-key", KEY, "--ssl-certfile", f"{d}/cert.pem", "--ssl-keyfile",
                 f"{d}/key.pem"]
    env = dict(os.environ, FAKE_VLLM_STARTUP_MS="0", FAKE_VLLM_TOKEN_MS="0")
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench(api, model, c, n):
    out = subprocess.run([ctl, "bench", "--url", f"http://127.0.0.1:{api}", "--api", "openai",
                          "-m", model, "-c", str(c), "-n", str(n), "--max-tokens", "1",
                          "--no-stream", "--warmup", "2", "--json"],
                         capture_output=True, text=True, check=True).stdout
    level = json.loads(out)["levels"][0]
    assert level["ok"] == level["requests"], level["errors"]
    return {"requests_per_second": level["requests_per_second"],
            "p50_ms": level["latency_ms"]["p50"], "p99_ms": level["latency_ms"]["p99"]}


def main():
    d = tempfile.mkdtemp()
    certificates(d)
    open(f"{d}/token", "w").write(KEY + "\n")
    os.makedirs(f"{d}/m")
    open(f"{d}/m/config.json", "w").write('{"model_type":"llama"}')
    plain, tls, api = port(), port(), port()
    engines = [engine(d, plain, False), engine(d, tls, True)]
    for p in (plain, tls):
        wait_port(p)
    open(f"{d}/vllama.toml", "w").write(f"""
[api]
listen = "127.0.0.1:{api}"
[admin]
socket = "{d}/admin.sock"
[paths]
state_dir = "{d}/state"
runtime_dir = "{d}/run"
cache_dir = "{d}/cache"
[engine]
program = "{fake}"
env = {{ FAKE_VLLM_STARTUP_MS = "0", FAKE_VLLM_TOKEN_MS = "0" }}
[models."local"]
source = "{d}/m"
[models."remote"]
remote = "http://127.0.0.1:{plain}"
[models."remote-tls"]
remote = "https://localhost:{tls}"
token_file = "{d}/token"
ca_file = "{d}/ca.pem"
""")
    log = open(f"{d}/vllamad.log", "w")
    vllamad = subprocess.Popen([daemon, "--config", f"{d}/vllama.toml", "--log-format", "text"],
                               stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="warn"))
    wait_port(api)
    paths = ["local", "remote", "remote-tls"]
    results = {}
    try:
        for c, n in [(1, N // 2), (64, N * 5)]:
            for _ in range(ROUNDS):
                for model in paths:
                    r = bench(api, model, c, n)
                    results.setdefault((c, model), []).append(r)
    finally:
        stop_all([vllamad, *engines])
    def stat(rs, key):
        vals = sorted(x[key] for x in rs)
        return statistics.median(vals), vals[0], vals[-1]
    print("| concurrency | path | requests/s | p50 ms | p99 ms | p50 added to local |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in (1, 64):
        base = stat(results[(c, "local")], "p50_ms")[0]
        for model in paths:
            rs = results[(c, model)]
            rps, lo, hi = stat(rs, "requests_per_second")
            p50 = stat(rs, "p50_ms")
            p99 = stat(rs, "p99_ms")
            print(f"| {c} | {model} | {rps:.0f} ({lo:.0f}–{hi:.0f}) | {p50[0]:.3f} | "
                  f"{p99[0]:.3f} | {p50[0] - base:+.3f} |")


if __name__ == "__main__":
    main()
