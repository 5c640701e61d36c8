"""Exact top-k selection with deterministic tie-breaking.

``torch.topk`` does not promise an order among equal values and ``torch.quantile`` refuses
inputs above 16M elements, so selection here goes through ``kthvalue`` (a linear-time
selection) plus an explicit rule for ties: among equal scores, the lower flat index wins
(layer order first for global selection). That rule makes masks reproducible bit for bit.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor (k >= 1), in O(n)."""
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return torch.kthvalue(values, n - k + 1).values


def topk_mask(scores: torch.Tensor, k: int, threshold: Optional[float] = None) -> torch.Tensor:
    """Boolean mask keeping exactly the ``k`` highest scores; ties go to the lower flat index.

    ``threshold``: a value believed to be the k-th largest score (e.g. the one a global
    selection just found). It is used when it is consistent with ``k`` (#above <= k <=
    #at-or-above), which saves a second selection pass; otherwise it is ignored.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    keep = None
    if threshold is not None:
        t = torch.tensor(threshold, dtype=flat.dtype, device=flat.device)
        keep = flat > t
        above = int(torch.count_nonzero(keep))
        if not above <= k <= above + int(torch.count_nonzero(flat == t)):
            keep = None
    if keep is None:
        t = kth_largest(flat, k)
        keep = flat > t
    missing = k - int(torch.count_nonzero(keep))
    if missing > 0:
        tied = torch.nonzero(flat == t).reshape(-1)[:missing]
        keep[tied] = True
    return keep.reshape(scores.shape)


def global_counts(scores: Sequence[torch.Tensor], k: int) -> List[int]:
    return global_selection(scores, k)[0]


def global_selection(scores: Sequence[torch.Tensor], k: int) -> Tuple[List[int], Optional[float]]:
    """Per-tensor counts of the ``k`` highest scores taken over all tensors together.

    Returns ``(counts, threshold)``. Ties at the threshold go to earlier tensors, then to
    lower flat indices, consistent with ``topk_mask`` applied to each tensor with its count.
    Scores are concatenated once; for 25M weights that is a 100 MB buffer and a single
    ``kthvalue``.
    """
    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    if k >= total:
        return sizes, None
    if k <= 0:
        return [0] * len(sizes), None
    flat = torch.cat([s.reshape(-1).to(torch.float64 if s.dtype == torch.float64 else torch.float32) for s in scores])
    t = kth_largest(flat, k)
    counts = [int(torch.count_nonzero(s.reshape(-1) > t)) for s in scores]
    missing = k - sum(counts)
    for i, s in enumerate(scores):
        if missing <= 0:
            break
        ties = int(torch.count_nonzero(s.reshape(-1) == t))
        take = min(ties, missing)
        counts[i] += take
        missing -= take
    return counts, float(t)


def largest_remainder(real_counts: Sequence[float], total: int, caps: Sequence[int]) -> List[int]:
    """Round real counts to integers summing to ``total`` (Hamilton's largest-remainder rule).

    Each result stays within ``[0, cap]``. Ties among remainders go to the earlier layer, so the
    rounding is deterministic.
    """
    if total > sum(caps):
        raise ValueError(f"cannot keep {total} weights in tensors holding {sum(caps)}")
    floors = [min(int(c), cap) for c, cap in zip(real_counts, caps)]
    left = total - sum(floors)
    order = sorted(range(len(floors)), key=lambda i: (-(real_counts[i] - int(real_counts[i])), i))
    while left > 0:
        progressed = False
        for i in order:
            if left == 0:
                break
            if floors[i] < caps[i]:
                floors[i] += 1
                left -= 1
                progressed = True
        if not progressed:  # pragma: no cover - guarded by the total <= sum(caps) check
            break
    while left < 0:  # only when floors overshoot because of caps (cannot happen) or rounding
        for i in reversed(order):
            if left == 0:
                break
            if floors[i] > 0:
                floors[i] -= 1
                left += 1
    return floors
