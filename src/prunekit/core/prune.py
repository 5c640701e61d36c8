"""``prune()``: one-shot unstructured pruning with a score and a layer-wise allocation."""
from __future__ import annotations

import math
import warnings
from typing import Iterable, List, Optional, Sequence, Type

import torch
from torch import nn

from .. import distributed
from .. import params as valid
from . import allocation as allocations
from . import arrays
from . import oneshot, sparsegpt
from . import scores as score_fns
from .allocation import PrunableTensor
from .mask import Mask, carried_keep, carries_mask
from .targets import prunable_targets


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """``sparsity`` as a float after the shared check (:func:`prunekit.params.sparsity`: a
    finite number in [0, 1), 1 would remove every weight); here it is required (not None)."""
    if sparsity is None:
        raise ValueError(f"{name} is required: a number in [0, 1)")
    try:
        valid.sparsity(sparsity)
    except ValueError as err:
        raise ValueError(str(err) if name == "sparsity" else f"{name}: {err}") from None
    return float(sparsity)


def check_min_density(min_density: Optional[float]) -> Optional[float]:
    """``min_density`` is None (no floor) or a number in (0, 1]: the fraction every tensor keeps."""
    if min_density is None:
        return None
    if isinstance(min_density, bool) or not isinstance(min_density, (int, float)) \
            or not math.isfinite(min_density) or not 0.0 < min_density <= 1.0:
        raise ValueError(f"min_density must be None or a number in (0, 1] (e.g. 0.01 keeps at least 1% of "
                         f"every prunable tensor), got {min_density!r}")
    return float(min_density)


class EmptyTensorWarning(UserWarning):
    """Pruning left a prunable tensor with no weight: its layer outputs a constant."""


def warn_if_emptied(names: Sequence[str], counts: Sequence[int], sizes: Sequence[int], shown: int = 8) -> None:
    """One warning line naming the tensors that keep 0 of their weights (first ``shown``)."""
    empty: List[str] = [n for n, c, size in zip(names, counts, sizes) if c == 0 and size > 0]
    if not empty:
        return
    listed = ", ".join(empty[:shown]) + (f", ... ({len(empty) - shown} more)" if len(empty) > shown else "")
    warnings.warn(f"pruning empties {len(empty)} tensor(s), whose layers then output a constant: {listed}; "
                  "pass min_density=... (e.g. 0.01) to keep a fraction of every tensor",
                  EmptyTensorWarning, stacklevel=4)  # 4: prune's caller (past torch.no_grad's wrapper)


@torch.no_grad()
def prune(
    model: nn.Module,
    sparsity: float,
    score: str = "magnitude",
    allocation: Optional[str] = None,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    types: Optional[Sequence[Type[nn.Module]]] = None,
    mask: Optional[Mask] = None,
    seed: Optional[int] = None,
    min_density: Optional[float] = None,
    calibration: Optional[Iterable] = None,
    pattern: Optional[str] = None,
) -> Mask:
    """Prune ``model`` in place to ``sparsity`` and return the :class:`Mask`.

    ``sparsity`` is absolute: the fraction of *all* prunable weights removed (unlike the
    ``amount`` of ``torch.nn.utils.prune``, which is of the remaining ones). Exactly
    ``round((1 - sparsity) * N)`` weights are kept over the N prunable weights; each tensor's
    count comes from ``allocation`` (global, uniform, uniform_plus, erk; default: global, or
    uniform for wanda and sparsegpt as in their papers) and the weights kept inside it are its
    highest ``score`` values (magnitude, lamp, random, wanda), ties broken by index, spread as
    ``pattern`` says (:mod:`prunekit.core.patterns`: unstructured, per_output (wanda's
    default), or N:M such as "2:4", which needs sparsity = 1 - N/M).

    ``calibration``: a loader of batches (tensors, (x, y) tuples, or dicts passed as
    ``model(**batch)``) for the scores that look at data: wanda (|W| * input norms) and
    sparsegpt, which also updates the kept weights to reconstruct each layer's outputs
    (:mod:`prunekit.core.sparsegpt`).

    Masks come from scores, not from zeros already there: a fresh prune of a dense model
    scores every weight, exact zeros included (a zero-initialised head is not "pruned").
    Iterative use only removes weights: weights pruned before stay pruned — those of
    ``mask`` when given, else the exact zeros of the tensors a prunekit mask was applied to
    (by an earlier ``prune``, ``enforce`` or a Method's ``finalize``; see
    :func:`prunekit.core.mask.carried_keep`) — and asking for a lower sparsity than the
    model already has is an error. ``seed`` fixes the random score.

    ``min_density`` (default None: no floor) makes every tensor keep at least
    ``ceil(min_density * numel)`` weights (capped at the weights it still has), whatever the
    allocation: after allocating, tensors below the floor are raised to it and the weights
    come from the tensors above their floor, in proportion to their margin, so the total
    stays exactly ``round((1 - sparsity) * N)``; a floor above that total is a ``ValueError``.
    A tensor left with 0 weights raises an :class:`EmptyTensorWarning` listing them.

    Prunable tensors are found by Parameter identity (:mod:`prunekit.core.targets`): a
    tied Parameter is one tensor with one mask entry, under its canonical name.

    Under torchrun (:mod:`prunekit.distributed`) every rank computes the mask and then takes
    rank 0's (one broadcast), so all ranks prune the same weights even if their copies of
    the model differed in the last bit; every rank must call it (GMP does, at the same steps).
    """
    sparsity = check_sparsity(sparsity)
    min_density = check_min_density(min_density)
    score_fn = score_fns.get(score)
    select_fn = oneshot.resolve_pattern(pattern, score_fn, score, allocation, sparsity)
    allocation = allocation if allocation is not None else oneshot.default_allocation(score_fn, select_fn)
    allocate = allocations.get(allocation)
    targets = prunable_targets(model, include=include, exclude=exclude, types=types)
    params = {t.name: t.param for t in targets}
    logical_shapes = {t.name: t.shape for t in targets}
    transposed = oneshot.transposed_flags(model, params)
    oneshot.check_pattern(select_fn, params, transposed)
    # previous[name]: the weights still alive, None when none was pruned yet (the common
    # case, which then skips every masking pass over the weights and scores).
    if mask is None:
        previous = {n: carried_keep(p) if carries_mask(p) else None for n, p in params.items()}
    else:
        mask = Mask(dict(mask), model)   # re-keyed by canonical names, checked against the model
        missing = set(params) - set(mask)
        if missing:
            raise ValueError(f"the previous mask does not cover {sorted(missing)[:3]}")
        previous = {n: mask[n].to(p.device) for n, p in params.items()}
    for name, p in params.items():
        if not arrays.all_finite(p):
            raise ValueError(f"{name} has NaN or infinite weights: prune a model whose training did not diverge")

    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stats = oneshot.gather(model, params, score_fn, calibration)
    # The LAMP fast path compares within a whole tensor, so only the unstructured pattern uses it.
    top_scores = getattr(score_fn, "top_scores", None) if select_fn is oneshot.pattern_fns.unstructured else None
    tensors, select_by = [], []
    for name, p in params.items():
        alive = previous[name]
        if top_scores is not None:
            # Fast path for scores that rank like |w| inside a layer (LAMP): the allocation
            # sees each layer's scores from the top down, the selection keeps the top w^2.
            # Already-masked weights count as 0 (SPEC section 1), also when ``mask`` masks
            # weights that are still non-zero: LAMP's denominators sum_{v >= u} w_v^2 (Lee et
            # al. Eq. 2) run over the surviving weights only, as the authors' code scores the
            # masked model; their keys are -inf, so they stay pruned.
            by = score_fns.ranking_keys(p)
            if alive is not None:
                by.masked_fill_(~alive, float("-inf"))
            s = top_scores(by)
        else:
            weights = p.detach() if alive is None else \
                torch.where(alive, p.detach(), torch.zeros((), dtype=p.dtype, device=p.device))
            extra = {"stats": stats[name]} if stats is not None else {}
            s = score_fn(weights, generator=generator, **extra)
            if alive is not None:
                # Already-pruned weights rank below everything, so they are the first to go again.
                s = torch.where(alive, s, torch.tensor(float("-inf"), dtype=s.dtype, device=s.device))
            by = s
        # the logical (out, in, ...) shape: allocations that use fan-in see HF Conv1D right
        tensors.append(PrunableTensor(name, logical_shapes[name], s))
        select_by.append(by)

    total = sum(t.numel for t in tensors)
    alive = [t.numel if previous[t.name] is None else int(torch.count_nonzero(previous[t.name])) for t in tensors]
    kept_target = int(round((1.0 - sparsity) * total))
    if kept_target == 0 and total > 0:  # like sparsity 1.0, which the check above rejects
        raise ValueError(
            f"sparsity {sparsity} keeps no weight of the {total} prunable weights "
            f"(round({1.0 - sparsity:.3g} * {total}) = 0); the highest sparsity that keeps one is "
            f"{1.0 - 1.0 / total:.6g}")
    if kept_target > sum(alive):
        raise ValueError(
            f"the model already has sparsity {1 - sum(alive) / total:.4f} over its prunable weights; "
            f"pruning only removes weights, so ask for a sparsity >= that (got {sparsity})"
        )
    counts = allocate(tensors, 1.0 - sparsity)
    if sum(counts) != kept_target:  # an allocation bug, never a user error
        raise AssertionError(f"allocation {allocation!r} kept {sum(counts)} weights, expected {kept_target}")
    fitted = allocations.clamp_exact(counts, alive, ceiling=True)   # pruning never regrows
    if isinstance(select_fn, oneshot.NM) and fitted != counts:
        raise ValueError(f"pattern {select_fn} needs {select_fn.n} of every {select_fn.m} weights alive, but the "
                         "model is already pruned further than that; start from the dense model")
    counts = fitted
    sizes = [t.numel for t in tensors]
    if min_density is not None:
        floors = allocations.density_floors(sizes, min_density, capacity=alive)
        counts = allocations.apply_floors(counts, floors, min_density)
    warn_if_emptied([t.name for t in tensors], counts, sizes)

    new_masks = {}
    if getattr(score_fn, "reconstructs", False):
        # SparseGPT: the counts are kept, the weights kept and their new values come from the
        # layer-wise reconstruction on calibration data.
        nm = select_fn if isinstance(select_fn, oneshot.NM) else None
        alive_masks = {n: a if a is not None else carried_keep(params[n]) for n, a in previous.items()}
        new_masks = sparsegpt.reconstruct(model, params, {t.name: k for t, k in zip(tensors, counts)},
                                          alive_masks, calibration, nm)
    for t, by, k in zip(tensors, select_by, counts):
        if t.name in new_masks:
            continue
        hint = t.source.kth_key(k) if top_scores is not None else t.threshold
        new_masks[t.name] = oneshot.select(select_fn, by, k, transposed[t.name], threshold=hint)
    distributed.broadcast_(new_masks.values())  # no-op in one process
    result = Mask(new_masks, model)
    result.apply()
    return result
