"""Structured pruning in experiment specs (seed 001): pipelines ``structured`` and
``slimming``; their baselines are in pipelines/scratch.py.

``structured``: take the shared dense run, choose channels with one selection, ``shrink()``
the model (a physically smaller network), fine-tune it (Li et al.: 40 epochs at lr 1e-3 on
CIFAR) keeping the pruned weights. Exactly one selection:

- ``config``: a predefined configuration (vgg16-a, resnet56-a/b, resnet110-a/b, resnet34-a/b,
  resnet50-thinet-30/50/70) with ``score`` (default l1_filter) choosing the channels inside
  each layer; or one of He et al.'s FLOPs targets (vgg16-5x, resnet50-2x: one ratio over the
  layers they prune, found for the model's input size; with ``selection: lasso`` that is their
  method);
- ``ratio``: the same ratio for every prunable layer (uniform);
- ``fraction``: one global threshold over the scores removes this share of the channels
  (with ``score: bn_scale`` that is network slimming's rule);
- ``flops_ratio``: the uniform ratio keeping this fraction of the FLOPs.

With ``selection: thinet`` or ``lasso`` (and ``config`` or ``ratio``) the channels of each
layer are chosen from activations of 10 training images per class at sampled positions and
the next layer is reconstructed towards the unpruned model's output (ThiNet: per-channel
scaling; LASSO: full least-squares refit), layer by layer (structured/budget.py's
``reconstruct``) instead of by ``score``. At a FLOPs target: pipeline ``structured_budget``.

``sss``: sparse structure selection (Huang & Wang 2018; methods/sss.py): train from scratch
with a scaling factor on every residual block (or BN channel) under a proximal L1 step, drop
the blocks (channels) whose factor reached 0, fine-tune. ``structure.json`` records the
removed blocks, so Scratch-E/B rebuild the same architecture.

``slimming``: train from scratch with the L1 penalty on BN gammas (methods/slimming.py) using
the spec's recipe, prune ``fraction`` of the channels by one |gamma| threshold, shrink,
fine-tune. Its "large model" is its own training, so Scratch-E/B count from it.

Both write ``structure.json`` (the plan and the sizes: structured/plan.py) so that the
baselines (scratch_e, scratch_b, structured_lottery, uniform_channels) can rebuild the
architecture, and report ``params``/``flops`` of the shrunk model (the runner counts them),
``dense_params``/``dense_flops``, the ratios, and measured CPU latency at batch 1 and 64.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ..core.accounting import flops_per_module
from ..methods.base import MethodCallback
from ..methods.slimming import Slimming
from ..methods.sss import SSS
from ..params import fraction_removed, nonnegative, param, positive
from ..structured import select
from ..structured.configs import FLOPS_TARGETS, PREDEFINED, predefined_ratios
from ..structured.latency import compare
from ..structured.plan import example_input, save_plan
from ..structured.budget import calibration_images, reconstruct
from ..structured.scores import CHANNEL_SCORES
from ..structured.shrink import out_channels, shrink
from ..training import SCHEDULE_NAMES
from .registry import register_pipeline
from .results import PipelineResult, RunContext


CONFIGS = (*PREDEFINED, *FLOPS_TARGETS)


def _predefined(value) -> None:
    if value is not None and value.lower() not in CONFIGS:
        raise ValueError(f"unknown predefined configuration {value!r}; known: {', '.join(CONFIGS)}")


def config_ratios(name: str, model, x) -> Dict[str, float]:
    """``{layer: ratio}`` of a predefined configuration or of a FLOPs target (at ``x``'s size)."""
    if name.lower() in FLOPS_TARGETS:
        return select.flops_target_ratios(name, model, x)
    return predefined_ratios(name, model)


def _score_names():
    return CHANNEL_SCORES.names()


def save_structure(ctx: RunContext, dense, small, plan: Dict[str, List[int]], latency_repeats: int = 0,
                   removed_blocks: Sequence[str] = (), removed_inputs: Optional[Dict[str, List[int]]] = None) -> Dict:
    """Write ``structure.json`` and return the size (and latency) metrics of ``small``
    (``removed_inputs``: slimming's channel selections on pre-activation models)."""
    shape = getattr(dense, "input_shape", None) or (ctx.info.in_channels, *ctx.info.image_size)
    f0, f1 = flops_per_module(dense, shape)[1], flops_per_module(small, shape)[1]
    p0, p1 = (sum(p.numel() for p in m.parameters()) for m in (dense, small))
    info = {"dense_flops": f0, "flops": f1, "dense_params": p0, "params": p1}
    extra = {"removed_inputs": {k: [int(i) for i in v] for k, v in removed_inputs.items()}} if removed_inputs else {}
    save_plan(ctx.folder, plan, removed_blocks=list(removed_blocks), **extra, **info)
    # *_ratio: the fraction kept (the convention of every *_ratio; records before it stored
    # dense / shrunk here: read them with core.accounting.kept_fraction); *_reduction: "x fewer"
    metrics = {"dense_flops": f0, "dense_params": p0, "flops_ratio": f1 / f0, "params_ratio": p1 / p0,
               "flops_reduction": f0 / f1, "params_reduction": p0 / p1,
               "channels_removed": sum(len(v) for v in plan.values()), "blocks_removed": len(removed_blocks),
               **({"inputs_removed": sum(len(v) for v in removed_inputs.values())} if removed_inputs else {})}
    if latency_repeats:
        lat = compare(dense, small, shape, repeats=latency_repeats)
        metrics.update({k: v for k, v in lat.items() if k.startswith(("latency", "speedup"))})
    return metrics


def finetune_shrunk(ctx: RunContext, model, epochs: int, lr: float, schedule: str) -> None:
    """Fine-tune the shrunk model, keeping its weights (phase "finetune", resumable)."""
    if epochs > 0:
        ctx.fit(model, "finetune", epochs=epochs, lr=lr, schedule=schedule, schedule_kwargs={})


@dataclass
class StructuredParams:
    config: Optional[str] = param(None, check=_predefined, doc="predefined configuration (vgg16-a, ..., vgg16-5x)")
    ratio: Optional[float] = param(None, check=fraction_removed, doc="the same pruning ratio in every prunable layer")
    fraction: Optional[float] = param(None, check=fraction_removed, doc="share of channels removed by one global threshold")
    flops_ratio: Optional[float] = param(None, check=positive, doc="uniform ratio keeping this fraction of FLOPs")
    score: str = param("l1_filter", choices=_score_names, doc="channel score (l1_filter, bn_scale, random)")
    selection: str = param("score", choices=("score", "thinet", "lasso"),
                           doc="per-layer choice: by score, or ThiNet / LASSO with least-squares refit (config/ratio)")
    # Issue #15 point 7: Li et al. / Liu et al. fine-tune 40 epochs at 1e-3 (the default was 1).
    finetune_epochs: int = param(40, legacy=1, check=nonnegative, doc="fine-tuning epochs (Li et al.: 40)")
    finetune_lr: float = param(1e-3, check=positive, doc="fine-tuning learning rate (Li et al.: 1e-3)")
    finetune_schedule: str = param("constant", choices=SCHEDULE_NAMES, doc="fine-tuning lr schedule")
    latency_repeats: int = param(5, check=nonnegative, doc="timed forwards per latency figure (0: skip)",
                                 hashed=False)


def _structured_target(p: StructuredParams) -> Optional[float]:
    return p.ratio if p.ratio is not None else p.fraction


def structured_plan(model, x, p: StructuredParams) -> Dict[str, List[int]]:
    """The channels ``p`` removes from ``model`` (exactly one selection must be set)."""
    chosen = [k for k in ("config", "ratio", "fraction", "flops_ratio") if getattr(p, k) is not None]
    if len(chosen) != 1:
        raise ValueError(f"structured: set exactly one of config, ratio, fraction, flops_ratio (got {chosen or 'none'})")
    if p.config is not None:
        return select.by_ratios(model, config_ratios(p.config, model, x), p.score)
    if p.ratio is not None:
        return select.by_ratios(model, select.uniform_ratios(model, p.ratio), p.score)
    if p.fraction is not None:
        return select.global_fraction(model, p.fraction, p.score)
    return select.uniform_for_flops(model, x, p.flops_ratio, p.score)


def _reconstructed(ctx: RunContext, model, p: StructuredParams):
    """ThiNet / LASSO layer by layer on one seeded training batch (structured/reconstruct.py)."""
    if p.config is not None:
        ratios = config_ratios(p.config, model, example_input(model))
    elif p.ratio is not None:
        ratios = select.uniform_ratios(model, p.ratio)
    else:
        raise ValueError(f"structured: selection {p.selection!r} needs config or ratio (per-layer ratios)")
    # -- issue #15 point 4 (structured/budget.py): the papers' recipe -- 10 calibration images
    # per class at sampled positions, reconstruction towards the unpruned model's output (He et
    # al.), ThiNet's per-channel scaling / LASSO's full refit, streamed statistics.
    loader = ctx.train_loader()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    images = calibration_images(loader, 10, classes=ctx.info.num_classes)
    torch.manual_seed(ctx.seed)
    widths = {n: out_channels(dict(model.named_modules())[n]) for n in ratios}
    removes = {n: widths[n] - max(1, int(widths[n] * (1.0 - r) + 1e-9)) for n, r in ratios.items()}
    small, plan, _, _ = reconstruct(model, example_input(model), removes, images, p.selection, seed=ctx.seed)
    return small, plan


@register_pipeline("structured", StructuredParams, requires=("dense",), target=_structured_target,
                   target_params=("ratio", "fraction"))
def run_structured(ctx: RunContext, p: StructuredParams) -> PipelineResult:
    """Choose channels of the shared dense model, shrink it, fine-tune the smaller model."""
    dense = ctx.dense_run()
    model, _ = dense.load()
    x = example_input(model)
    if p.selection == "score":
        plan = structured_plan(model, x, p)  # deterministic in the dense weights: a resume recomputes it
        small = shrink(model, x, plan)
    else:
        small, plan = _reconstructed(ctx, model, p)
    metrics = save_structure(ctx, model, small, plan, p.latency_repeats)
    pruned = ctx.record("pruned", small)
    finetune_shrunk(ctx, small, p.finetune_epochs, p.finetune_lr, p.finetune_schedule)
    return ctx.result(small, metrics={"requested_sparsity": _structured_target(p), "oneshot_top1": pruned["top1"],
                                      **metrics}, built_on=[dense])


@dataclass(kw_only=True)
class SlimmingParams(Slimming.Params):
    """The method's parameters (``Slimming.Params``; here ``fraction`` is required) plus
    fine-tuning of the shrunk model."""

    fraction: float = param(check=fraction_removed, example=0.4,
                            doc="share of channels removed by the global |gamma| threshold")
    finetune_epochs: int = param(40, legacy=1, check=nonnegative, doc="fine-tuning epochs after pruning (Liu et al.: 40)")
    finetune_lr: float = param(1e-3, check=positive, doc="fine-tuning learning rate")
    finetune_schedule: str = param("constant", choices=SCHEDULE_NAMES, doc="fine-tuning lr schedule")
    latency_repeats: int = param(5, check=nonnegative, doc="timed forwards per latency figure (0: skip)",
                                 hashed=False)


@register_pipeline("slimming", SlimmingParams, target=lambda p: p.fraction, target_params=("fraction",))
def run_slimming(ctx: RunContext, p: SlimmingParams) -> PipelineResult:
    """Network slimming: train with L1 on BN gammas, threshold globally, shrink, fine-tune."""
    model = ctx.model
    method = Slimming.from_params(p)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    if method.model is None:  # a finished training restored from its checkpoint: nothing attached it
        method.attach(model, torch.optim.SGD(model.parameters(), lr=0.0))
    ctx.record("trained", model)
    dense = copy.deepcopy(model)
    method.finalize()
    small = method.shrunk()
    metrics = save_structure(ctx, dense, small, method.channels(), p.latency_repeats,
                             removed_inputs=method.inputs())
    pruned = ctx.record("pruned", small)
    finetune_shrunk(ctx, small, p.finetune_epochs, p.finetune_lr, p.finetune_schedule)
    return ctx.result(small, metrics={"requested_sparsity": p.fraction, "oneshot_top1": pruned["top1"], **metrics})


@dataclass(kw_only=True)
class SSSParams(SSS.Params):
    """The method's parameters (``SSS.Params``) plus fine-tuning of the shrunk model."""

    finetune_epochs: int = param(40, legacy=1, check=nonnegative, doc="fine-tuning epochs after removal (as Liu et al.: 40)")
    finetune_lr: float = param(1e-3, check=positive, doc="fine-tuning learning rate")
    finetune_schedule: str = param("constant", choices=SCHEDULE_NAMES, doc="fine-tuning lr schedule")
    latency_repeats: int = param(5, check=nonnegative, doc="timed forwards per latency figure (0: skip)",
                                 hashed=False)


@register_pipeline("sss", SSSParams, target=lambda p: None)
def run_sss(ctx: RunContext, p: SSSParams) -> PipelineResult:
    """Sparse structure selection: train with factors under L1, remove zero-factor blocks, fine-tune."""
    model = ctx.model
    shape = getattr(model, "input_shape", None) or (ctx.info.in_channels, *ctx.info.image_size)
    method = SSS.from_params(p, input_shape=shape)
    ctx.fit(model, "train", callbacks=[MethodCallback(method)])
    if method.model is None:  # a finished training restored from its checkpoint: attach to apply its state
        method.attach(model, torch.optim.SGD(model.parameters(), lr=0.0))
    method.finalize()  # the factors folded in: same outputs, plain modules, zeroed blocks
    dense = copy.deepcopy(model)
    ctx.record("trained", model)
    small = method.shrunk()
    structure = method.removal()
    metrics = save_structure(ctx, dense, small, structure["plan"], p.latency_repeats, structure["removed_blocks"])
    pruned = ctx.record("pruned", small)
    finetune_shrunk(ctx, small, p.finetune_epochs, p.finetune_lr, p.finetune_schedule)
    return ctx.result(small, metrics={"requested_sparsity": None, "oneshot_top1": pruned["top1"],
                                      **method.metrics(), **metrics})
