"""Measured inference latency (on the model's device; CPU in every benchmark here): what a
physically smaller model buys.

``latency(model, input_shape, batch_size)`` runs ``warmup`` untimed forwards, then ``repeats``
timed ones under ``torch.inference_mode()`` in eval mode and returns the median seconds per
forward (the median resists the noise of a shared machine). ``compare`` measures the
original and the shrunk model at batch 1 and 64 and gives the speedup next to the FLOPs
ratio, so the report shows how much of the FLOPs cut the wall clock realises.
"""
from __future__ import annotations

import functools
from typing import Dict, Sequence

import torch
from torch import nn

from ..timing import time_callable
from ..core.accounting import flops_per_module


def latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 10,
            warmup: int = 2) -> float:
    """Median seconds of one forward pass on a ``(batch_size, *input_shape)`` random batch."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch_size, *input_shape, device=device)
    # time_callable's clock waits for queued GPU kernels, so asynchronous devices time right.
    with torch.inference_mode():
        timing = time_callable(functools.partial(model, x), repeats=repeats, warmup=warmup)
    model.train(was_training)
    return timing.median


def compare(original: nn.Module, shrunk: nn.Module, input_shape: Sequence[int],
            batch_sizes: Sequence[int] = (1, 64), repeats: int = 10) -> Dict[str, float]:
    """Latency of both models and speedups (original / shrunk latency); the FLOPs / parameter
    ``*_ratio`` kept (shrunk / original, the convention of every ``*_ratio``) and ``*_reduction``
    ("x fewer": original / shrunk)."""
    f0, f1 = flops_per_module(original, input_shape)[1], flops_per_module(shrunk, input_shape)[1]
    p0 = sum(p.numel() for p in original.parameters())
    p1 = sum(p.numel() for p in shrunk.parameters())
    out: Dict[str, float] = {"flops": f0, "flops_shrunk": f1, "flops_ratio": f1 / f0, "flops_reduction": f0 / f1,
                             "params": p0, "params_shrunk": p1, "params_ratio": p1 / p0,
                             "params_reduction": p0 / p1}
    for b in batch_sizes:
        t0 = latency(original, input_shape, b, repeats)
        t1 = latency(shrunk, input_shape, b, repeats)
        out[f"latency_b{b}"], out[f"latency_shrunk_b{b}"], out[f"speedup_b{b}"] = t0, t1, t0 / t1
    return out
