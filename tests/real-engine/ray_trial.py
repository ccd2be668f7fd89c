"""A real run of vLLM's Ray executor: a Ray cluster of two nodes on loopback (a head and a
worker, each its own raylet, through ray.cluster_utils.Cluster), then vllamad's own argv for
a model with `executor = "ray"`, `pipeline_parallel = 2` against it, on the CPU engine and the
tiny model. Prints what happened, step by step, and the engine's last lines when it fails:
docs/SCALING.md records the outcome.

  python ray_trial.py VLLM_PYTHON_WITH_RAY TINY_MODEL_DIR [TIMEOUT_S]

Run by hand (it needs `ray` installed next to vLLM: tests/real-engine/ray_trial.sh).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    python, model = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 480
    import ray
    from ray.cluster_utils import Cluster

    t0 = time.time()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(f"ray {ray.__version__}: {len(nodes)} nodes alive at {cluster.address} "
          f"({time.time() - t0:.1f} s)", flush=True)
    ray.shutdown()

    port = free_port()
    # What vllamad runs for [models."tiny"] executor = "ray", pipeline_parallel = 2,
    # ray_address = <the cluster> (engine/vllm.rs), over TCP instead of its Unix socket.
    argv = [python, "-m", "vllm.entrypoints.cli.main", "serve", model,
            "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
            "--enforce-eager", "--kv-cache-memory-bytes", "64M", "--max-model-len", "512",
            "--dtype", "float32", "--pipeline-parallel-size", "2",
            "--distributed-executor-backend", "ray"]
    env = dict(os.environ, RAY_ADDRESS=cluster.address, VLLM_NO_USAGE_STATS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print("argv:", " ".join(argv[1:]), flush=True)
    print("RAY_ADDRESS:", cluster.address, flush=True)
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ray-trial-{port}.log")
    log = open(log_path, "w")
    engine = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.time()
    outcome = "timeout"
    while time.time() - started < timeout:
        if engine.poll() is not None:
            outcome = f"exited {engine.returncode}"
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    outcome = "ready"
                    break
        except OSError:
            pass
        time.sleep(1)
    print(f"engine: {outcome} after {time.time() - started:.1f} s", flush=True)
    if outcome == "ready":
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 4}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        print("chat:", answer["usage"], flush=True)
    if engine.poll() is None:
        engine.terminate()
        try:
            engine.wait(30)
        except subprocess.TimeoutExpired:
            engine.kill()
    log.close()
    lines = open(log_path, errors="replace").read().splitlines()
    interesting = [l for l in lines if any(w in l for w in ("ERROR", "Error", "error", "raise",
                                                              "not supported", "Traceback"))]
    print("--- the engine's error lines (last 25) ---")
    print("\n".join(interesting[-25:]))
    print("--- its last 15 lines ---")
    print("\n".join(lines[-15:]))
    cluster.shutdown()
    return 0 if outcome == "ready" else 1


if __name__ == "__main__":
    sys.exit(main())
