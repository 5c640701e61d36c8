"""The data parallelism of ``fit`` under ``torchrun`` (see ``fit``'s docstring): the model is
wrapped in ``DistributedDataParallel`` for the forward and backward passes only (``fit``
keeps handing the user's own module to callbacks, checkpoints and evaluation), each rank
trains on its slice of every batch, the gradients of parameters a method added to the
optimizer but not to the model are averaged by hand, and at the end of an epoch the buffers
are made equal again.
"""
from __future__ import annotations

from typing import Any, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parallel import DistributedDataParallel

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


def check_split(train: Any, world: int) -> None:
    """Refuse, before any step and identically on every rank, a loader whose batches cannot be
    split over ``world`` processes: a batch size that ``world`` does not divide, or a last
    batch with fewer samples than processes. A loader that shards itself (``train.sharded``,
    e.g. :class:`prunekit.data.files.FileLoader` with a ``DistributedSampler``) already gives
    each rank its part and is not split again."""
    if world <= 1 or getattr(train, "sharded", False):
        return
    size = getattr(train, "batch_size", None)
    if not isinstance(size, int):
        return  # a plain list of batches: checked batch by batch in fit
    if size % world:
        raise ValueError(f"batch size {size} cannot be split over {world} processes (WORLD_SIZE): "
                         f"use a batch size that is a multiple of {world}")
    n = getattr(train, "num_samples", None)
    tail = n % size if isinstance(n, int) and not getattr(train, "drop_last", False) else 0
    if tail and tail < world:
        raise ValueError(f"the last batch of each epoch holds {tail} of {n} samples, fewer than the "
                         f"{world} processes: change the batch size or the number of samples "
                         f"(train_subset), or drop the last batch")


def check_batch(full: int, world: int) -> None:
    if world > 1 and full < world:
        raise ValueError(f"a batch of {full} samples cannot be split over {world} processes")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)``: gradients all-reduced in buckets while ``backward``
    runs. ``find_unused_parameters`` because a method may leave some parameters without a
    gradient in a step; ``broadcast_buffers=False`` because BatchNorm statistics are averaged
    once per epoch by :func:`sync_buffers` instead of copied from rank 0 every step."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False,
                                   find_unused_parameters=True)


def extra_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> List[nn.Parameter]:
    """Parameters the optimizer updates that are not the model's (a method's thresholds):
    DDP does not see them, :func:`average_extra_gradients` averages them."""
    own = {id(p) for p in model.parameters()}
    return [p for g in optimizer.param_groups for p in g["params"] if id(p) not in own]


def average_extra_gradients(params: List[nn.Parameter]) -> None:
    """The plain mean over ranks, as DDP takes for the model's own gradients (``fit`` scales
    each rank's loss by its share of the batch, so the mean is the whole batch's gradient)."""
    if params:
        distributed.average_gradients(params, weight=1.0 / distributed.world_size())


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
