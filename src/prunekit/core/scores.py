"""Importance scores: one value per weight, higher = more important.

Every score has the signature ``score(weight, generator=None) -> Tensor`` (same shape as
``weight``, float32/64, no NaN). Already-pruned weights are exact zeros, so magnitude and LAMP
give them the lowest score; ``prune()`` additionally forces them to stay pruned.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..registry import Registry

Score = Callable[..., torch.Tensor]
SCORES: Registry[Score] = Registry("score")


@SCORES.register("magnitude")
def magnitude(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """|w| (Han et al. 2015; global magnitude pruning of seed 004)."""
    return weight.detach().abs()


@SCORES.register("lamp")
def lamp(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """LAMP score (Lee et al. 2021, seed 003, Eq. 2).

    Sort the layer's weights ascending by |w|; the weight at sorted position u scores
    ``w_u^2 / sum_{v >= u} w_v^2`` (the denominator includes u itself). The largest weight
    scores 1, so a global threshold on LAMP scores never empties a layer. Computed in float64
    so that tiny weights of large layers do not underflow the suffix sums.
    """
    w2 = weight.detach().reshape(-1).to(torch.float64).square()
    # stable sort: equal magnitudes keep index order, so the score is deterministic
    sorted_w2, order = torch.sort(w2, stable=True)
    suffix = sorted_w2.flip(0).cumsum(0).flip(0)
    sorted_scores = torch.where(suffix > 0, sorted_w2 / suffix.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(suffix))
    scores = torch.empty_like(sorted_scores)
    scores[order] = sorted_scores
    return scores.reshape(weight.shape)


@SCORES.register("random")
def random(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """I.i.d. uniform scores: the random-pruning baseline (same allocation, random choice)."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)


def get(name: str) -> Score:
    return SCORES.get(name)


def names():
    return SCORES.names()
