"""``prune()``: one-shot unstructured pruning with a score and a layer-wise allocation."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Type

import torch
from torch import nn

from . import allocation as allocations
from . import scores as score_fns
from .allocation import PrunableTensor
from .mask import Mask
from .targets import prunable_parameters
from .thresholds import largest_remainder, topk_mask


def check_sparsity(sparsity: float) -> float:
    """A sparsity must be a finite number in [0, 1): 1 would remove every weight."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity) \
            or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1) (e.g. 0.9 removes 90% of the prunable "
                         f"weights), got {sparsity!r}")
    return float(sparsity)


def _fit_to_capacity(counts: list, capacity: Sequence[int]) -> list:
    """Cap each layer at the weights it still has (pruning never regrows) and hand the excess
    to the layers with room left, in proportion to their room, so the total stays exact."""
    counts = list(counts)
    excess = sum(max(0, c - cap) for c, cap in zip(counts, capacity))
    if excess == 0:
        return counts
    counts = [min(c, cap) for c, cap in zip(counts, capacity)]
    room = [cap - c for c, cap in zip(counts, capacity)]
    share = largest_remainder([excess * r / sum(room) for r in room], excess, room)
    return [c + s for c, s in zip(counts, share)]


@torch.no_grad()
def prune(
    model: nn.Module,
    sparsity: float,
    score: str = "magnitude",
    allocation: str = "global",
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    types: Optional[Sequence[Type[nn.Module]]] = None,
    mask: Optional[Mask] = None,
    seed: Optional[int] = None,
) -> Mask:
    """Prune ``model`` in place to ``sparsity`` and return the :class:`Mask`.

    ``sparsity`` is absolute: the fraction of *all* prunable weights removed (unlike the
    ``amount`` of ``torch.nn.utils.prune``, which is of the remaining ones). Exactly
    ``round((1 - sparsity) * N)`` weights are kept over the N prunable weights; each tensor's
    count comes from ``allocation`` (global, uniform, uniform_plus, erk) and the weights kept
    inside it are its highest ``score`` values (magnitude, lamp, random), ties broken by index.

    Iterative use only removes weights: weights pruned before (``mask``, or exact zeros in the
    model when no mask is given) stay pruned, and asking for a lower sparsity than the model
    already has is an error. ``seed`` fixes the random score.
    """
    sparsity = check_sparsity(sparsity)
    score_fn = score_fns.get(score)
    allocate = allocations.get(allocation)
    params = prunable_parameters(model, include=include, exclude=exclude, types=types)
    if mask is None:
        previous = {n: p.detach() != 0 for n, p in params.items()}
    else:
        missing = set(params) - set(mask)
        if missing:
            raise ValueError(f"the previous mask does not cover {sorted(missing)[:3]}")
        previous = {n: mask[n].to(p.device) for n, p in params.items()}
    for name, p in params.items():
        if not torch.isfinite(p).all():
            raise ValueError(f"{name} has NaN or infinite weights: prune a model whose training did not diverge")

    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tensors = []
    for name, p in params.items():
        s = score_fn(p.detach(), generator=generator)
        # Already-pruned weights rank below everything, so they are the first to go again.
        s = torch.where(previous[name], s.to(torch.float64 if s.dtype == torch.float64 else torch.float32),
                        torch.tensor(float("-inf"), dtype=s.dtype, device=s.device))
        tensors.append(PrunableTensor(name, tuple(p.shape), s))

    total = sum(t.numel for t in tensors)
    alive = [int(previous[t.name].sum()) for t in tensors]
    kept_target = int(round((1.0 - sparsity) * total))
    if kept_target > sum(alive):
        raise ValueError(
            f"the model already has sparsity {1 - sum(alive) / total:.4f} over its prunable weights; "
            f"pruning only removes weights, so ask for a sparsity >= that (got {sparsity})"
        )
    counts = allocate(tensors, 1.0 - sparsity)
    if sum(counts) != kept_target:  # an allocation bug, never a user error
        raise AssertionError(f"allocation {allocation!r} kept {sum(counts)} weights, expected {kept_target}")
    counts = _fit_to_capacity(counts, alive)

    new_masks = {t.name: topk_mask(t.scores, k) for t, k in zip(tensors, counts)}
    result = Mask(new_masks, model)
    result.apply()
    return result
