"""The hand-written data parallelism of ``fit`` under ``torchrun`` (see ``fit``'s docstring
for the design and why it is not ``DistributedDataParallel``): each rank trains on its slice
of every batch, gradients are averaged by ``distributed.average_gradients``, and at the end
of an epoch the buffers are made equal again.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from .. import distributed


def my_slice(batch: Any) -> Any:
    """This rank's piece of a batch: the rank-th of ``tensor_split(batch, N)`` along dim 0,
    recursively through tuples, lists and dicts."""
    if isinstance(batch, torch.Tensor):
        return torch.tensor_split(batch, distributed.world_size())[distributed.rank()]
    if isinstance(batch, (list, tuple)):
        return type(batch)(my_slice(b) for b in batch)
    if isinstance(batch, dict):
        return {k: my_slice(v) for k, v in batch.items()}
    return batch


def average_gradients(optimizer: torch.optim.Optimizer, batch: int, full: int) -> None:
    """Average the gradients of every parameter ``optimizer`` updates over the ranks, each
    rank weighted by its share ``batch / full`` of the batch, so the update is that of the
    whole batch's mean loss. Every rank must call it, even one whose slice was empty."""
    distributed.average_gradients([p for g in optimizer.param_groups for p in g["params"]],
                                  weight=batch / full if full else 0.0)


def sync_buffers(model: nn.Module) -> None:
    """Average the normalisation layers' running statistics over the ranks and give every
    other buffer rank 0's value, so all ranks hold the same model."""
    averaged, copied = [], []
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is None:
                continue
            if isinstance(module, _NormBase) and name in ("running_mean", "running_var") \
                    and buf.is_floating_point():
                averaged.append(buf)
            else:
                copied.append(buf)
    distributed.all_reduce_mean(averaged)
    distributed.broadcast_(copied)
