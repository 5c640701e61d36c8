"""Worker of bench_scale.py's DDP part: ``python this.py OUT EPOCHS`` (one process) or under
``torchrun --nproc_per_node 2`` (rank 0 writes OUT): fit a small BatchNorm conv net on the
synthetic dataset with batch 64 and record every step's training loss and the epoch times."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn


def main(out: Path, epochs: int) -> None:
    torch.set_num_threads(1)
    from prunekit import data, distributed
    from prunekit.io import atomic_write_json
    from prunekit.training import Callback, fit

    distributed.setup()
    train, test, _ = data.loaders("synthetic", batch_size=64, test_batch_size=500, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                          nn.Flatten(), nn.Linear(32 * 16, 10))

    class Losses(Callback):
        def __init__(self):
            self.losses = []

        def on_step_end(self, state):
            self.losses.append(state.loss)

    rec = Losses()
    hist = fit(model, train, test, epochs=epochs, lr=0.05, seed=0, progress=False, callbacks=[rec])
    # state.loss is this rank's half-batch loss under DDP: average over the ranks per step.
    losses = torch.tensor(rec.losses, dtype=torch.float64)
    if distributed.world_size() > 1:
        losses = torch.tensor(distributed.all_reduce_sum(losses.tolist())) / distributed.world_size()
    if distributed.is_main():
        atomic_write_json(out, {"losses": losses.tolist(), "epoch_seconds": [r["seconds"] for r in hist],
                                "test_top1": hist[-1]["test_top1"], "batch": 64,
                                "world": distributed.world_size()})


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
