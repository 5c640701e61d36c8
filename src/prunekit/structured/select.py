"""From channel scores to ``channels_to_remove`` (what :func:`shrink` takes).

- ``per_layer(model, kept, score)``: each listed layer keeps its ``kept[name]`` highest-scored
  channels (L1-filter with per-layer ratios, the predefined A/B configurations, uniform).
- ``global_fraction(model, fraction, score)``: one threshold over the scores of all layers
  removes ``round(fraction * total)`` channels (network slimming's global |gamma| threshold,
  Liu et al. 2017 section 4.2); every layer keeps at least ``min_keep`` channels.
- ``uniform_ratios(model, ratio)``: the same ratio for every prunable layer.
- ``uniform_for_flops(model, x, flops_ratio)``: the uniform ratio whose shrunk model has
  FLOPs closest to ``flops_ratio`` of the original (either side: channel counts are integers),
  by bisection (the "uniform at the same
  budget" baseline of Liu et al. 2019 section 5); ``layers`` restricts it to some layers;
  ``multiple_of=16`` keeps every width a multiple of 16 (``round_kept``: kernel-friendly).
- ``flops_target_ratios(name, model, x)``: He et al.'s VGG-16-5x / ResNet-50-2x as per-layer
  ratios: the uniform ratio over the layers they prune that meets their FLOPs target
  (``configs.FLOPS_TARGETS``).

Ties are broken by the lower channel index being removed first (a stable sort).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..core.accounting import flops_per_module
from .. import params as valid
from .configs import flops_target_layers, kept_counts
from .scores import CHANNEL_SCORES
from .shrink import out_channels, prunable_layers, shrink


def _scores(model: nn.Module, name: str, score: str) -> torch.Tensor:
    return CHANNEL_SCORES.get(score)(model, name).float()


def per_layer(model: nn.Module, kept: Dict[str, int], score: str = "l1_filter") -> Dict[str, List[int]]:
    """Remove, in each layer, all but its ``kept[name]`` highest-scored output channels."""
    out: Dict[str, List[int]] = {}
    for name, k in kept.items():
        s = _scores(model, name, score)
        if not 1 <= k <= s.numel():
            raise ValueError(f"{name}: kept must be in [1, {s.numel()}], got {k}")
        order = torch.sort(s, stable=True).indices  # ascending: the lowest go first
        removed = sorted(order[: s.numel() - k].tolist())
        if removed:
            out[name] = removed
    return out


def uniform_ratios(model: nn.Module, ratio: float, layers: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """``{layer: ratio}`` for every prunable layer (or the given ones)."""
    return {name: ratio for name in (layers if layers is not None else prunable_layers(model))}


def by_ratios(model: nn.Module, ratios: Dict[str, float], score: str = "l1_filter") -> Dict[str, List[int]]:
    """Per-layer ratios (fraction of filters removed) -> channels_to_remove."""
    return per_layer(model, kept_counts(model, ratios), score)


def global_fraction(model: nn.Module, fraction: float, score: str = "bn_scale",
                    layers: Optional[Sequence[str]] = None, min_keep: int = 1) -> Dict[str, List[int]]:
    """Remove the ``round(fraction * total)`` lowest-scored channels over all ``layers``
    (default: the prunable layers the score applies to), keeping ``min_keep`` per layer."""
    valid.check(valid.fraction_removed, fraction, "fraction (of the channels)")
    if layers is None:
        layers = []
        for name in prunable_layers(model):
            try:
                _scores(model, name, score)
                layers.append(name)
            except ValueError:
                continue  # e.g. bn_scale on a layer without its own BN
    per = {name: _scores(model, name, score) for name in layers}
    out: Dict[str, List[int]] = {}
    for li, c in lowest_fraction(list(per.values()), fraction, min_keep):
        out.setdefault(layers[li], []).append(c)
    return {k: sorted(v) for k, v in out.items()}


def lowest_fraction(scores: Sequence[torch.Tensor], fraction: float, min_keep: int = 1) -> List[Tuple[int, int]]:
    """One global threshold over several score vectors: the ``(vector index, channel)`` pairs
    of the ``round(fraction * total)`` lowest scores, the ``min_keep`` highest of each vector
    protected (ties: the lower channel index is protected; the lower score, then position, goes first)."""
    entries = []  # (score, vector position, channel)
    for i, s in enumerate(scores):
        protected = set(torch.sort(s, descending=True, stable=True).indices[:min_keep].tolist())
        entries += [(float(v), i, c) for c, v in enumerate(s.tolist()) if c not in protected]
    total = sum(s.numel() for s in scores)
    entries.sort()
    return [(i, c) for _, i, c in entries[:min(int(round(fraction * total)), len(entries))]]


def round_kept(model: nn.Module, kept: Dict[str, int], multiple_of: int) -> Dict[str, int]:
    """Kernel-friendly widths: each ``kept[name]`` rounded to the nearest multiple of
    ``multiple_of`` (halves up), at least ``multiple_of`` and at most the layer's channels.

    Why: CPU convolution kernels work on a vector of channels at a time (16 fp32 lanes with
    AVX-512), so a width that is not a multiple of it wastes lanes; on the benchmark machine a
    3x3 convolution at 16x16 runs at ~95 GFLOP/s with 23 or 24 channels and ~145 with 32
    (benchmarks/results/thin.md, part c)."""
    valid.check(valid.int_at_least(1), multiple_of, "multiple_of")
    modules = dict(model.named_modules())
    out = {}
    for name, k in kept.items():
        c = out_channels(modules[name])
        out[name] = min(c, max(multiple_of, int(k / multiple_of + 0.5) * multiple_of))
    return out


def uniform_for_flops(model: nn.Module, example_input: torch.Tensor, flops_ratio: float,
                      score: str = "l1_filter", iters: int = 12,
                      layers: Optional[Sequence[str]] = None, multiple_of: int = 1) -> Dict[str, List[int]]:
    """channels_to_remove of the uniform ratio (over ``layers``, default every prunable layer)
    whose shrunk model keeps about ``flops_ratio`` of the FLOPs (bisection over the ratio;
    FLOPs fall monotonically as the ratio grows). ``multiple_of`` > 1 rounds every kept width
    to a multiple of it (``round_kept``: kernel-friendly widths), so the FLOPs move in coarser
    steps and the closest plan may be further from the budget."""
    return _bisect_uniform(model, example_input, flops_ratio, score, iters, layers, multiple_of)[1]


def _bisect_uniform(model: nn.Module, example_input: torch.Tensor, flops_ratio: float, score: str,
                    iters: int, layers: Optional[Sequence[str]],
                    multiple_of: int = 1) -> Tuple[float, Dict[str, List[int]]]:
    valid.check(valid.fraction_kept, flops_ratio, "flops_ratio")
    shape = tuple(example_input.shape[1:])
    base = flops_per_module(model, shape)[1]
    lo, hi = 0.0, 0.99
    best, best_ratio, best_gap = {}, 0.0, float("inf")
    for _ in range(iters):
        mid = (lo + hi) / 2
        kept = kept_counts(model, uniform_ratios(model, mid, layers))
        plan = per_layer(model, round_kept(model, kept, multiple_of) if multiple_of > 1 else kept, score)
        kept = flops_per_module(shrink(model, example_input, plan), shape)[1] / base
        # Channel counts move in integer steps, so keep the plan closest to the budget.
        if abs(kept - flops_ratio) < best_gap:
            best, best_ratio, best_gap = plan, mid, abs(kept - flops_ratio)
        if kept > flops_ratio:
            lo = mid
        else:
            hi = mid
    return best_ratio, best


def flops_target_ratios(name: str, model: nn.Module, example_input: torch.Tensor,
                        iters: int = 12) -> Dict[str, float]:
    """``{layer: ratio}`` of He et al.'s FLOPs target ``name`` (vgg16-5x, resnet50-2x; see
    ``configs``): one ratio over the layers they prune, found by bisection so that the shrunk
    model keeps the target's fraction of the FLOPs at ``example_input``'s size (224x224 for
    the papers' figures). Which channels go is then up to ``by_ratios``' score or ThiNet /
    LASSO selection (``prune_with_reconstruction``)."""
    flops_ratio, layers = flops_target_layers(name, model)
    ratio = _bisect_uniform(model, example_input, flops_ratio, "l1_filter", iters, layers)[0]
    return uniform_ratios(model, ratio, layers)
