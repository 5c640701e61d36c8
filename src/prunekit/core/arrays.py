"""The passes of one-shot pruning over every weight, on numpy views of CPU tensors.

Why numpy: on a CPU shared with other work (this project's 2-core machines at a load of 5-10),
every torch operation that splits across threads waits for its second thread to be
scheduled, ~20 ms each time; numpy's single-threaded vectorised loops do not wait, and its
``partition`` / ``sort`` are SIMD (AVX2 / AVX-512) where ``torch.kthvalue`` / ``torch.sort``
are not. Measured at 2 threads on 5M float32 weights under load ~7: |w| 18 ms (torch 42),
sum 3 ms (torch 20), zeroing the pruned weights 4-14 ms (torch 61-69); see
benchmarks/bench_prune_speed.py for the whole prune.

Each function takes and returns torch tensors and falls back to torch off the CPU or for
dtypes numpy lacks (float16 and bfloat16 scores go through torch).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

_NUMPY_FLOATS = (torch.float32, torch.float64)


def view(t: torch.Tensor, writable: bool = False) -> Optional[np.ndarray]:
    """A flat numpy array over ``t``'s values (CPU float32/float64), or None. ``writable``:
    only a view that shares ``t``'s memory (a contiguous tensor), for in-place writes."""
    if t.device.type != "cpu" or t.dtype not in _NUMPY_FLOATS or (writable and not t.is_contiguous()):
        return None
    return t.detach().reshape(-1).numpy()


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN or infinity. One sum decides (a NaN or an infinity makes it
    non-finite; it allocates nothing, unlike ``isfinite(t).all()``), and only a non-finite sum,
    which finite values that overflow also give, is checked element by element."""
    a = view(t)
    if a is not None:
        with np.errstate(over="ignore", invalid="ignore"):   # inf - inf, or an overflow: checked below
            total = a.sum()
        return bool(np.isfinite(total)) or bool(np.isfinite(a).all())
    t = t.detach()
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def absolute(t: torch.Tensor) -> torch.Tensor:
    """|t|, a new tensor of ``t``'s shape and dtype."""
    a = view(t)
    if a is not None:
        return torch.from_numpy(np.abs(a)).reshape(t.shape)
    return t.detach().abs()


def square32(t: torch.Tensor) -> torch.Tensor:
    """t^2 in float32 (t cast first), a new tensor of ``t``'s shape."""
    a = view(t)
    if a is not None:
        return torch.from_numpy(np.square(a.astype(np.float32, copy=False))).reshape(t.shape)
    return t.detach().to(torch.float32).square()


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` converted to float64 (a new tensor)."""
    a = view(t)
    if a is not None:
        return torch.from_numpy(a.astype(np.float64)).reshape(t.shape)
    return t.detach().to(torch.float64, copy=True)


@torch.no_grad()
def keep_only_(param: torch.Tensor, keep: torch.Tensor) -> None:
    """``param *= keep`` in place (``keep`` bool, same shape): the pruned weights become 0
    (NaN * 0 stays NaN, as with ``mul_``). Autograd sees the write (version counter bumped)."""
    a = view(param, writable=True)
    if a is None or keep.device.type != "cpu":
        param.mul_(keep.to(param.dtype))
        return
    np.multiply(a, keep.reshape(-1).numpy(), out=a)
    torch.autograd.graph.increment_version(param)
