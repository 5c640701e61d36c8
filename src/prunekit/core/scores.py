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
from . import arrays
from .sparsegpt import sparsegpt_score
from .thresholds import SortedTop, kth_largest, sorted_top
from .wanda import wanda

Score = Callable[..., torch.Tensor]
SCORES: Registry[Score] = Registry("score")


@SCORES.register("magnitude")
def magnitude(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """|w| (Han et al. 2015; global magnitude pruning of seed 004)."""
    return arrays.absolute(weight)


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
    """Eq. 2 on ascending float64 squares: w_u^2 / sum_{v >= u} w_v^2, the sums accumulated
    from the largest down (a zero sum has zero squares under it, and scores 0)."""
    tiny = torch.finfo(torch.float64).tiny
    a = arrays.view(sorted_w2)
    if a is not None:
        # numpy: reversed views are free (torch.flip copies), the same sequential float64 sums
        suffix = np.cumsum(a[::-1])[::-1]
        return torch.from_numpy(a / np.maximum(suffix, tiny))
    suffix = sorted_w2.flip(0).cumsum(0).flip(0)
    return sorted_w2 / suffix.clamp_min(tiny)


class LampTop(SortedTop):
    """The LAMP scores of one tensor read from the top down (a :class:`SortedTop` source), for
    a global selection that needs only the scores near its threshold.

    ``keys``: the tensor's ranking keys, flat (:func:`ranking_keys`, already-pruned weights at
    -inf). LAMP is a non-decreasing function of |w| inside a tensor, so a global selection
    needs each tensor's multiset of scores (how many it keeps) and then keeps its top
    magnitudes; and the score of the weight at sorted position u, ``w_u^2 / sum_{v >= u}
    w_v^2``, needs only the weights above u. So ``top(c)`` takes (at least) the c largest
    keys (:func:`~prunekit.core.thresholds.sorted_top`), sorts just those and sums downwards
    from the largest: the same float64 sums, in the same order, as over the fully sorted
    tensor. At 90% sparsity the global selection reads a fifth of the weights (twice each
    tensor's share), not all of them.
    """

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.reshape(-1)
        self.numel = self.keys.numel()
        self._top_keys = self.keys[:0]

    def top(self, c: int) -> torch.Tensor:
        if c > self._top_keys.numel():
            self._top_keys = sorted_top(self.keys, c)     # kept for kth_key
        keys = self._top_keys
        w2 = arrays.as_float64(keys)
        # already-pruned weights (w = 0, key -inf) sort first; they score -inf, so they stay pruned
        pruned = int(torch.count_nonzero(keys == float("-inf"))) if keys.numel() and keys[0] == float("-inf") else 0
        w2[:pruned] = 0.0
        scores = _lamp_of_sorted(w2)
        scores[:pruned] = float("-inf")
        return scores

    def kth_key(self, k: int) -> Optional[float]:
        """The k-th largest key: the threshold that keeps the top ``k`` magnitudes (None when
        ``k`` keeps all or nothing)."""
        if not 0 < k < self.numel:
            return None
        if k <= self._top_keys.numel():
            return float(self._top_keys[self._top_keys.numel() - k])
        return float(kth_largest(self.keys, k))


def ranking_keys(weight: torch.Tensor) -> torch.Tensor:
    """w^2 in float32: the order LAMP induces inside a layer (ties aside)."""
    return arrays.square32(weight)


# prune() uses this to skip per-weight scores: within a layer LAMP ranks like magnitude.
lamp.top_scores = LampTop


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
