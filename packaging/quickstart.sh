#!/usr/bin/env bash
# From a fresh checkout to an Ollama chat answered by a real vLLM, then the daemon keeps
# running in the foreground (Ctrl-C stops it). What it does, in order:
#   1. builds vllamad and vllamactl;
#   2. runs vllamad on the development configuration (packaging/dev.toml, no root);
#   3. `vllamactl engine install` — the daemon installs vLLM itself: the CUDA build with an
#      NVIDIA GPU, else the CPU build (kept under the cache root, so a second run is quick);
#   4. the model: with a GPU and hub access, `vllamactl pull qwen2.5:0.5b`; else a tiny
#      random-weight model made locally (no hub needed: its words are noise, the path real);
#   5. asks it through the official `ollama` Python client and prints the answer.
#
#   bash packaging/quickstart.sh            QUICKSTART_EXIT=1 stops after the answer
#
# Caches: VLLAMA_CACHE_ROOT, else /var/cache/vllama (root), else ~/.cache/vllama.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

cache=${VLLAMA_CACHE_ROOT:-/var/cache/vllama}
if ! mkdir -p "$cache" 2>/dev/null || ! [ -w "$cache" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/vllama
fi
mkdir -p "$cache/quickstart/venv.d" "$cache/pip"
dev=target/vllama-dev
mkdir -p "$dev"
# The engine builds live in the cache (GiBs; `cargo clean` keeps them): the venv folder the
# dev configuration names is a link into it.
ln -sfn "$cache/quickstart/venv.d" "$dev/venv.d"

echo "== building vllamad and vllamactl"
cargo build -q --locked -p vllamad -p vllamactl
ctl=(target/debug/vllamactl --socket "$dev/admin.sock")
# pip in the daemon shares the cache of the test kit and of earlier runs.
export PIP_CACHE_DIR=$cache/pip
export VLLAMA_LOG_FILTER=${VLLAMA_LOG_FILTER:-info,vllm=warn}

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

helper() {
  local daemon=$1
  for _ in $(seq 100); do [ -S "$dev/admin.sock" ] && break; sleep 0.1; done
  local build=cpu model=tiny
  if "${ctl[@]}" engine status --json | grep -q '"suggested_build":"cuda"' &&
     "${ctl[@]}" doctor --json | grep -q '"name":"hub","outcome":"pass"'; then
    build=cuda model=qwen2.5:0.5b
  fi
  say "vllamactl engine install --$build"
  "${ctl[@]}" engine install --$build || { say "engine install failed (above); vllamactl doctor may say more"; kill "$daemon"; return 1; }
  if [ $model = tiny ]; then
    if [ ! -f "$dev/tiny-hermes/config.json" ]; then
      say "making a tiny local model (random weights, no hub) in $dev/tiny-hermes"
      rm -rf "$dev/tiny-hermes.tmp"
      "$dev/venv/bin/python" tests/real-engine/make_tiny_model.py "$dev/tiny-hermes.tmp" --family hermes >/dev/null 2>&1
      mv "$dev/tiny-hermes.tmp" "$dev/tiny-hermes"
    fi
  else
    say "vllamactl pull $model"
    "${ctl[@]}" pull $model
  fi
  say "vllamactl preload $model (starts its vLLM engine)"
  "${ctl[@]}" preload $model
  local client=$cache/quickstart/client-venv
  if ! "$client/bin/python" -c 'import ollama' 2>/dev/null; then
    python3 -m venv "$client" && "$client/bin/pip" install -q --disable-pip-version-check 'ollama==0.6.3'
  fi
  say "ollama.chat(model=\"$model\", messages=[{\"role\": \"user\", \"content\": \"Why is the sky blue?\"}])"
  OLLAMA_HOST=127.0.0.1:11434 "$client/bin/python" - "$model" <<'PY'
import sys, ollama
r = ollama.chat(model=sys.argv[1], messages=[{"role": "user", "content": "Why is the sky blue?"}],
                options={"num_predict": 32})
print("answer:", r.message.content.strip()[:400])
print(f"({r.eval_count} tokens from vLLM in {r.eval_duration / 1e9:.2f}s)")
PY
  local took=$(( $(date +%s) - started ))
  say "answered ${took}s after the start. Next:"
  cat >&2 <<TXT
  ${ctl[*]} status            # the daemon, its engine, GPUs
  ${ctl[*]} doctor            # every check, with fixes
  OLLAMA_HOST=127.0.0.1:11434 ollama run $model   # any Ollama client works unchanged
  curl http://127.0.0.1:11434/api/chat -d '{"model":"$model","messages":[{"role":"user","content":"hi"}]}'
  vllamad keeps running here; Ctrl-C stops it (and its engine).
TXT
  if [ -n "${QUICKSTART_EXIT:-}" ]; then kill -TERM "$daemon"; fi
}

say "vllamad --config packaging/dev.toml (in the foreground)"
helper $$ &
exec target/debug/vllamad --config packaging/dev.toml
