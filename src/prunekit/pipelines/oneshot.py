"""One-shot pruning + fine-tuning (seed 003's comparison), and the random-weights baseline.

``oneshot``: take the trained dense model of the same data / model / recipe / seed (the
shared ``dense`` run: a sweep over 5 allocations x 5 sparsities trains it once per seed),
prune it to ``sparsity`` with a score and an allocation (:func:`prunekit.prune`), then
fine-tune ``finetune_epochs`` with the mask held fixed.

``random_same_allocation``: a baseline of any run that produced a mask. Every layer keeps as
many weights as in the main run's mask, but which ones is drawn at random (from the same
dense model); then it is fine-tuned like the main run. It separates what the allocation
contributes from what the choice of weights inside each layer contributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ..core import ALLOCATIONS, SCORES
from ..core.mask import Mask
from ..core.prune import check_min_density, prune
from ..training import SCHEDULE_NAMES
from .finetune import EnforceMask
from .. import params as valid
from ..params import nonnegative, param, positive
from .registry import register_baseline, register_pipeline
from .results import FinishedRun, PipelineResult, RunContext


@dataclass
class OneShotParams:
    sparsity: float = param(check=valid.sparsity, example=0.9, doc="fraction of the prunable weights removed")
    score: str = param("magnitude", choices=SCORES.names, doc="weight score (magnitude, lamp, random)")
    allocation: str = param("global", choices=ALLOCATIONS.names,
                            doc="per-layer budget (global, uniform, uniform_plus, erk)")
    finetune_epochs: int = param(1, check=nonnegative, doc="epochs of fine-tuning after pruning")
    finetune_lr: float = param(0.01, check=positive, doc="base learning rate of the fine-tuning")
    finetune_schedule: str = param("cosine", choices=SCHEDULE_NAMES, doc="lr schedule of the fine-tuning")
    finetune_subset: Optional[int] = param(None, check=positive,
                                           doc="fine-tune on a seeded subset of N training images")
    include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
    exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")
    min_density: Optional[float] = param(None, check=check_min_density,
                                         doc="fraction every prunable tensor keeps at least (None: no floor)")


def finetune_phase(ctx: RunContext, model, mask: Mask, epochs: int, lr: float, schedule: str,
                   subset: Optional[int]) -> None:
    """Fine-tune ``model`` with ``mask`` enforced (phase "finetune", resumable)."""
    if epochs > 0:
        ctx.fit(model, "finetune", epochs=epochs, lr=lr, schedule=schedule, schedule_kwargs={},
                callbacks=[EnforceMask(mask)], train=ctx.train_loader(subset))


@register_pipeline("oneshot", OneShotParams, requires=("dense",))
def run_oneshot(ctx: RunContext, p: OneShotParams) -> PipelineResult:
    """Prune the shared dense model once (score + allocation), then fine-tune."""
    dense = ctx.dense_run()
    model, _ = dense.load()
    # Pruning is a deterministic function of the dense weights (and the seed for the random
    # score), so a resumed run recomputes the same mask before its fine-tuning resumes.
    mask = prune(model, p.sparsity, score=p.score, allocation=p.allocation, include=p.include,
                 exclude=p.exclude, seed=ctx.seed, min_density=p.min_density)
    pruned = ctx.record("pruned", model)
    finetune_phase(ctx, model, mask, p.finetune_epochs, p.finetune_lr, p.finetune_schedule,
                   p.finetune_subset)
    return ctx.result(model, mask, metrics={"requested_sparsity": p.sparsity,
                                            "oneshot_top1": pruned["top1"]}, built_on=[dense])


@dataclass
class RandomSameAllocationParams:
    finetune_epochs: Optional[int] = param(None, check=nonnegative,
                                           doc="fine-tuning epochs (None: the main run's finetune_epochs)")
    finetune_lr: Optional[float] = param(None, check=positive,
                                         doc="fine-tuning lr (None: the main run's finetune_lr)")


def random_mask_like(mask: Mask, model, generator: torch.Generator) -> Mask:
    """A mask keeping, in every tensor, as many weights as ``mask`` does, chosen uniformly at
    random (one permutation per tensor, drawn in the mask's order from ``generator``)."""
    masks = {}
    for name, m in mask.items():
        keep = torch.zeros(m.numel(), dtype=torch.bool)  # drawn on CPU: the same mask on any device
        keep[torch.randperm(m.numel(), generator=generator)[: int(m.sum())]] = True
        keep = keep.to(m.device)
        masks[name] = keep.view(m.shape)
    return Mask(masks, model)


@register_baseline("random_same_allocation", RandomSameAllocationParams, requires=("dense",))
def run_random_same_allocation(ctx: RunContext, p: RandomSameAllocationParams,
                               main: FinishedRun) -> PipelineResult:
    """Random weights with the main run's per-layer kept counts, from the same dense model."""
    _, main_mask = main.load()
    if main_mask is None:
        raise ValueError(f"random_same_allocation needs a main run that produced a mask; run {main.id} "
                         f"(method {main.spec.get('method', {}).get('name')!r}) has none")
    dense = ctx.dense_run()
    model, _ = dense.load()
    mask = random_mask_like(main_mask, model, torch.Generator().manual_seed(ctx.seed))
    mask.apply()
    pruned = ctx.record("pruned", model)
    main_params = main.params
    epochs = p.finetune_epochs if p.finetune_epochs is not None else int(main_params.get("finetune_epochs", 1))
    lr = p.finetune_lr if p.finetune_lr is not None else float(main_params.get("finetune_lr", 0.01))
    finetune_phase(ctx, model, mask, epochs, lr, main_params.get("finetune_schedule", "cosine"),
                   main_params.get("finetune_subset"))
    requested = main.metrics.get("requested_sparsity")
    return ctx.result(model, mask, metrics={"requested_sparsity": requested, "oneshot_top1": pruned["top1"]},
                      built_on=[dense])
