"""Pipeline ``structured_budget`` (issue #19): every channel method at a FLOPs or parameter
target, the recipe that keeps reconstruction's head start.

Take the shared dense run, ``prune_to_budget`` (structured/budget.py) it to ``flops_ratio``
(or ``params_ratio``) of its FLOPs (parameters) **kept**, met within one channel step, with
per-layer floors ``min_channels`` / ``max_ratio``; the data-driven methods (thinet, lasso)
calibrate on ``calib_per_class`` training images per class (ThiNet: 10) at ``locations``
sampled positions each, reconstruct towards the dense model's output (He et al.; ``target``),
with ThiNet's per-channel scaling or a full refit (``scale``), within ``memory_mb`` of
statistics, and fine-tune ``layer_finetune_batches`` minibatches at lr ``layer_finetune_lr``
after each pruned layer (ThiNet's layer-wise fine-tuning, shortened). Then fine-tune the
shrunk model ``finetune_epochs`` at a small lr, distilling from the dense model's logits
when ``distill`` > 0 (the weight of the distillation term, temperature ``distill_temperature``).

Metrics: the requested and achieved kept fractions, ``met``, the dense / pruned FLOPs and
parameters, the per-layer widths, the reconstruction memory, the one-shot and final top-1,
latency at batch 1 and 64. ``structure.json`` is written as by ``structured``.

    pipeline: structured_budget
    params: {flops_ratio: 0.5, method: thinet, min_channels: 4, finetune_epochs: 2, distill: 0.7}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..params import fraction_kept, nonnegative, param, positive
from ..structured.budget import ALLOCATIONS, SCALES, TARGETS, calibration_images, channel_methods, prune_to_budget
from ..structured.plan import example_input
from ..training import SCHEDULE_NAMES
from ..training.distill import Distillation
from .registry import register_pipeline
from .results import PipelineResult, RunContext
from .structured_pipelines import save_structure


def _unit_closed(value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"must be in [0, 1], got {value!r}")


def _at_least_one(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"must be an integer >= 1, got {value!r}")


@dataclass
class BudgetParams:
    flops_ratio: Optional[float] = param(None, check=fraction_kept, doc="fraction of the dense FLOPs kept")
    params_ratio: Optional[float] = param(None, check=fraction_kept, doc="fraction of the dense parameters kept")
    method: str = param("l1_filter", choices=channel_methods,
                        doc="channel method: a channel score (l1_filter, bn_scale, random) or thinet / lasso")
    allocation: Optional[str] = param(None, choices=ALLOCATIONS,
                                      doc="uniform or global (default: global for bn_scale, else uniform)")
    min_channels: int = param(1, check=_at_least_one, doc="fewest channels any layer keeps")
    max_ratio: float = param(1.0, check=_unit_closed, doc="largest share of a layer's channels removed")
    calib_per_class: int = param(10, check=_at_least_one, doc="calibration images per class (ThiNet: 10)")
    locations: int = param(10, check=_at_least_one, doc="sampled positions per calibration image (ThiNet: 10)")
    scale: Optional[str] = param(None, choices=SCALES,
                                 doc="channel: ThiNet's per-channel scaling; full: refit filters (default: each paper's)")
    target: str = param("dense", choices=TARGETS, doc="reconstruct towards the dense (He et al.) or pruned output")
    memory_mb: float = param(256.0, check=positive, doc="bound on the reconstruction's statistics + one chunk (MB)")
    layer_finetune_batches: int = param(100, check=nonnegative,
                                        doc="SGD minibatches after each reconstructed layer (ThiNet: layer-wise FT)")
    layer_finetune_lr: float = param(1e-3, check=positive, doc="learning rate of the layer-wise fine-tuning")
    finetune_epochs: int = param(2, check=nonnegative, doc="fine-tuning epochs of the shrunk model")
    finetune_lr: float = param(0.01, check=positive, doc="fine-tuning learning rate (small: keep the head start)")
    finetune_schedule: str = param("cosine", choices=SCHEDULE_NAMES, doc="fine-tuning lr schedule")
    distill: float = param(0.0, check=_unit_closed, doc="weight of distillation from the dense logits (0: off)")
    distill_temperature: float = param(4.0, check=positive, doc="distillation temperature")
    latency_repeats: int = param(5, check=nonnegative, doc="timed forwards per latency figure (0: skip)",
                                 hashed=False)


def layerwise_finetune(loader, batches: int, lr: float):
    """ThiNet's layer-wise fine-tuning, shortened: an ``after_layer(model, name)`` callback for
    :func:`prunekit.structured.prune_to_budget` that runs ``batches`` SGD minibatches of
    ``loader`` at ``lr`` after each pruned layer (the same batches each time)."""
    def after(model: nn.Module, name: str) -> None:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        model.train()
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
    return after


def _layer_finetune(ctx: RunContext, p: BudgetParams):
    if p.layer_finetune_batches == 0:
        return None
    return layerwise_finetune(ctx.train_loader(), p.layer_finetune_batches, p.layer_finetune_lr)


def _target(p: BudgetParams):
    return p.flops_ratio if p.flops_ratio is not None else p.params_ratio


@register_pipeline("structured_budget", BudgetParams, requires=("dense",), target=lambda p: None)
def run_structured_budget(ctx: RunContext, p: BudgetParams) -> PipelineResult:
    """Prune the dense model to a FLOPs / parameter target with any channel method, fine-tune."""
    if (p.flops_ratio is None) == (p.params_ratio is None):
        raise ValueError("structured_budget: set exactly one of flops_ratio, params_ratio (fractions kept)")
    dense = ctx.dense_run()
    model, _ = dense.load()
    model.eval()
    x = example_input(model)
    kwargs = {}
    if p.method in ("thinet", "lasso"):
        loader = ctx.train_loader()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(0)
        kwargs = dict(images=calibration_images(loader, p.calib_per_class, classes=ctx.info.num_classes),
                      locations=p.locations, scale=p.scale, target=p.target,
                      memory_bytes=int(p.memory_mb * 2 ** 20), after_layer=_layer_finetune(ctx, p), seed=ctx.seed)
        torch.manual_seed(ctx.seed)
    res = prune_to_budget(model, x, flops_ratio=p.flops_ratio, params_ratio=p.params_ratio, method=p.method,
                          allocation=p.allocation, min_channels=p.min_channels, max_ratio=p.max_ratio, **kwargs)
    small = res.model
    metrics = save_structure(ctx, model, small, res.plan, p.latency_repeats)
    pruned = ctx.record("pruned", small)
    if p.finetune_epochs > 0:
        kd = Distillation(model, small, p.distill_temperature, p.distill) if p.distill > 0 else None
        try:
            ctx.fit(small, "finetune", epochs=p.finetune_epochs, lr=p.finetune_lr, schedule=p.finetune_schedule,
                    schedule_kwargs={}, **({"loss_fn": kd} if kd is not None else {}))
        finally:
            if kd is not None:
                kd.close()
    summary = res.summary()
    return ctx.result(small, metrics={"requested_sparsity": None, "oneshot_top1": pruned["top1"],
                                      "budget_metric": res.metric, "budget_requested": res.requested,
                                      "budget_achieved": res.achieved, "budget_met": res.met,
                                      "budget_step": res.step, "widths": summary["widths"],
                                      "reconstruction_memory": summary["memory"], "fallbacks": res.fallbacks,
                                      **metrics}, built_on=[dense])
