#!/usr/bin/env bash
# Runs tests/real-engine/ray_trial.py: the real engine's venv (install.sh) with PyPI's `ray`
# added in a venv of its own that sees the engine's packages through a .pth file (the engine
# venv itself stays as install.sh made it). By hand, not in tests/run: it takes minutes and
# the outcome is recorded in docs/SCALING.md.
#
#   bash tests/real-engine/ray_trial.sh [TIMEOUT_S]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${VLLAMA_CACHE_ROOT:-/var/cache/vllama}
eval "$(bash tests/real-engine/install.sh "$cache/real-engine")"
venv=$(dirname "$(dirname "$VLLAMA_REAL_VLLM")")
site=$(echo "$venv"/lib/python3*/site-packages)
ray_venv=$cache/ray-venv
if [ ! -x "$ray_venv/bin/ray" ]; then
  # The engine's own interpreter: the .pth file only works for the same Python.
  base=$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')
  "$base/bin/python3" -m venv "$ray_venv"
  echo "$site" > "$(echo "$ray_venv"/lib/python3*/site-packages)/vllm-engine.pth"
  "$ray_venv/bin/pip" install -q "ray==2.*"
fi
exec "$ray_venv/bin/python" tests/real-engine/ray_trial.py "$ray_venv/bin/python" \
  "$VLLAMA_TINY_MODEL" "${1:-480}"
