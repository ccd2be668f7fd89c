#!/usr/bin/env bash
# One-command check of vllamad on a machine with an NVIDIA GPU, from binaries built elsewhere
# (x86-64, glibc): BIN=dir holding vllamad, vllamactl, fake-vllm and gpu_check.
#
#   BIN=target/release OUT=/tmp/out tests/gpu/device-check.sh
#
# 1. The NVML probe (gpu_check): device count, memory, and GPU memory attributed to a process
#    group holding 1 GiB through PyTorch (skipped without torch).
# 2. vllamad with real NVML: GPU gauges in /metrics, the GPU line of `vllamactl status`, and
#    GPU placement of an engine (the fake engine stands in for vLLM; its model "weighs" 8 GiB):
#    the CUDA_VISIBLE_DEVICES and --gpu-memory-utilization it was given from NVML's figures.
# Writes metrics.txt, status.txt, engine-argv.json, engine-env.json and daemon.log to $OUT.
set -uo pipefail
BIN=$(cd "${BIN:?BIN=folder of the binaries}" && pwd)
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
fail=0
# curl, or Python where the machine has no curl: http GET|POST URL [BODY].
http() {
  if command -v curl >/dev/null; then
    if [ $# -ge 3 ]; then curl -sS -H 'Host: localhost' "$2" -d "$3"; else curl -fsS -H 'Host: localhost' "$2"; fi
  else
    python3 - "$@" <<'PY'
import sys, urllib.request
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(sys.argv[2], data=data, headers={"Host": "localhost", "Content-Type": "application/json"})
try:
    sys.stdout.write(urllib.request.urlopen(req, timeout=30).read().decode())
except Exception as e:
    sys.stdout.write(getattr(e, "read", lambda: str(e).encode())().decode()); sys.exit(1)
PY
  fi
}
verdict() { echo "CHECK $1: $2"; [ "$1" = PASS ] || fail=1; }

nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw --format=csv || echo "(no nvidia-smi)"
nvidia-smi --query-compute-apps=pid,used_memory --format=csv 2>/dev/null | head -5
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1
python3 -c 'import vllm; print("vllm", vllm.__version__)' 2>&1 | tail -1

echo "== 1. NVML probe"
if python3 -c 'import torch' 2>/dev/null; then
  timeout 150 "$BIN/gpu_check" && verdict PASS "probe + process-group attribution" || verdict FAIL "gpu_check"
else
  echo "(no torch: process-group attribution not checked)"
fi

echo "== 2. vllamad with real NVML"
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
mkdir -p "$work/model" "$work/fake"
echo '{"architectures":["LlamaForCausalLM"],"model_type":"llama","max_position_embeddings":4096}' > "$work/model/config.json"
truncate -s 8G "$work/model/model.safetensors"
cat > "$work/vllama.toml" <<TOML
[api]
listen = "127.0.0.1:$port"
[admin]
socket = "$work/admin.sock"
[paths]
state_dir = "$work/state"
runtime_dir = "$work/run"
cache_dir = "$work/cache"
[metrics]
sample_interval = "200ms"
[engine]
program = "$BIN/fake-vllm"
[models."big"]
source = "$work/model"
env = { FAKE_VLLM_STATE_DIR = "$work/fake" }
TOML
"$BIN/vllamad" --config "$work/vllama.toml" --log-format text > "$OUT/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 50); do http GET "http://127.0.0.1:$port/api/version" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
http GET "http://127.0.0.1:$port/metrics" > "$OUT/metrics.txt"
grep -E '^vllama_gpu_' "$OUT/metrics.txt"
grep -q '^vllama_gpu_memory_total_bytes{gpu="0"' "$OUT/metrics.txt" && verdict PASS "GPU gauges in /metrics" || verdict FAIL "no GPU gauges in /metrics"
"$BIN/vllamactl" --socket "$work/admin.sock" status | tee "$OUT/status.txt"
grep -q "GPU0 .*% memory" "$OUT/status.txt" && grep -q '^  0 ' "$OUT/status.txt" && verdict PASS "GPUs in vllamactl status and STATUS=" || verdict FAIL "vllamactl status shows no GPU"
http POST "http://127.0.0.1:$port/v1/chat/completions" '{"model":"big","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'; echo
cp "$work/fake/argv.json" "$OUT/engine-argv.json" 2>/dev/null
cp "$work/fake/env.json" "$OUT/engine-env.json" 2>/dev/null
"$BIN/vllamactl" --socket "$work/admin.sock" ps | tee "$OUT/ps.txt"
python3 - "$OUT" <<'PY' && verdict PASS "engine placed from NVML figures" || verdict FAIL "engine placement"
import json, sys
out = sys.argv[1]
argv = json.load(open(f"{out}/engine-argv.json"))
env = json.load(open(f"{out}/engine-env.json"))
util = float(argv[argv.index("--gpu-memory-utilization") + 1])
print("CUDA_VISIBLE_DEVICES", env.get("CUDA_VISIBLE_DEVICES"), "CUDA_DEVICE_ORDER", env.get("CUDA_DEVICE_ORDER"), "--gpu-memory-utilization", util)
assert env.get("CUDA_VISIBLE_DEVICES") == "0", env
assert 0.0 < util < 1.0, util
PY
kill -TERM $daemon; wait $daemon
echo "daemon exit: $?"
rm -rf "$work"
[ $fail = 0 ] && echo "VERDICT: PASS" || echo "VERDICT: FAIL"
exit $fail
