#!/usr/bin/env bash
# One command for a machine with CUDA GPUs: epoch time fp32 vs AMP vs channels_last
# (CIFAR-10 ResNet-56), mask exactness under fp16 GradScaler, DDP on the GPUs present.
# Prints a table; under 5 minutes on one modern GPU. Without CUDA it runs at tiny sizes
# on the CPU (CI runs it: tests/test_gpu_check.py).
#   bash benchmarks/gpu_check.sh [--data-dir CIFAR10_DIR] [--tiny]
# PYTHON picks the interpreter (default: python3); prunekit from src/ unless installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
