"""Pruning during training with thresholds in experiment specs (seeds 002 and 000).

Pipelines (each trains from scratch with the spec's ``train`` recipe while the method prunes,
then ``finalize()`` hard-prunes; optional fine-tuning with the mask held fixed):

- ``ste_fixed``: fixed per-layer sparsity, bound by ``binary_search`` / ``gaussian`` / ``topk``;
- ``sparsity_loss``: adaptive sparsity loss, ``budget`` (parameters kept) and/or
  ``budget_flops``, variant unconstrained / budget / hinge, weights avg / wavg / flops;
- ``ltp``: learned threshold pruning; the trail of checkpoints (one per sparsity level reached)
  is evaluated and recorded as trail points ``trail_0.50`` ... (sparsity vs accuracy);
- ``dense_equivalent``: the same architecture with channels x sqrt(kept_fraction), trained
  from scratch (a point of the trade-off curve with no main run).

Baseline ``dense_equivalent``: the thin model whose kept fraction is the main run's
nonzero / total parameters, trained from scratch with the spec's recipe.

    method: {name: sparsity_loss, params: {budget: 0.15, weights: wavg}}
    baselines: [dense, dense_equivalent]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import params as valid
from ..methods.base import MethodCallback
from ..methods.ltp import LTP
from ..methods.sparsity_loss import SparsityLoss
from ..methods.ste_fixed import STEFixed
from ..params import nonnegative, param, positive
from .dense_equivalent import equivalent_width
from .finetune import EnforceMask
from .budget import ScratchBudgetParams, budget_epochs
from ..core.accounting import flops_per_module
from .registry import register_baseline, register_pipeline
from .results import FinishedRun, PipelineResult, RunContext


@dataclass(kw_only=True)
class FinetuneParams:
    """Optional fine-tuning with the final mask fixed (the pipelines' own fields)."""

    finetune_epochs: int = param(0, check=nonnegative, doc="fine-tuning epochs with the final mask fixed")
    finetune_lr: Optional[float] = param(None, check=positive, doc="fine-tuning lr (None: the recipe's)")


def _finetune(ctx: RunContext, model, mask, epochs: int, lr: Optional[float]) -> None:
    if epochs > 0:
        overrides = {"lr": lr} if lr is not None else {}
        ctx.fit(model, "finetune", epochs=epochs, callbacks=[EnforceMask(mask)], **overrides)


# ------------------------------------------------------------------------------ ste_fixed


@dataclass(kw_only=True)
class SteFixedParams(FinetuneParams, STEFixed.Params):
    """The method's parameters (``STEFixed.Params``) plus fine-tuning."""


@register_pipeline("ste_fixed", SteFixedParams, target=STEFixed.requested_sparsity)
def run_ste_fixed(ctx: RunContext, p: SteFixedParams) -> PipelineResult:
    """Fixed per-layer sparsity (BS / GA / top-k) pruned every forward pass, STE backward."""
    model = ctx.model
    method = STEFixed.from_params(p)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    mask = method.finalize()
    ctx.record("finalized", model)
    _finetune(ctx, model, mask, p.finetune_epochs, p.finetune_lr)
    return ctx.result(model, mask, metrics={"requested_sparsity": p.sparsity})


# -------------------------------------------------------------------------- sparsity_loss


@dataclass(kw_only=True)
class SparsityLossParams(FinetuneParams, SparsityLoss.Params):
    """The method's parameters (``SparsityLoss.Params``) plus fine-tuning."""


@register_pipeline("sparsity_loss", SparsityLossParams, target=SparsityLoss.requested_sparsity,
                   target_params=("budget",))
def run_sparsity_loss(ctx: RunContext, p: SparsityLossParams) -> PipelineResult:
    """Adaptive sparsity loss with per-layer trainable bounds r_i; hard-pruned at the end."""
    model = ctx.model
    method = SparsityLoss.from_params(p)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    layer_r = {n: round(float(v), 6) for n, v in method.state_dict()["r"].items()}
    # the loss's own Gaussian estimate, reported beside the achieved sparsity (they differ
    # where trained weights are not Gaussian)
    predicted = 1.0 - float(method.predicted_density().detach())
    mask = method.finalize()
    ctx.record("finalized", model)
    _finetune(ctx, model, mask, p.finetune_epochs, p.finetune_lr)
    return ctx.result(model, mask, metrics={"requested_sparsity": SparsityLoss.requested_sparsity(p),
                                            "budget": p.budget, "budget_flops": p.budget_flops, "r": layer_r,
                                            "predicted_sparsity": predicted})


# ------------------------------------------------------------------------------------ ltp


@dataclass(kw_only=True)
class PretrainParams:
    """Dense epochs before LTP starts, and the lr of the LTP epochs."""

    pretrain_epochs: int = param(0, check=nonnegative,
                                 doc="dense epochs before LTP starts (the paper prunes trained networks); "
                                     "LTP then trains for train.epochs - pretrain_epochs")
    ltp_lr: Optional[float] = param(None, check=positive, doc="lr of the LTP epochs (None: the recipe's)")


@dataclass(kw_only=True)
class LtpParams(FinetuneParams, PretrainParams, LTP.Params):
    """The method's parameters (``LTP.Params``), dense pre-training with the LTP lr, fine-tuning
    (fields in that order: the bases are listed last-first)."""


@register_pipeline("ltp", LtpParams, target=LTP.requested_sparsity)
def run_ltp(ctx: RunContext, p: LtpParams) -> PipelineResult:
    """Learned threshold pruning (optionally after ``pretrain_epochs`` dense epochs); the
    trail of checkpoints is evaluated as trail points."""
    model = ctx.model
    epochs = int(ctx.recipe["epochs"])
    if p.pretrain_epochs >= epochs:
        raise ValueError(f"pretrain_epochs ({p.pretrain_epochs}) must be below train.epochs ({epochs}): "
                         "LTP trains for the epochs that remain")
    if p.pretrain_epochs:
        ctx.fit(model, "pretrain", epochs=p.pretrain_epochs)
    method = LTP.from_params(p, trail_dir=str(ctx.folder / "trail"))
    overrides = {"lr": p.ltp_lr} if p.ltp_lr is not None else {}
    ctx.fit(model, "train", epochs=epochs - p.pretrain_epochs, callbacks=[MethodCallback(method)], **overrides)
    trail = list(method.trail)
    mask = method.finalize()
    for row in trail:
        saved = torch.load(row["path"], map_location="cpu", weights_only=True)
        point = ctx.build_model()
        point.load_state_dict(saved["model"])
        ctx.record(f"trail_{row['level']:.2f}", point, level=row["level"], step=row["step"])
    ctx.record("finalized", model)
    _finetune(ctx, model, mask, p.finetune_epochs, p.finetune_lr)
    return ctx.result(model, mask, metrics={"requested_sparsity": None, "trail_levels": [r["level"] for r in trail]})


# ------------------------------------------------------------------------ dense equivalent


@dataclass(kw_only=True)
class DenseEquivalentParams:
    kept_fraction: float = param(check=valid.fraction_kept, example=0.15, doc="r_c: fraction of the parameters kept")


@register_pipeline("dense_equivalent", DenseEquivalentParams, target=lambda p: 1.0 - p.kept_fraction,
                   target_params=("kept_fraction",))
def run_dense_equivalent(ctx: RunContext, p: DenseEquivalentParams) -> PipelineResult:
    """The same architecture with channels x sqrt(kept_fraction), trained from scratch."""
    return _train_thin(ctx, p.kept_fraction, built_on=())


@dataclass
class DenseEquivalentBaselineParams(ScratchBudgetParams):
    epochs: Optional[int] = param(None, check=positive, doc="training epochs (None: the spec's train.epochs)")


def _train_thin(ctx: RunContext, kept: float, built_on=(), epochs: Optional[int] = None, p=None) -> PipelineResult:
    base = ctx.model_kwargs()
    width = equivalent_width(kept, base.get("width", 1.0))
    model = ctx.build_model(width=width)
    overrides = {}
    if p is not None:  # the baseline: budget E or B (Scratch-B on the thin model's FLOPs)
        large = flops_per_module(ctx.build_model())[1] if p.budget == "B" else 1
        small = flops_per_module(model)[1] if p.budget == "B" else 1
        epochs, overrides = budget_epochs(p, ctx.recipe, large, small)
    ctx.fit(model, "train", epochs=epochs, **overrides)
    ref = sum(q.numel() for q in ctx.build_model().parameters())
    params = sum(q.numel() for q in model.parameters())
    result = ctx.result(model, None, metrics={
        "requested_sparsity": None, "kept_fraction": kept, "equivalent_width": width,
        "equivalent_params": params, "reference_params": ref}, built_on=built_on)
    result.model_kwargs = ctx.model_kwargs(width=width)
    return result


@register_baseline("dense_equivalent", DenseEquivalentBaselineParams)
def run_dense_equivalent_baseline(ctx: RunContext, p: DenseEquivalentBaselineParams, main: FinishedRun) -> PipelineResult:
    """A thin dense model with as many parameters as the main run keeps, trained from scratch."""
    total, nonzero = main.metrics.get("params"), main.metrics.get("nonzero_params")
    if not total or nonzero is None:
        raise ValueError(f"dense_equivalent needs the main run's parameter counts; run {main.id} has none")
    kept = max(nonzero / total, 1e-6)
    result = _train_thin(ctx, kept, built_on=(), p=p)
    result.metrics["main_nonzero_params"] = nonzero
    return result
