"""The IMP family in experiment specs: pipelines ``imp`` and ``gmp``, baselines ``lottery`` and
``random_reinit`` (seed 004 and the lottery comparison of seed 001).

``imp`` starts from the shared dense run of the same data / model / recipe / seed (trained once
for a whole sweep of schedules and sparsities), whose recipe is the spec's ``train``: it gives
the original learning-rate schedule the retraining schedules derive from. Its cost counts the
dense epochs too. With ``rewind: 0`` the survivors go back to the dense run's initialisation
(the model the spec builds with the same seed); a later rewind point k > 0 exists only in a
dense training of its own, which the run then does (and counts).

``gmp`` trains from scratch with the spec's recipe while GMP prunes (methods/gmp.py).

``lottery`` / ``random_reinit``: the main run's final mask on the original initialisation /
on a fresh one, trained with the spec's recipe and the mask held fixed (Frankle & Carbin;
Liu et al. section 6). Their cost includes the main run's, which found the mask.

    method: {name: imp, params: {sparsity: 0.9, phases: 4, retrain_epochs: 3, schedule: slr}}
    baselines: [dense, lottery, random_reinit]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

from .. import params as valid
from ..core import ALLOCATIONS, SCORES
from ..core.mask import Mask
from ..methods.base import MethodCallback
from ..methods.gmp import GMP, PruningStepParams
from ..params import nonnegative, param, positive
from .finetune import EnforceMask
from .gradual import gmp_steps
from .imp import imp
from .budget import ScratchBudgetParams, budget_epochs, sparse_flops
from .registry import register_baseline, register_pipeline
from .results import FinishedRun, PipelineResult, RunContext
from .retrain_schedules import RETRAIN_SCHEDULE_NAMES
from .rewind import reinitialized_weights, rewind


@dataclass
class ImpParams:
    sparsity: float = param(check=valid.sparsity, example=0.9, doc="target fraction of the prunable weights removed")
    phases: int = param(5, check=positive, doc="pruning phases J; each removes 1-(1-s)^(1/J) of the rest")
    retrain_epochs: int = param(1, check=positive, doc="retraining epochs T_r after each pruning step")
    schedule: str = param("slr", choices=RETRAIN_SCHEDULE_NAMES, doc="retraining lr schedule")
    score: str = param("magnitude", choices=SCORES.names, doc="weight score (magnitude, lamp, random)")
    allocation: str = param("global", choices=ALLOCATIONS.names,
                            doc="per-layer budget (global, uniform, uniform_plus, erk)")
    rewind: Optional[int] = param(None, check=nonnegative,
                                  doc="rewind survivors to this dense iteration after each pruning (0: init)")
    eta_max: Optional[float] = param(None, check=positive, doc="override the original schedule's largest lr")
    eta_min: Optional[float] = param(None, check=nonnegative, doc="override the original schedule's smallest lr")
    # Issue #15 point 7: FT after a cosine-to-zero recipe retrained at ~1e-6 x eta_max.
    ft_floor: float = param(0.01, legacy=0.0, check=nonnegative,
                            doc="FT's lr is at least this x eta_max (0: the recipe's last lr, however small)")
    include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
    exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")

    def _inert_fields(self):
        """ft_floor acts only on FT without an explicit eta_min (left out of the run id otherwise)."""
        return () if self.schedule == "ft" and self.eta_min is None and self.rewind is None else ("ft_floor",)


@register_pipeline("imp", ImpParams, requires=("dense",))
def run_imp(ctx: RunContext, p: ImpParams) -> PipelineResult:
    """Iterative magnitude pruning from the shared dense model: J x {prune -> retrain}."""
    own_dense = p.rewind is not None and p.rewind > 0
    if own_dense:
        model, pretrained, weights = ctx.build_model(), False, None
    else:
        model, _ = ctx.dense_run().load()
        pretrained = True
        weights = ctx.build_model().state_dict() if p.rewind == 0 else None
    result = imp(model, (ctx.train, ctx.test), p.sparsity, phases=p.phases, retrain_epochs=p.retrain_epochs,
                 schedule=p.schedule, score=p.score, allocation=p.allocation, rewind=p.rewind, include=p.include,
                 exclude=p.exclude, recipe=ctx.recipe, pretrained=pretrained, rewind_weights=weights,
                 eta_max=p.eta_max, eta_min=p.eta_min, ft_floor=p.ft_floor, folder=ctx.folder / "imp", seed=ctx.seed,
                 progress=ctx.progress)
    trail = []
    for row in result.history[1:]:
        trail.append({"phase": f"pruned_{row['phase']:02d}", "sparsity": row["sparsity"], "top1": row["pruned_top1"]})
        trail.append({"phase": f"phase_{row['phase']:02d}", "sparsity": row["sparsity"], "top1": row["top1"]})
    steps_per_epoch = len(ctx.train)
    return PipelineResult(
        model=result.model, mask=result.mask,
        metrics={"requested_sparsity": p.sparsity, "oneshot_top1": result.history[1]["pruned_top1"],
                 "dense_epochs": result.history[0]["epochs"]},
        history=[{"phase": r["stage"], **{k: v for k, v in r.items() if k != "stage"}} for r in result.epochs_log],
        trail=trail, epochs=result.total_epochs, steps=int(result.total_epochs * steps_per_epoch))


@dataclass(kw_only=True)
class GmpEpochSchedule:
    """GMP's schedule in epochs (the method's ``Params`` count optimizer steps; :func:`gmp_steps` converts)."""

    sparsity: float = param(check=valid.sparsity, example=0.9, doc="final sparsity s_f")
    start_epoch: float = param(0.0, check=nonnegative, doc="first pruning step t0, in epochs")
    end_epoch: Optional[float] = param(None, check=positive, doc="last pruning step (None: 3/4 of train.epochs)")
    prune_every: Optional[int] = param(None, check=positive, doc="steps between pruning steps (None: 1/4 epoch)")


@dataclass(kw_only=True)
class GmpParams(PruningStepParams, GmpEpochSchedule):
    """The schedule in epochs, then how each pruning step prunes (shared with :class:`GMP`).
    (Base order: the fields come schedule first, as the labels and resolved specs list them.)"""


@register_pipeline("gmp", GmpParams)
def run_gmp(ctx: RunContext, p: GmpParams) -> PipelineResult:
    """Gradual magnitude pruning (Zhu & Gupta) during one training with the spec's recipe."""
    model = ctx.model
    start, end, every = gmp_steps(int(ctx.recipe["epochs"]), len(ctx.train), p.start_epoch, p.end_epoch,
                                  p.prune_every)
    step_params = {f.name: getattr(p, f.name) for f in dataclasses.fields(PruningStepParams)}
    method = GMP(p.sparsity, end_step=end, start_step=start, prune_every=every, seed=ctx.seed, **step_params)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    mask = method.finalize()
    return ctx.result(model, mask, metrics={"requested_sparsity": p.sparsity, "gmp_start_step": start,
                                            "gmp_end_step": end, "gmp_prune_every": every})


# ------------------------------------------------------------------------------ baselines


@dataclass
class LotteryParams(ScratchBudgetParams):
    epochs: Optional[int] = param(None, check=positive, doc="training epochs (None: the spec's train.epochs)")


@dataclass
class RandomReinitParams(ScratchBudgetParams):
    epochs: Optional[int] = param(None, check=positive, doc="training epochs (None: the spec's train.epochs)")
    init_seed: Optional[int] = param(None, doc="seed of the fresh initialisation (None: 1000 + the run's seed)")


def _main_mask(main: FinishedRun, model, name: str) -> Mask:
    _, mask = main.load()
    if mask is None:
        raise ValueError(f"{name} needs a main run that produced a mask; run {main.id} "
                         f"(method {main.spec.get('method', {}).get('name')!r}) has none")
    return Mask({k: v for k, v in mask.items()}, model)


def _train_ticket(ctx: RunContext, main: FinishedRun, weights, p, name: str) -> PipelineResult:
    """Budget ``p.budget == "B"``: Scratch-B for a sparse mask (Liu et al. 2019 Sec. 5), epochs
    E x dense FLOPs / effective FLOPs of the masked model, the schedule stretched."""
    model = ctx.build_model()
    mask = _main_mask(main, model, name)
    rewind(model, mask, weights)
    ctx.record("reset", model)
    dense, effective = sparse_flops(model, mask) if p.budget == "B" else (1, 1)
    epochs, overrides = budget_epochs(p, ctx.recipe, dense, effective)
    ctx.fit(model, name, epochs=epochs, callbacks=[EnforceMask(mask)], **overrides)
    return ctx.result(model, mask, metrics={"requested_sparsity": main.metrics.get("requested_sparsity"),
                                            "own_epochs": epochs, "flops_ratio": effective / dense,
                                            "flops_reduction": dense / effective},
                      built_on=[main])


@register_baseline("lottery", LotteryParams)
def run_lottery(ctx: RunContext, p: LotteryParams, main: FinishedRun) -> PipelineResult:
    """The main run's mask on the original initialisation, trained with the spec's recipe."""
    return _train_ticket(ctx, main, ctx.build_model().state_dict(), p, "lottery")


@register_baseline("random_reinit", RandomReinitParams)
def run_random_reinit(ctx: RunContext, p: RandomReinitParams, main: FinishedRun) -> PipelineResult:
    """The main run's mask on a fresh random initialisation, trained with the spec's recipe."""
    seed = p.init_seed if p.init_seed is not None else 1000 + ctx.seed
    fresh = reinitialized_weights(ctx.build_model(), seed)
    return _train_ticket(ctx, main, fresh, p, "random_reinit")
