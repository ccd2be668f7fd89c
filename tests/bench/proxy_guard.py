#!/usr/bin/env python3
"""CI's guard on what the OpenAI pass-through costs.

16-token completions, not streamed, c = 8, from an engine that does not wait, go through
vllamad to its own fake engine. What vllamad spends in CPU per request, over what its engine
spends for the same requests in the same seconds, is a ratio that moves little with the
machine's speed or load: both processes run side by side through the same moments of the
host (an earlier version divided by the engine's cost on a separate, direct run, and read
2.2-3.2 on this machine as the host's load came and went). Other work can only add to it,
so the guard takes the lowest of its rounds, and fails when that is more than 20 % above the
one recorded in proxy_guard.json (recorded the same way).

usage: python3 tests/bench/proxy_guard.py [--record]     (release binaries: target/release)
"""
import json, os, subprocess, sys, tempfile

from procs import cpu_ns_seconds as cpu_seconds, free_port, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "proxy_guard.json")
TARGET = os.path.abspath(os.environ.get("TARGET", "target/release"))
ROUNDS, C, N, TOKENS, SLACK = 5, 8, 3000, 16, 1.20


def bench(url, n):
    out = subprocess.run([os.path.join(TARGET, "vllamactl"), "bench", "--url", url, "--api", "openai",
                          "--model", "tiny", "-c", str(C), "-n", str(n), "--max-tokens", str(TOKENS),
                          "--no-stream", "--warmup", "1", "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench failed: {out.stderr}")
    level = json.loads(out.stdout)["levels"][0]
    if sum(level["errors"].values()):
        raise SystemExit(f"errors in the load: {level['errors']}")
    return level["requests"] + C  # the warm-up requests count too


def engine_of(pid):
    """The engine vllamad started: its child process."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                return int(entry)
    raise SystemExit("vllamad's engine was not found")


def main():
    fake = os.path.join(TARGET, "fake-vllm")
    work = tempfile.mkdtemp()
    procs = []
    try:
        vp = free_port()
        mdir = os.path.join(work, "m")
        os.makedirs(mdir)
        open(os.path.join(mdir, "config.json"), "w").write('{"model_type":"llama"}')
        cfg = os.path.join(work, "v.toml")
        open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:{vp}"\n[admin]\nsocket = "{work}/a.sock"\n'
                             f'[paths]\nstate_dir = "{work}/s"\nruntime_dir = "{work}/r"\ncache_dir = "{work}/c"\n'
                             f'[log]\nformat = "text"\n[engine]\nprogram = "{fake}"\nmax_in_flight = 100000\n'
                             f'[models."tiny"]\nsource = "{mdir}"\n'
                             'env = { FAKE_VLLM_TOKEN_MS = "0", FAKE_VLLM_STARTUP_MS = "10" }\n')
        vd = subprocess.Popen([os.path.join(TARGET, "vllamad"), "--config", cfg],
                              stderr=open(os.path.join(work, "vllamad.log"), "w"))
        procs.append(vd)
        wait_port(vp)
        bench(f"http://127.0.0.1:{vp}", 200)  # the engine starts; connections warm
        child = engine_of(vd.pid)
        ratios = []
        for _ in range(ROUNDS):
            v0, e0 = cpu_seconds(vd.pid), cpu_seconds(child)
            n = bench(f"http://127.0.0.1:{vp}", N)
            vllamad_us = (cpu_seconds(vd.pid) - v0) / n * 1e6
            engine_us = (cpu_seconds(child) - e0) / n * 1e6
            ratios.append(vllamad_us / engine_us)
            print(f"  CPU per request: engine {engine_us:.0f} µs, vllamad {vllamad_us:.0f} µs: "
                  f"ratio {ratios[-1]:.2f}")
        ratio = min(ratios)
    finally:
        stop_all(procs)
    if "--record" in sys.argv:
        json.dump({"ratio": round(ratio, 3), "rounds": [round(r, 3) for r in ratios]},
                  open(RECORD, "w"), indent=1)
        print(f"recorded ratio {ratio:.2f} in {RECORD}")
        return 0
    recorded = json.load(open(RECORD))["ratio"]
    verdict = "ok" if ratio <= recorded * SLACK else "FAIL"
    print(f"pass-through CPU per request / the engine's: {ratio:.2f} (lowest of {ROUNDS}; "
          f"recorded {recorded:.2f}, limit {recorded * SLACK:.2f}): {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
