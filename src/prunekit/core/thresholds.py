"""Exact top-k selection with deterministic tie-breaking.

``torch.topk`` does not promise an order among equal values and ``torch.quantile`` refuses
inputs above 16M elements, so selection here goes through a linear-time selection (the k-th
largest value) plus an explicit rule for ties: among equal scores, the lower flat index wins
(layer order first for global selection). That rule makes masks reproducible bit for bit.

Speed (25M weights, 2 cores): on the CPU the selection runs on numpy views of the tensors
(:mod:`prunekit.core.arrays` says why), whose ``partition`` / ``sort`` are vectorised and
several times faster than ``torch.kthvalue`` / ``torch.sort``. A selection over many tensors
never concatenates them: a strided sample narrows the threshold to a thin band of values,
one pass per tensor counts the scores above the band and copies the few inside it, and the
exact threshold is selected in the band (:func:`global_selection`). Scores known only from
the top down (LAMP, whose score of a weight needs the weights above it) come as
:class:`SortedTop` sources.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .arrays import view

# Sample size that narrows a global threshold, and the band's half-width in binomial standard
# deviations of the sampled rank: wide enough that a band missing the threshold (then the
# selection falls back to all the scores, still exact) needs an adversarially ordered input.
SAMPLE = 1 << 16
BAND_SIGMAS = 6.0
# A SortedTop source is first read down to twice its share of the kept count (or this many).
MIN_TOP = 1 << 12


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor (k >= 1), in O(n), as a 0-dim tensor."""
    n = values.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    a = view(values)
    if a is None:
        return torch.kthvalue(values.reshape(-1), n - k + 1).values
    return torch.from_numpy(np.partition(a, n - k)[n - k:n - k + 1].copy()).reshape(())


def sorted_top(values: torch.Tensor, c: int) -> torch.Tensor:
    """The highest entries of ``values``, at least ``c`` of them (all, when ``c`` >= its size),
    ascending, 1-D; every entry left out is at most the lowest one returned.

    On the CPU they are the entries at or above a cutoff read off a strided sample a little
    below the c-th largest (one comparison pass, no copy of the whole tensor), or, if that
    cutoff proves too high, exactly the c largest (a partition).
    """
    flat = values.reshape(-1)
    n = flat.numel()
    a = view(flat)
    if a is None:
        return torch.topk(flat, min(max(c, 0), n), sorted=True).values.flip(0)
    if c >= n:
        return torch.from_numpy(np.sort(a))
    if c <= 0:
        return torch.from_numpy(a[:0].copy())
    top = None
    if n > 4 * SAMPLE:
        sample = np.sort(a[::n // SAMPLE])
        m, q = sample.size, c / n
        cut = math.floor(m - q * m - BAND_SIGMAS * math.sqrt(m * q * (1 - q)) - 2)
        if cut > 0:
            top = np.compress(a >= sample[cut], a)   # compress: faster than a[mask] here
            if top.size < c:
                top = None
    if top is None:
        top = np.partition(a, n - c)[n - c:]
    top.sort()
    return torch.from_numpy(top)


class SortedTop:
    """The scores of one tensor read from the top down: ``numel`` and ``top(c)``, its highest
    scores, at least ``c`` of them (a multiset), in ascending order; every other score of the
    tensor is at most ``top(c)[0]``. A score that is cheap only near the top (LAMP)
    implements this; a plain score tensor is wrapped in :class:`TensorTop`."""

    numel: int

    def top(self, c: int) -> torch.Tensor:
        raise NotImplementedError


class TensorTop(SortedTop):
    """A score tensor as a :class:`SortedTop` source."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores
        self.numel = scores.numel()

    def top(self, c: int) -> torch.Tensor:
        return sorted_top(self.scores, c)


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
    keep = _mask_at(flat, k, threshold) if threshold is not None else None
    if keep is None:
        keep = _mask_at(flat, k, float(kth_largest(flat, k)))
    return keep.reshape(scores.shape)


def _mask_at(flat: torch.Tensor, k: int, t: float) -> Optional[torch.Tensor]:
    """The ``k`` highest of ``flat`` given its k-th largest value ``t``: every score >= t, less
    the ties at t of the highest indices (usually t is unique and none is dropped); None when
    ``t`` is not the k-th largest. One comparison pass in the common case."""
    a = view(flat)
    if a is not None:
        t = a.dtype.type(t)
        keep = a >= t
        extra = int(np.count_nonzero(keep)) - k
        if extra > 0:
            tied = np.flatnonzero(a == t)
            if extra > tied.size:
                return None
            keep[tied[tied.size - extra:]] = False
        return torch.from_numpy(keep) if extra >= 0 else None
    t = torch.tensor(t, dtype=flat.dtype, device=flat.device)
    keep = flat >= t
    extra = int(torch.count_nonzero(keep)) - k
    if extra > 0:
        tied = torch.nonzero(flat == t).reshape(-1)
        if extra > tied.numel():
            return None
        keep[tied[tied.numel() - extra:]] = False
    return keep if extra >= 0 else None


def global_counts(scores: Sequence[Union[torch.Tensor, SortedTop]], k: int) -> List[int]:
    return global_selection(scores, k)[0]


def global_selection(scores: Sequence[Union[torch.Tensor, SortedTop]], k: int) -> Tuple[List[int], Optional[float]]:
    """Per-tensor counts of the ``k`` highest scores taken over all tensors together.

    Returns ``(counts, threshold)``: ``threshold`` is the k-th largest score t; each tensor
    keeps its scores above t, and the ties at t go to earlier tensors, then to lower flat
    indices, consistent with ``topk_mask`` applied to each tensor with its count.

    Every tensor is reduced to a *part* that holds all its scores equal to t, plus the count
    of its scores above the part, and the counts are read off the parts:

    - score tensors on the CPU: a strided sample of ~65k scores brackets t in a band
      [lo, hi] of sampled ranks; one pass per tensor counts its scores above hi and copies
      those in [lo, hi]; t is the (k - #above)-th largest of the band. If the band misses t
      (a sample unlike the whole), or elsewhere than on the CPU, the parts are the tensors;
    - :class:`SortedTop` sources (any entry not a tensor): each is read down to ``c`` scores,
      twice its share of k at first; t is the k-th largest of these tops, exact once every
      source not read whole has its lowest top score below t (its other scores are lower
      still); a source that does not is read 4x deeper.
    """
    sizes = [s.numel() if isinstance(s, torch.Tensor) else s.numel for s in scores]
    total = sum(sizes)
    if k >= total:
        return sizes, None
    if k <= 0:
        return [0] * len(sizes), None
    if all(isinstance(s, torch.Tensor) for s in scores):
        flats = [s.reshape(-1) if s.dtype in (torch.float32, torch.float64) else s.reshape(-1).float()
                 for s in scores]
        t, above, parts = _band_selection(flats, k) or _whole_selection(flats, k)
    else:
        sources = [s if isinstance(s, SortedTop) else TensorTop(s) for s in scores]
        t, above, parts = _top_selection(sources, sizes, k)
    counts = [a + _count(p, t, above=True) for a, p in zip(above, parts)]
    missing = k - sum(counts)
    for i, p in enumerate(parts):
        if missing <= 0:
            break
        take = min(_count(p, t, above=False), missing)
        counts[i] += take
        missing -= take
    return counts, float(t)


def _count(part: torch.Tensor, t: torch.Tensor, above: bool) -> int:
    """How many entries of ``part`` are above (else equal to) ``t``, compared in ``t``'s dtype."""
    a = view(part)
    if a is not None:   # numpy: no thread-pool round trip for a small part
        tv = np.asarray(t.item(), dtype=np.float64 if t.dtype == torch.float64 else np.float32)
        a = a.astype(tv.dtype, copy=False)
        return int(np.count_nonzero(a > tv if above else a == tv))
    part = part.to(t.dtype)
    return int(torch.count_nonzero(part > t if above else part == t))


Selection = Tuple[torch.Tensor, List[int], List[torch.Tensor]]


def _common_dtype(parts: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32


def _cat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parts as one flat tensor of their common dtype (numpy's concatenate on the CPU)."""
    dtype = _common_dtype(parts)
    arrays = [view(p) for p in parts]
    if all(a is not None for a in arrays):
        return torch.from_numpy(np.concatenate(arrays, dtype=np.float64 if dtype == torch.float64 else np.float32))
    return torch.cat([p.reshape(-1).to(dtype) for p in parts])


def _whole_selection(flats: Sequence[torch.Tensor], k: int) -> Selection:
    """The k-th largest of all scores, concatenated (the fallback; 100 MB at 25M weights)."""
    return kth_largest(_cat(flats), k), [0] * len(flats), list(flats)


def _band_selection(flats: Sequence[torch.Tensor], k: int, ascending: bool = False) -> Optional[Selection]:
    """t from a band of values around it (see :func:`global_selection`); None when the band
    misses t or the scores are not on the CPU. ``ascending``: every tensor is sorted, so its
    count above the band and its part in the band are read by binary search (no pass)."""
    arrays = [view(f) for f in flats]
    if any(a is None for a in arrays):
        return None
    total = sum(a.size for a in arrays)
    stride = max(1, total // SAMPLE)
    sample = np.sort(np.concatenate([a[::stride] for a in arrays]))
    m = sample.size
    q = k / total                          # t's rank from the top, as a fraction
    pos = m - q * m                        # ... and its expected ascending position in the sample
    margin = BAND_SIGMAS * math.sqrt(m * q * (1 - q)) + 2
    i_lo, i_hi = math.floor(pos - margin), math.ceil(pos + margin)
    lo = sample[i_lo] if i_lo >= 0 else None
    hi = sample[i_hi] if i_hi < m else None
    above, parts = [], []
    for a in arrays:
        if ascending:
            start = int(np.searchsorted(a, lo, side="left")) if lo is not None else 0
            end = int(np.searchsorted(a, hi, side="right")) if hi is not None else a.size
            above.append(a.size - end)
            inside = a[start:end]
        else:
            above.append(int(np.count_nonzero(a > hi)) if hi is not None else 0)
            if lo is None and hi is None:
                inside = a
            else:
                keep = a >= lo if lo is not None else a <= hi
                if lo is not None and hi is not None:
                    keep &= a <= hi
                inside = np.compress(keep, a)
        parts.append(torch.from_numpy(inside))
    n_above, n_band = sum(above), sum(p.numel() for p in parts)
    if not n_above < k <= n_above + n_band:
        return None
    t = kth_largest(_cat(parts), k - n_above)
    return t, above, parts


def _top_selection(sources: Sequence[SortedTop], sizes: Sequence[int], k: int) -> Selection:
    """t from the tops of :class:`SortedTop` sources (see :func:`global_selection`)."""
    total = sum(sizes)
    depth = [min(n, max(MIN_TOP, math.ceil(2 * k * n / total))) for n in sizes]
    tops: List[Optional[torch.Tensor]] = [None] * len(sources)
    stale = set(range(len(sources)))
    while True:
        for i in stale:
            tops[i] = sources[i].top(depth[i])
        # sum(depth) >= k; the tops are sorted, so the band is found by binary search
        t, above, parts = _band_selection(tops, k, ascending=True) or _whole_selection(tops, k)
        stale = {i for i, (p, n) in enumerate(zip(tops, sizes)) if p.numel() < n and p[0] >= t}
        if not stale:
            return t, above, parts
        for i in stale:
            depth[i] = min(sizes[i], 4 * max(depth[i], tops[i].numel()))


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
