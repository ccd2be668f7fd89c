#!/usr/bin/env bash
# The GPU benchmark protocol, one command on a machine with an NVIDIA GPU: the same load
# (`vllamactl bench`, streamed, c = 1, 8, 64) against
#   (1) `vllm serve MODEL` alone, on a TCP port;
#   (2) vllamad serving the same model with the same vLLM (started on demand, Unix socket);
#   (3) Ollama, when `ollama` is installed (its own model tag, OLLAMA_MODEL).
# Prints one table per target, then ratios.
#
# Needs: vLLM installed (VLLM=path of its `vllm`, default: `vllm` on PATH), the model's files
# on local disk (MODEL=a folder, or a Hugging Face repository already in HF_HOME's cache),
# vllamad and vllamactl (BIN=folder, default target/release), curl.
#
#   MODEL=/models/Qwen2.5-7B-Instruct tests/gpu/bench.sh
#   MODEL=Qwen/Qwen2.5-7B-Instruct OLLAMA_MODEL=qwen2.5:7b tests/gpu/bench.sh
set -euo pipefail
MODEL=${MODEL:?MODEL=a model folder or an HF repository in the local cache}
VLLM=${VLLM:-$(command -v vllm || true)}
BIN=$(cd "${BIN:-target/release}" && pwd)
LEVELS=${LEVELS:-1,8,64}
N=${N:-200}
TOKENS=${TOKENS:-256}
[ -x "$VLLM" ] || { echo "vLLM not found: set VLLM=/path/to/vllm"; exit 2; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
"$VLLM" --version 2>/dev/null | tail -1 || true
bench() { "$BIN/vllamactl" bench --url "$1" --api "$2" --model "$3" -c "$LEVELS" -n "$N" --max-tokens "$TOKENS" --json; }
wait_http() { for _ in $(seq 1200); do curl -fs -H 'Host: localhost' "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }

echo "== (1) vllm serve alone"
"$VLLM" serve "$MODEL" --served-model-name bench --host 127.0.0.1 --port 18000 --disable-log-requests > "$work/vllm.log" 2>&1 &
VPID=$!
wait_http http://127.0.0.1:18000/health || { tail -30 "$work/vllm.log"; exit 1; }
bench http://127.0.0.1:18000 openai bench > "$work/direct.json"
kill $VPID; wait $VPID 2>/dev/null || true

echo "== (2) vllamad + vLLM"
src=$MODEL; [ -d "$MODEL" ] && src=$(cd "$MODEL" && pwd)
cat > "$work/vllama.toml" <<TOML
[api]
listen = "127.0.0.1:18434"
[admin]
socket = "$work/admin.sock"
[paths]
# The store is <state_dir>/hub: HF_HOME's cache, where a repository MODEL already is.
state_dir = "${HF_HOME:-$HOME/.cache/huggingface}"
runtime_dir = "$work/run"
cache_dir = "$work/cache"
[engine]
program = "$VLLM"
load_timeout = "30m"
[models."bench"]
source = "$src"
TOML
"$BIN/vllamad" --config "$work/vllama.toml" --log-format text > "$work/vllamad.log" 2>&1 &
wait_http http://127.0.0.1:18434/api/version
"$BIN/vllamactl" --socket "$work/admin.sock" preload bench
bench http://127.0.0.1:18434 openai bench > "$work/vllamad-openai.json"
bench http://127.0.0.1:18434 ollama bench > "$work/vllamad-ollama.json"
"$BIN/vllamactl" --socket "$work/admin.sock" unload bench || true

if command -v ollama >/dev/null && [ -n "${OLLAMA_MODEL:-}" ]; then
  echo "== (3) Ollama"
  bench "${OLLAMA_URL:-http://127.0.0.1:11434}" ollama "$OLLAMA_MODEL" > "$work/ollama.json"
fi

python3 - "$work" <<'PY'
import json, os, sys
w = sys.argv[1]
runs = [(n, os.path.join(w, f)) for n, f in (("vLLM alone", "direct.json"), ("vllamad OpenAI", "vllamad-openai.json"),
        ("vllamad Ollama", "vllamad-ollama.json"), ("Ollama", "ollama.json")) if os.path.exists(os.path.join(w, f))]
data = {n: json.load(open(p)) for n, p in runs}
print(f"{'target':<16} {'c':>4} {'req/s':>8} {'tok/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'ttft p50':>9} {'ttft p99':>9} {'err':>4}")
for n, r in data.items():
    for l in r["levels"]:
        t = l["ttft_ms"] or {"p50": 0, "p99": 0}
        print(f"{n:<16} {l['concurrency']:>4} {l['requests_per_second']:>8.2f} {l['output_tokens_per_second']:>9.1f} "
              f"{l['latency_ms']['p50']:>9.1f} {l['latency_ms']['p99']:>9.1f} {t['p50']:>9.1f} {t['p99']:>9.1f} {sum(l['errors'].values()):>4}")
base = data["vLLM alone"]["levels"]
for n in [k for k in data if k != "vLLM alone"]:
    ratios = [f"c={b['concurrency']}: {l['output_tokens_per_second'] / b['output_tokens_per_second']:.3f}"
              for b, l in zip(base, data[n]["levels"]) if b["output_tokens_per_second"]]
    print(f"tokens/s of {n} / vLLM alone: " + ", ".join(ratios))
PY
