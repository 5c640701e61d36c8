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
from typing import List, Optional

import torch

from ..methods.base import MethodCallback
from ..methods.ltp import DEFAULT_TRAIL, LTP
from ..methods.sparsity_loss import VARIANTS, WEIGHTS, SparsityLoss
from ..methods.ste_fixed import BOUNDS, STEFixed
from .dense_equivalent import equivalent_width
from .finetune import EnforceMask
from .registry import (FinishedRun, PipelineResult, RunContext, check_sparsity, nonnegative, param, positive,
                       register_baseline, register_pipeline)


def _fraction(value) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"must be a fraction kept, in (0, 1], got {value!r}")


def _finetune(ctx: RunContext, model, mask, epochs: int, lr: Optional[float]) -> None:
    if epochs > 0:
        overrides = {"lr": lr} if lr is not None else {}
        ctx.fit(model, "finetune", epochs=epochs, callbacks=[EnforceMask(mask)], **overrides)


# ------------------------------------------------------------------------------ ste_fixed


@dataclass
class SteFixedParams:
    sparsity: float = param(check=check_sparsity, doc="fraction of every prunable layer's weights pruned")
    bound: str = param("binary_search", choices=BOUNDS, doc="how the bound is found: binary_search, gaussian, topk")
    eps: float = param(1e-3, check=positive, doc="binary search tolerance on the pruned fraction")
    finetune_epochs: int = param(0, check=nonnegative, doc="fine-tuning epochs with the final mask fixed")
    finetune_lr: Optional[float] = param(None, check=positive, doc="fine-tuning lr (None: the recipe's)")
    include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
    exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")


@register_pipeline("ste_fixed", SteFixedParams)
def run_ste_fixed(ctx: RunContext, p: SteFixedParams) -> PipelineResult:
    """Fixed per-layer sparsity (BS / GA / top-k) pruned every forward pass, STE backward."""
    model = ctx.model
    method = STEFixed(p.sparsity, bound=p.bound, eps=p.eps, include=p.include, exclude=p.exclude)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    mask = method.finalize()
    ctx.record("finalized", model)
    _finetune(ctx, model, mask, p.finetune_epochs, p.finetune_lr)
    return ctx.result(model, mask, metrics={"requested_sparsity": p.sparsity})


# -------------------------------------------------------------------------- sparsity_loss


@dataclass
class SparsityLossParams:
    budget: Optional[float] = param(None, check=_fraction, doc="B_p: fraction of the prunable parameters kept")
    budget_flops: Optional[float] = param(None, check=_fraction, doc="B_f: fraction of the FLOPs kept")
    variant: Optional[str] = param(None, choices=VARIANTS,
                                   doc="unconstrained, budget (squared) or hinge (None: budget if one is set)")
    weights: str = param("wavg", choices=WEIGHTS, doc="layer weights c_i: avg, wavg (by parameters), flops")
    lam: float = param(10.0, check=nonnegative, doc="lambda (also lambda_p / lambda_f unless given)")
    lam_p: Optional[float] = param(None, check=nonnegative, doc="lambda_p of the parameter budget")
    lam_f: Optional[float] = param(None, check=nonnegative, doc="lambda_f of the FLOPs budget")
    r_init: Optional[float] = param(None, check=nonnegative, doc="initial r (None: sqrt(2) erfinv(0.6 s_target))")
    r_lr_factor: float = param(0.01, check=nonnegative, doc="lr of r = this x the recipe's lr")
    min_weights: int = param(1000, check=nonnegative, doc="layers with fewer weights are not pruned")
    recenter: bool = param(True, doc="re-centre each weight tensor to zero mean every forward")
    finetune_epochs: int = param(0, check=nonnegative, doc="fine-tuning epochs with the final mask fixed")
    finetune_lr: Optional[float] = param(None, check=positive, doc="fine-tuning lr (None: the recipe's)")
    include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
    exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")


def _budget_sparsity(p: SparsityLossParams) -> Optional[float]:
    return 1.0 - p.budget if p.budget is not None else None


@register_pipeline("sparsity_loss", SparsityLossParams, target=_budget_sparsity)
def run_sparsity_loss(ctx: RunContext, p: SparsityLossParams) -> PipelineResult:
    """Adaptive sparsity loss with per-layer trainable bounds r_i; hard-pruned at the end."""
    model = ctx.model
    method = SparsityLoss(budget=p.budget, budget_flops=p.budget_flops, variant=p.variant, weights=p.weights,
                          lam=p.lam, lam_p=p.lam_p, lam_f=p.lam_f, r_init=p.r_init, r_lr_factor=p.r_lr_factor,
                          min_weights=p.min_weights, recenter=p.recenter, include=p.include, exclude=p.exclude)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    layer_r = {n: round(float(v), 6) for n, v in method.state_dict()["r"].items()}
    # the loss's own Gaussian estimate, reported beside the achieved sparsity (they differ
    # where trained weights are not Gaussian)
    predicted = 1.0 - float(method.predicted_density().detach())
    mask = method.finalize()
    ctx.record("finalized", model)
    _finetune(ctx, model, mask, p.finetune_epochs, p.finetune_lr)
    return ctx.result(model, mask, metrics={"requested_sparsity": _budget_sparsity(p), "budget": p.budget,
                                            "budget_flops": p.budget_flops, "r": layer_r,
                                            "predicted_sparsity": predicted})


# ------------------------------------------------------------------------------------ ltp


@dataclass
class LtpParams:
    lam: float = param(1.0, check=nonnegative, doc="weight of the L0 penalty (normalised by the weight count)")
    T0: float = param(1e-3, check=positive, doc="temperature T_l = T0 var(w_l)")
    tau_lr: Optional[float] = param(None, check=nonnegative, doc="lr of the thresholds (None: the recipe's)")
    init_sparsity: float = param(0.0, check=check_sparsity, doc="per-layer sparsity the thresholds start at")
    relative: bool = param(True, doc="threshold in units of var(w) (scale invariant)")
    trail: List[float] = param(list(DEFAULT_TRAIL), doc="sparsity levels at which a checkpoint is taken")
    pretrain_epochs: int = param(0, check=nonnegative,
                                 doc="dense epochs before LTP starts (the paper prunes trained networks); "
                                     "LTP then trains for train.epochs - pretrain_epochs")
    ltp_lr: Optional[float] = param(None, check=positive, doc="lr of the LTP epochs (None: the recipe's)")
    finetune_epochs: int = param(0, check=nonnegative, doc="fine-tuning epochs with the final mask fixed")
    finetune_lr: Optional[float] = param(None, check=positive, doc="fine-tuning lr (None: the recipe's)")
    include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
    exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")


@register_pipeline("ltp", LtpParams, target=lambda p: None)
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
    method = LTP(lam=p.lam, T0=p.T0, tau_lr=p.tau_lr, init_sparsity=p.init_sparsity, relative=p.relative,
                 trail=p.trail, trail_dir=str(ctx.folder / "trail"), include=p.include, exclude=p.exclude)
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


@dataclass
class DenseEquivalentParams:
    kept_fraction: float = param(check=_fraction, doc="r_c: fraction of the parameters kept")


@register_pipeline("dense_equivalent", DenseEquivalentParams, target=lambda p: 1.0 - p.kept_fraction)
def run_dense_equivalent(ctx: RunContext, p: DenseEquivalentParams) -> PipelineResult:
    """The same architecture with channels x sqrt(kept_fraction), trained from scratch."""
    return _train_thin(ctx, p.kept_fraction, built_on=())


@dataclass
class DenseEquivalentBaselineParams:
    epochs: Optional[int] = param(None, check=positive, doc="training epochs (None: the spec's train.epochs)")


def _train_thin(ctx: RunContext, kept: float, built_on=(), epochs: Optional[int] = None) -> PipelineResult:
    base = ctx.model_kwargs()
    width = equivalent_width(kept, base.get("width", 1.0))
    model = ctx.build_model(width=width)
    ctx.fit(model, "train", epochs=epochs)
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
    result = _train_thin(ctx, kept, built_on=(), epochs=p.epochs)
    result.metrics["main_nonzero_params"] = nonzero
    return result
