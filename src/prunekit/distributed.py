"""Multi-process data parallelism under ``torchrun``: one process per core or GPU.

    torchrun --nproc_per_node 2 --no-python prunekit run spec.yaml

Every rank runs the same program (the whole pipeline: training, pruning, evaluation); this
module is the little that differs between ranks. It is driven by the environment ``torchrun``
sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``):

- :func:`setup` initialises the default process group once: ``gloo`` when the device is the
  CPU, ``nccl`` for CUDA (after ``torch.cuda.set_device(LOCAL_RANK)``). It is a no-op when
  ``WORLD_SIZE`` is unset or 1, and when a group exists already (the user made one);
- :func:`rank`, :func:`world_size`, :func:`is_main`, :func:`barrier`, :func:`broadcast_`,
  :func:`all_reduce_mean`, :func:`all_reduce_sum`, :func:`broadcast_object` and
  :func:`average_gradients` are what ``fit``, ``prune``, the methods and the experiments
  runner call. With one process (no group initialised) every one is a no-op that returns its
  input, so the default path behaves exactly as before and never imports
  ``torch.distributed`` itself.

Who does what with N ranks (see :func:`prunekit.training.fit` for the training side):

- every rank computes (each batch is split between the ranks, or a ``FileLoader`` reads each
  rank's ``DistributedSampler`` share; ``fit`` trains through ``DistributedDataParallel``,
  and :func:`average_gradients` averages the parameters a method keeps outside the model);
- masks and thresholds are computed on every rank and then *broadcast from rank 0*, so they
  are identical even if floating-point differences ever crept in;
- only rank 0 writes files (checkpoints, model files, run folders, ``metrics.json``) and
  SQLite rows; the other ranks wait at a barrier and read what rank 0 wrote (resume reads
  rank 0's checkpoint on every rank). The ranks must therefore share a filesystem: one
  machine, or a shared mount across machines.

A rank that fails alone (an exception only it raises) leaves the others waiting in a
collective until the process group's timeout (30 min by default); torchrun then tears the
job down. Deterministic errors (a bad spec) are raised on every rank alike.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["setup", "requested", "active", "rank", "local_rank", "world_size", "is_main", "barrier",
           "broadcast_", "broadcast_object", "all_reduce_mean", "all_reduce_sum",
           "average_gradients", "threads_per_rank"]


def requested() -> bool:
    """True when the environment asks for more than one process (torchrun's ``WORLD_SIZE``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _dist():
    """``torch.distributed`` when a default process group exists, else None.

    Read from ``sys.modules`` so a single-process run never imports it on our account.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if requested() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def threads_per_rank(cores: Optional[int] = None) -> int:
    """Torch threads for this process: the cores divided by the processes on this machine
    (``LOCAL_WORLD_SIZE``), at least 1, so N ranks do not oversubscribe the cores."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) if requested() else 1
    return max(1, cores // max(1, local))


def setup(device: Any = None) -> bool:
    """Initialise the default process group from torchrun's environment, once.

    ``device``: where this process computes (a ``torch.device`` or string; default the CPU);
    CUDA selects ``nccl`` and pins the process to ``cuda:LOCAL_RANK``, anything else ``gloo``.
    Returns True when a group of more than one process is active afterwards. Does nothing
    (returns False) without torchrun's ``WORLD_SIZE`` > 1.
    """
    if _dist() is not None:
        return active()
    if not requested():
        return False

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 asks for several processes, but this torch build has no "
                           "torch.distributed support")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else local_rank() % torch.cuda.device_count()
        torch.cuda.set_device(index)
        backend = "nccl"
    else:
        backend = "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("torch.distributed has no gloo backend in this build; CPU data "
                           "parallelism needs it")
    dist.init_process_group(backend=backend)
    return active()


def _comm_device() -> torch.device:
    """Where scalars for a collective live: the current GPU under nccl, else the CPU."""
    dist = _dist()
    if dist is not None and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op in one process).

    Tensors of one dtype and device travel as one flat buffer (one message, not one per
    tensor); bool tensors travel as uint8 (not every backend broadcasts bool).
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    for group in _by_kind(list(tensors)):
        flat = torch.cat([_wire(t).reshape(-1) for t in group])
        dist.broadcast(flat, src=src)
        _unflatten_into(flat, group)


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable), returned on every rank; ``obj`` itself in one process."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_reduce_sum(values: Sequence[float]) -> List[float]:
    """Element-wise sum over ranks of a list of numbers (float64; the list itself in one process)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_reduce_mean(tensors: Iterable[torch.Tensor]) -> None:
    """Replace every floating tensor in ``tensors`` by its mean over ranks, in place.

    All ranks end with the same bits (the backends reduce once and share the result).
    Non-floating tensors are left alone. No-op in one process.
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    n = dist.get_world_size()
    floating = [t for t in tensors if t.is_floating_point()]
    for group in _by_kind(floating):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(n)
        _unflatten_into(flat, group)


def average_gradients(params: Sequence[torch.nn.Parameter], weight: float = 1.0) -> None:
    """Replace each parameter's ``.grad`` by ``sum over ranks of weight_r * grad_r``.

    ``weight`` is this rank's share of the batch (its samples / the batch's samples), so the
    result is the gradient of the whole batch's mean loss whatever the split; with equal
    shares it is the plain mean. A parameter without a gradient on some rank counts as zero
    there; one without a gradient on every rank keeps ``grad = None`` (so optimizers skip
    it as they would in one process). One flat buffer per dtype/device: one all-reduce per
    step for an ordinary model. ``params`` must be the same list, in the same order, on every
    rank. No-op in one process.
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    groups: dict = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group in groups.items():
        parts = []
        for p in group:
            g = p.grad
            parts.append(g.detach().reshape(-1) * weight if g is not None
                         else torch.zeros(p.numel(), device=device, dtype=dtype))
        # One trailing slot per parameter counts the ranks that had a gradient for it.
        flags = torch.tensor([float(p.grad is not None) for p in group], device=device, dtype=dtype)
        flat = torch.cat(parts + [flags])
        dist.all_reduce(flat)
        offset = 0
        for i, p in enumerate(group):
            n = p.numel()
            if float(flat[flat.numel() - len(group) + i]) > 0:
                reduced = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = reduced.clone()
                else:
                    p.grad.detach().copy_(reduced)
            offset += n


def _wire(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.uint8) if t.dtype == torch.bool else t.detach()


def _by_kind(tensors: List[torch.Tensor]) -> List[List[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        w = _wire(t)
        groups.setdefault((w.device, w.dtype), []).append(t)
    return list(groups.values())


def _unflatten_into(flat: torch.Tensor, group: List[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in group:
            n = t.numel()
            piece = flat[offset:offset + n].view(t.shape)
            t.copy_(piece.to(torch.bool) if t.dtype == torch.bool else piece)
            offset += n
