#!/usr/bin/env python3
"""CI's guard on what the OpenAI pass-through costs.

16-token completions, not streamed, c = 8, from an engine that does not wait, go through
vllamad to its own fake engine. Both processes run under callgrind, which counts the
instructions each executes; the guard divides vllamad's instructions per request by its
engine's for the same requests. Counted instructions do not move with the host's speed or
load: the CPU-time ratio this guard read before (both processes' scheduler time in the same
seconds) still swung 1.36-1.77 between the rounds of one run and failed a CI run on an
unchanged pass-through, while the counts repeat to within a few tenths of a percent. The
guard fails when the ratio is more than 20 % above the one recorded in proxy_guard.json
(recorded the same way, `--record`).

usage: python3 tests/bench/proxy_guard.py [--record]     (release binaries: target/release;
needs valgrind)
"""
import glob, json, os, shutil, subprocess, sys, tempfile, time

from procs import free_port, stop_all, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = os.path.join(HERE, "proxy_guard.json")
TARGET = os.path.abspath(os.environ.get("TARGET", "target/release"))
ROUNDS, C, N, TOKENS, SLACK = 3, 8, 1500, 16, 1.20


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


def engine_of(pid, seconds=60):
    """The engine vllamad started: its child process (valgrind, exec'd by the wrapper)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == pid:
                    return int(entry)
        time.sleep(0.1)
    raise SystemExit("vllamad's engine was not found")


def dump(pid, prefix, vgdb):
    """Asks callgrind in `pid` (through vgdb, as callgrind_control does) to write its counts
    since the last dump, which zeroes them; returns the instructions counted."""
    before = set(glob.glob(f"{prefix}.{pid}.*"))
    subprocess.run(["vgdb", f"--vgdb-prefix={vgdb}", f"--pid={pid}", "dump"], check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in set(glob.glob(f"{prefix}.{pid}.*")) - before:
            text = open(path).read()
            for line in text.splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise SystemExit(f"callgrind in {pid} wrote no dump")


def main():
    if not shutil.which("valgrind") or not shutil.which("vgdb"):
        raise SystemExit("the proxy guard needs valgrind (apt-get install valgrind)")
    fake = os.path.join(TARGET, "fake-vllm")
    work = tempfile.mkdtemp()
    procs = []
    # vllamad gives its engine a TMPDIR of its own, where vgdb would look for the engine's
    # control pipes: one prefix for every valgrind and vgdb
    prefix = os.path.join(work, "vgdb")
    cg = ["valgrind", "--tool=callgrind", "--quiet", f"--vgdb-prefix={prefix}"]
    try:
        vp = free_port()
        mdir = os.path.join(work, "m")
        os.makedirs(mdir)
        open(os.path.join(mdir, "config.json"), "w").write('{"model_type":"llama"}')
        wrapper = os.path.join(work, "engine")
        open(wrapper, "w").write("#!/bin/sh\nexec " + " ".join(cg) +
                                 f" --callgrind-out-file={work}/engine.cg.%p {fake} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        cfg = os.path.join(work, "v.toml")
        open(cfg, "w").write(f'[api]\nlisten = "127.0.0.1:{vp}"\n[admin]\nsocket = "{work}/a.sock"\n'
                             f'[paths]\nstate_dir = "{work}/s"\nruntime_dir = "{work}/r"\ncache_dir = "{work}/c"\n'
                             f'[log]\nformat = "text"\n[engine]\nprogram = "{wrapper}"\nmax_in_flight = 100000\n'
                             f'[models."tiny"]\nsource = "{mdir}"\n'
                             'env = { FAKE_VLLM_TOKEN_MS = "0", FAKE_VLLM_STARTUP_MS = "10" }\n')
        vd = subprocess.Popen(cg + [f"--callgrind-out-file={work}/vllamad.cg.%p",
                                    os.path.join(TARGET, "vllamad"), "--config", cfg],
                              stderr=open(os.path.join(work, "vllamad.log"), "w"))
        procs.append(vd)
        wait_port(vp, 60)
        bench(f"http://127.0.0.1:{vp}", 200)  # the engine starts; connections warm
        child = engine_of(vd.pid)
        ratios = []
        for _ in range(ROUNDS):
            dump(vd.pid, f"{work}/vllamad.cg", prefix)
            dump(child, f"{work}/engine.cg", prefix)
            n = bench(f"http://127.0.0.1:{vp}", N)
            vllamad_ir = dump(vd.pid, f"{work}/vllamad.cg", prefix) / n
            engine_ir = dump(child, f"{work}/engine.cg", prefix) / n
            ratios.append(vllamad_ir / engine_ir)
            print(f"  instructions per request: engine {engine_ir:,.0f}, vllamad {vllamad_ir:,.0f}: "
                  f"ratio {ratios[-1]:.3f}")
        ratio = min(ratios)
    finally:
        stop_all(procs, grace=60)
    shutil.rmtree(work, ignore_errors=True)  # kept when the guard broke, to read
    if "--record" in sys.argv:
        json.dump({"ratio": round(ratio, 3), "rounds": [round(r, 3) for r in ratios],
                   "measure": "callgrind instructions per request, vllamad / its engine"},
                  open(RECORD, "w"), indent=1)
        print(f"recorded ratio {ratio:.3f} in {RECORD}")
        return 0
    recorded = json.load(open(RECORD))["ratio"]
    verdict = "ok" if ratio <= recorded * SLACK else "FAIL"
    print(f"pass-through instructions per request / the engine's: {ratio:.3f} (lowest of {ROUNDS}; "
          f"recorded {recorded:.3f}, limit {recorded * SLACK:.3f}): {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
