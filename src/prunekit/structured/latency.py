"""Measured inference latency (on the model's device; CPU in every benchmark here): what a
physically smaller model buys.

``latency(model, input_shape, batch_size)`` runs ``warmup`` untimed forwards, then ``repeats``
timed ones under ``torch.inference_mode()`` in eval mode and returns the median seconds per
forward (the median resists the noise of a shared machine).

``compare(original, shrunk, input_shape)`` measures both models at batch 1 and 64 and gives the
speedup next to the FLOPs ratio, so the report shows how much of the FLOPs cut the wall clock
realises (``realised = speedup / flops_reduction``). What is timed is what one deploys: by default
(``prepare=True``) both models in their inference form (``inference.prepare_for_inference``:
BatchNorm folded into the convolutions, and each model in the memory format that runs it
faster at that batch size, measured), so neither side carries a cost the other is spared.
Both are timed in one interleaved run (``prunekit.timing``: the models take turns inside
every repeat) and the speedup is the median of the per-repeat ratios, so load on a shared
machine hits both alike.
"""
from __future__ import annotations

import functools
from typing import Dict, Sequence

import torch
from torch import nn

from ..timing import paired_ratio, time_callable, time_interleaved
from ..core.accounting import flops_per_module
from .inference import MEMORY_FORMATS, prepare_for_inference, to_memory_format

__all__ = ["latency", "compare"]


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
            batch_sizes: Sequence[int] = (1, 64), repeats: int = 10, *, prepare: bool = True) -> Dict[str, float]:
    """Latency of both models and speedups (original / shrunk latency); the FLOPs / parameter
    ``*_ratio`` kept (shrunk / original, the convention of every ``*_ratio``) and ``*_reduction``
    ("x fewer": original / shrunk).

    ``prepare`` (default): both models BN-folded, each in its faster memory format at each
    batch size (the four model x format variants are timed together, interleaved; each model
    keeps its faster format, and the speedup pairs those two). ``prepare=False`` times the
    models as given (eval mode, their own memory format). Keys: ``flops``, ``flops_shrunk``,
    ``flops_ratio``, ``flops_reduction``, ``params*``, and per batch ``b``: ``latency_b{b}``,
    ``latency_shrunk_b{b}`` (seconds), ``speedup_b{b}``, ``realised_b{b}`` (speedup / FLOPs
    reduction); ``timed`` says which forms were timed (and the memory formats chosen)."""
    f0, f1 = flops_per_module(original, input_shape)[1], flops_per_module(shrunk, input_shape)[1]
    p0 = sum(p.numel() for p in original.parameters())
    p1 = sum(p.numel() for p in shrunk.parameters())
    out: Dict[str, float] = {"flops": f0, "flops_shrunk": f1, "flops_ratio": f1 / f0, "flops_reduction": f0 / f1,
                             "params": p0, "params_shrunk": p1, "params_ratio": p1 / p0,
                             "params_reduction": p0 / p1}
    if not batch_sizes:
        return out
    was = original.training, shrunk.training
    if prepare:
        base = {"": prepare_for_inference(original, fold=True, memory_format="contiguous").module,
                "shrunk": prepare_for_inference(shrunk, fold=True, memory_format="contiguous").module}
        variants = {(side, fmt): to_memory_format(_copy(m), fmt) for side, m in base.items() for fmt in MEMORY_FORMATS}
    else:
        variants = {("", "as given"): original.eval(), ("shrunk", "as given"): shrunk.eval()}
    device = next((p.device for p in original.parameters()), torch.device("cpu"))
    timed = []
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, device=device)
        with torch.inference_mode():
            times = time_interleaved({key: functools.partial(m, x) for key, m in variants.items()},
                                     repeats=repeats, warmup=2)
        best = {side: min((k for k in times if k[0] == side), key=lambda k: times[k].median) for side in ("", "shrunk")}
        t0, t1 = times[best[""]], times[best["shrunk"]]
        out[f"latency_b{b}"], out[f"latency_shrunk_b{b}"] = t0.median, t1.median
        out[f"speedup_b{b}"] = paired_ratio(t0, t1)
        out[f"realised_b{b}"] = out[f"speedup_b{b}"] / out["flops_reduction"]
        timed.append(f"b{b}: {best[''][1]} / {best['shrunk'][1]}")
    original.train(was[0])
    shrunk.train(was[1])
    out["timed"] = ("BN folded, faster memory format per model (original / shrunk) " if prepare
                    else "as given (eval mode) ") + "; ".join(timed)
    return out


def _copy(model: nn.Module) -> nn.Module:
    return prepare_for_inference(model, fold=False, memory_format="contiguous").module
