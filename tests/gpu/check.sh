#!/usr/bin/env bash
# One-command check of vllamad's NVML probe on a machine with an NVIDIA GPU and PyTorch
# (python3 -c 'import torch'): device count, memory, and GPU memory attributed to a process
# group (what the scheduler reports per engine). Prints the readings and "VERDICT: PASS".
#
#   tests/gpu/check.sh                # builds the check, then runs it
#   tests/gpu/check.sh path/to/gpu_check   # runs a check built elsewhere (x86-64)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release --example gpu_check -p vllamad
  bin=target/release/examples/gpu_check
fi
nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv || echo "(nvidia-smi not available)"
exec "$bin"
