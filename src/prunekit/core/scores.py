"""Importance scores: one value per weight, higher = more important.

Every score has the signature ``score(weight, generator=None) -> Tensor`` (same shape as
``weight``, float32/64, no NaN). Already-pruned weights are exact zeros, so magnitude and LAMP
give them the lowest score; ``prune()`` additionally forces them to stay pruned.

Scores that also look at data (``CALIBRATED_SCORES``: wanda, sparsegpt) take a third argument,
``stats=``, the layer's :class:`~prunekit.core.calibration.LayerStats`, and are used as
``prune(model, s, score=name, calibration=loader)``. They are a registry of their own because
they cannot run without data (the training pipelines offer the data-free ``SCORES``);
:func:`get` and :func:`names` see both.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ..registry import Registry, UnknownNameError
from .sparsegpt import sparsegpt_score
from .wanda import wanda

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
    scores 1, so a global threshold on LAMP scores never empties a layer. Among equal
    magnitudes the lower index sorts later (scores higher), so keeping the top LAMP scores of
    a layer keeps exactly what keeping its top magnitudes would (ties to the lower index).
    Sums run in float64 so that tiny weights of large layers do not underflow.
    """
    w2 = weight.detach().reshape(-1).to(torch.float64).square()
    n = w2.numel()
    # stable sort of the reversed vector: equal values end up in descending index order
    sorted_w2, order = torch.sort(w2.flip(0), stable=True)
    order = (n - 1) - order
    scores = torch.empty_like(sorted_w2)
    scores[order] = _lamp_of_sorted(sorted_w2)
    return scores.reshape(weight.shape)


def _lamp_of_sorted(sorted_w2: torch.Tensor) -> torch.Tensor:
    suffix = sorted_w2.flip(0).cumsum(0).flip(0)
    return torch.where(suffix > 0, sorted_w2 / suffix.clamp_min(torch.finfo(suffix.dtype).tiny),
                       torch.zeros_like(suffix))


def lamp_sorted(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scores, keys)``: the LAMP scores of ``weight`` in ascending order, without the
    permutation, and the ranking keys (w^2 as float32) in the same order.

    LAMP is a non-decreasing function of |w| inside a layer, so a global selection only needs
    each layer's multiset of scores (how many are kept) and then keeps the top magnitudes.
    Sorting values alone (numpy's sort on CPU) is several times faster than an argsort, which
    matters at 25M weights. ``keys`` lets the caller find the magnitude threshold of any
    count without a second selection.
    """
    w2 = ranking_keys(weight).reshape(-1)
    if w2.device.type == "cpu":
        sorted_w2 = torch.from_numpy(np.sort(w2.numpy(), kind="quicksort"))
    else:
        sorted_w2 = torch.sort(w2).values
    return _lamp_of_sorted(sorted_w2.to(torch.float64)), sorted_w2


def ranking_keys(weight: torch.Tensor) -> torch.Tensor:
    """w^2 in float32: the order LAMP induces inside a layer (ties aside)."""
    return weight.detach().to(torch.float32).square()


# prune() uses this to skip per-weight scores: within a layer LAMP ranks like magnitude.
lamp.sorted_scores = lamp_sorted


@SCORES.register("random")
def random(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """I.i.d. uniform scores: the random-pruning baseline (same allocation, random choice)."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)


# Scores from calibration data (prune(..., calibration=loader)); each lives in its own module.
CALIBRATED_SCORES: Registry[Score] = Registry("calibrated score")
CALIBRATED_SCORES.register("wanda")(wanda)
CALIBRATED_SCORES.register("sparsegpt")(sparsegpt_score)


def get(name: str) -> Score:
    """A data-free or calibrated score by name; an unknown name lists both kinds."""
    if isinstance(name, str) and name in CALIBRATED_SCORES:
        return CALIBRATED_SCORES.get(name)
    if not isinstance(name, str) or name not in SCORES:
        raise UnknownNameError(f"unknown score {name!r}; choose one of: {', '.join(SCORES.names())} "
                               f"or, with calibration=<loader>, {', '.join(CALIBRATED_SCORES.names())}")
    return SCORES.get(name)


def names():
    """Every score name, data-free and calibrated."""
    return SCORES.names() + CALIBRATED_SCORES.names()
