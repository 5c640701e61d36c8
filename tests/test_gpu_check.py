"""benchmarks/gpu_check.sh keeps working where there is no GPU: at tiny sizes on the CPU it
prints its table (epoch times by precision and memory format, mask exactness under fp16
GradScaler, DDP with 2 gloo processes) and exits 0."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_gpu_check_runs_on_cpu_at_tiny_sizes():
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PRUNEKIT_DEVICE", "PRUNEKIT_PRECISION", "PRUNEKIT_CHANNELS_LAST",
                "PRUNEKIT_COMPILE"):
        env.pop(key, None)
    proc = subprocess.run(["bash", str(SCRIPT), "--tiny", "--images", "128"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for row in (r"epoch: fp32 +\|", r"epoch: AMP \(bf16\) +\|", r"epoch: fp32 \+ channels_last +\|",
                r"mask exact under fp16 GradScaler +\| yes", r"DDP 2 procs \(gloo\) vs 1 +\|.*same to 5%"):
        assert re.search(row, out), (row, out)
