"""Layer-wise allocations: how many weights each prunable tensor keeps.

Every allocation has the signature ``allocate(tensors, density) -> list[int]``: ``tensors`` is
a sequence of :class:`PrunableTensor` (name, shape, scores) in model order and ``density`` the
global fraction kept. The counts are exact integers summing to ``round(density * N)`` for the
N prunable weights (SPEC.md section 1); rounding uses largest remainders and ties are broken
deterministically (earlier layer, then lower index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ..registry import Registry
from .thresholds import SortedTop, global_selection, largest_remainder

Allocation = Callable[[Sequence["PrunableTensor"], float], List[int]]
ALLOCATIONS: Registry[Allocation] = Registry("allocation")


@dataclass
class PrunableTensor:
    """A prunable tensor as the allocations see it: its name, logical shape (out, in, ...;
    HF Conv1D's stored (in, out) is reversed) and its scores ``source``: a tensor of
    per-weight scores (in the stored shape), or a :class:`~prunekit.core.thresholds.SortedTop`
    that yields them from the top down (LAMP), which only the global allocation reads as such."""

    name: str
    shape: Tuple[int, ...]
    source: Union[torch.Tensor, SortedTop]
    # Set by the global allocation: the score threshold it found, so that the selection
    # inside each tensor need not search for it again (a 25M-weight model saves ~0.4 s).
    threshold: Optional[float] = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def scores(self) -> torch.Tensor:
        """The scores as one tensor (a :class:`SortedTop` source gives all of them, ascending)."""
        s = self.source
        return s if isinstance(s, torch.Tensor) else s.top(s.numel)


def kept_total(tensors: Sequence[PrunableTensor], density: float) -> int:
    """round(density * N): the exact number of weights kept over all prunable tensors."""
    return int(round(density * sum(t.numel for t in tensors)))


@ALLOCATIONS.register("global")
def global_(tensors: Sequence[PrunableTensor], density: float) -> List[int]:
    """One threshold over the scores of all tensors (global magnitude; LAMP with lamp scores)."""
    counts, threshold = global_selection([t.source for t in tensors], kept_total(tensors, density))
    for t in tensors:
        t.threshold = threshold
    return counts


@ALLOCATIONS.register("uniform")
def uniform(tensors: Sequence[PrunableTensor], density: float) -> List[int]:
    """Every tensor keeps the same fraction ``density`` (up to one weight of rounding)."""
    sizes = [t.numel for t in tensors]
    return largest_remainder([density * n for n in sizes], kept_total(tensors, density), sizes)


@ALLOCATIONS.register("uniform_plus")
def uniform_plus(tensors: Sequence[PrunableTensor], density: float) -> List[int]:
    """Uniform+ (Gale et al. 2019): the first conv stays dense, the last linear keeps at least
    20%, and the remaining budget is spread uniformly over the other tensors.

    Raises ``ValueError`` when the budget cannot cover the dense first conv and 20% of the
    last linear.
    """
    sizes = [t.numel for t in tensors]
    total = kept_total(tensors, density)
    first = next((i for i, t in enumerate(tensors) if len(t.shape) > 2), None)
    last = next((i for i in reversed(range(len(tensors))) if len(tensors[i].shape) == 2), None)
    if last == first:
        last = None
    fixed = sizes[first] if first is not None else 0
    rest = [i for i in range(len(tensors)) if i not in (first, last)]
    rest_size = sum(sizes[i] for i in rest)
    # First try: the last linear shares the uniform density of the rest.
    shared = rest_size + (sizes[last] if last is not None else 0)
    d_rest = (total - fixed) / shared if shared else 0.0
    last_density = d_rest
    if last is not None and d_rest < 0.2:
        last_density = 0.2
        d_rest = (total - fixed - 0.2 * sizes[last]) / rest_size if rest_size else 0.0
    if d_rest < 0 or d_rest > 1 or (not rest and last is None and total != fixed):
        need = fixed + (0.2 * sizes[last] if last is not None else 0)
        raise ValueError(
            f"uniform_plus cannot reach density {density:.4f}: the dense first conv and 20% of the "
            f"last linear alone keep {need:.0f} of {sum(sizes)} weights ({need / sum(sizes):.2%}); "
            "use a lower sparsity or another allocation (global, uniform, erk)"
        )
    real = [d_rest * n for n in sizes]
    if first is not None:
        real[first] = float(sizes[first])
    if last is not None:
        real[last] = last_density * sizes[last]
    return largest_remainder(real, total, sizes)


def erk_densities(shapes: Sequence[Tuple[int, ...]], density: float) -> List[float]:
    """Erdos-Renyi-Kernel densities (Evci et al. 2020), SPEC.md section 1.

    density_l = eps * sum(shape_l) / prod(shape_l), e.g. (out+in+kh+kw)/(out*in*kh*kw), with
    one global eps chosen so that sum_l density_l * n_l = density * N. Any layer whose density
    would exceed 1 is made dense and eps recomputed, until none saturate. A zero-size layer
    (a dimension of 0) holds no weight: its density is 1 and it takes no share.
    """
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / n if n else 0.0 for s, n in zip(shapes, sizes)]
    target = density * sum(sizes)
    dense: set = {i for i, n in enumerate(sizes) if n == 0}
    while True:
        budget = target - sum(sizes[i] for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
        eps = budget / divisor if divisor > 0 else 0.0
        saturated = {i for i in range(len(sizes)) if i not in dense and eps * raw[i] > 1.0}
        if not saturated:
            break
        dense |= saturated
    return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]


@ALLOCATIONS.register("erk")
def erk(tensors: Sequence[PrunableTensor], density: float) -> List[int]:
    """ERK allocation; every layer keeps at least one weight."""
    sizes = [t.numel for t in tensors]
    total = kept_total(tensors, density)
    densities = erk_densities([tuple(t.shape) for t in tensors], density)
    counts = largest_remainder([d * n for d, n in zip(densities, sizes)], total, sizes)
    return ensure_nonempty(counts, sizes, "erk")


def ensure_nonempty(counts: List[int], sizes: Sequence[int], who: str) -> List[int]:
    """Give every empty layer one weight, taken from the layers that keep the most."""
    layers = sum(1 for n in sizes if n > 0)  # a zero-size layer has no weight to keep
    if sum(counts) < layers:
        raise ValueError(
            f"{who} keeps at least one weight per layer, but only {sum(counts)} weights are kept "
            f"over {layers} layers; use a lower sparsity"
        )
    counts = list(counts)
    for i, c in enumerate(counts):
        if c == 0 and sizes[i] > 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] = 1
    return counts


def density_floors(sizes: Sequence[int], min_density: float, capacity: Optional[Sequence[int]] = None) -> List[int]:
    """Per-tensor floors ``min(capacity_i, ceil(min_density * n_i))``.

    ``min_density`` is read as the decimal it prints as (0.07 is 7/100, not the binary float
    just above it), so ``ceil(0.07 * 100)`` is 7, not 8. ``capacity`` (the weights each
    tensor still has) caps the floor: pruning never regrows a weight.
    """
    fraction = Fraction(repr(float(min_density)))
    floors = [math.ceil(fraction * n) for n in sizes]
    if capacity is not None:
        floors = [min(f, c) for f, c in zip(floors, capacity)]
    return floors


def apply_floors(counts: Sequence[int], floors: Sequence[int], min_density: float) -> List[int]:
    """Raise every count to its floor, keeping the total exact.

    The weights the raised tensors need are taken from the tensors above their floor, in
    proportion to how far above it they are (largest remainders), so no donor drops below
    its own floor. Works after any allocation. Raises ``ValueError`` when the floors alone
    exceed the total.
    """
    total = sum(counts)
    if sum(floors) > total:
        raise ValueError(
            f"min_density={min_density:g} keeps at least {sum(floors)} weights over the {len(floors)} "
            f"prunable tensors, but the sparsity keeps only {total}: lower min_density or the sparsity"
        )
    return clamp_exact(counts, floors, ceiling=False)


def clamp_exact(counts: Sequence[int], bounds: Sequence[int], ceiling: bool) -> List[int]:
    """Clamp every count to its bound (at most it if ``ceiling``, else at least it) keeping the
    total exact: what the clamp moved is given to (ceiling) or taken from (floor) the counts on
    the free side of their bounds, in proportion to their distance from it (largest
    remainders, so none crosses its own bound). The bounds must admit the total.

    Used for the floors of ``min_density`` and, in ``prune``, for the ceiling of the weights
    a tensor still has (pruning never regrows).
    """
    if not ceiling:  # a floor is a ceiling on the negated counts
        return [-c for c in clamp_exact([-c for c in counts], [-b for b in bounds], ceiling=True)]
    clamped = [min(c, b) for c, b in zip(counts, bounds)]
    moved = sum(counts) - sum(clamped)
    if moved == 0:
        return clamped
    room = [b - c for c, b in zip(clamped, bounds)]
    share = largest_remainder([moved * r / sum(room) for r in room], moved, room)
    return [c + s for c, s in zip(clamped, share)]


def get(name: str) -> Allocation:
    return ALLOCATIONS.get(name)


def names():
    return ALLOCATIONS.names()
