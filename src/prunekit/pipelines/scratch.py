"""The "Rethinking the Value of Network Pruning" baselines of structured runs (Liu et al. 2019,
sections 4-6; SPEC section 5). Each takes the main run's pruned *architecture* (its
``structure.json`` plan) and trains it again:

- ``scratch_e``: re-initialised, trained as many epochs E as the large model (the spec's
  ``train.epochs``);
- ``scratch_b``: re-initialised, trained ``E * FLOPs_large / FLOPs_small`` epochs (the same
  compute budget), optionally capped at ``max_ratio * E`` (the paper caps at 2 on ImageNet),
  with the learning-rate schedule stretched to the new length (step/multistep milestones and
  SGDR's T_0 scaled by the epoch ratio: decays at the same fractions of training, as the
  authors' code does; ``stretch_schedule=False`` keeps them at absolute epochs, the
  behaviour before issue #15);
- ``structured_lottery``: the kept channels of the *original* initialisation (the dense run's,
  same seed), trained E epochs (the lottery-ticket comparison, section 6);
- ``uniform_channels``: the architecture of one uniform pruning ratio at the main run's FLOPs,
  trained from scratch like the other architectures of that comparison (seed 001, Sec. 5 and
  Fig. 3, "pruning as architecture search": every architecture there is trained from scratch;
  ``budget`` E or B). ``train="finetune"`` keeps the dense model's L1-selected weights and
  fine-tunes them like the main run, the behaviour before issue #15 (its ``legacy`` value).

"Re-initialised" means a fresh model built from seed ``init_seed`` (default 1000 + the run's
seed), shrunk with the main run's plan: same architecture, new weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import models
from ..structured.plan import apply_structure, example_input, load_plan
from ..structured.select import uniform_for_flops
from ..structured.shrink import shrink
from .budget import ScratchBudgetParams, budget_epochs, scratch_b_epochs, stretched_recipe
from .structured_pipelines import finetune_shrunk, save_structure
from ..params import param, positive
from .registry import register_baseline
from .results import FinishedRun, PipelineResult, RunContext


def _structure(main: FinishedRun):
    return load_plan(main.folder)


def _fresh_shrunk(ctx: RunContext, main: FinishedRun, init_seed: Optional[int]):
    seed = init_seed if init_seed is not None else 1000 + ctx.seed
    torch.manual_seed(seed)
    model = models.get(ctx.spec.model.name, **ctx.model_kwargs())
    return apply_structure(model, _structure(main))


def _train(ctx: RunContext, main: FinishedRun, model, name: str, epochs: int, overrides=None,
           **metrics) -> PipelineResult:
    ctx.record("init", model)
    ctx.fit(model, name, epochs=epochs, **(overrides or {}))
    # A re-trained architecture costs its own epochs plus the main run that found it.
    return ctx.result(model, metrics={"requested_sparsity": main.metrics.get("requested_sparsity"),
                                      "own_epochs": epochs, **metrics}, built_on=[main])


@dataclass
class ScratchEParams:
    epochs: Optional[int] = param(None, check=positive, doc="training epochs (None: the spec's train.epochs)")
    init_seed: Optional[int] = param(None, doc="seed of the fresh initialisation (None: 1000 + the run's seed)")


@dataclass
class ScratchBParams:
    epochs: Optional[int] = param(None, check=positive, doc="the large model's epochs E (None: train.epochs)")
    max_ratio: Optional[float] = param(None, check=positive, doc="cap on FLOPs_large / FLOPs_small (ImageNet: 2)")
    init_seed: Optional[int] = param(None, doc="seed of the fresh initialisation (None: 1000 + the run's seed)")
    # Issue #15 point 1: the authors stretch the schedule; before, milestones stayed absolute.
    stretch_schedule: bool = param(True, legacy=False,
                                   doc="scale step/multistep milestones (and SGDR's T_0) with the epochs, as Liu et al.")


@dataclass
class StructuredLotteryParams(ScratchBudgetParams):
    epochs: Optional[int] = param(None, check=positive, doc="training epochs (None: the spec's train.epochs)")


@dataclass
class UniformChannelsParams(ScratchBudgetParams):
    # Issue #15 point 5: Liu et al. train the uniform architecture from scratch (was: fine-tuned).
    train: str = param("scratch", legacy="finetune", choices=("scratch", "finetune"),
                       doc="scratch: fresh init, E (or Scratch-B) epochs, as seed 001 Fig. 3; finetune: the dense "
                           "model's weights fine-tuned like the main run")
    init_seed: Optional[int] = param(None, doc="train=scratch: seed of the fresh initialisation (None: 1000 + seed)")
    finetune_epochs: Optional[int] = param(None, check=positive, doc="None: the main run's finetune_epochs")
    finetune_lr: Optional[float] = param(None, check=positive, doc="None: the main run's finetune_lr")


@register_baseline("scratch_e", ScratchEParams)
def run_scratch_e(ctx: RunContext, p: ScratchEParams, main: FinishedRun) -> PipelineResult:
    """The main run's pruned architecture, re-initialised, trained E epochs."""
    epochs = p.epochs or int(ctx.recipe["epochs"])
    return _train(ctx, main, _fresh_shrunk(ctx, main, p.init_seed), "scratch_e", epochs)


@register_baseline("scratch_b", ScratchBParams)
def run_scratch_b(ctx: RunContext, p: ScratchBParams, main: FinishedRun) -> PipelineResult:
    """The main run's pruned architecture, re-initialised, trained E * FLOPs ratio epochs."""
    info = _structure(main)
    e = p.epochs or int(ctx.recipe["epochs"])
    epochs = scratch_b_epochs(e, info["dense_flops"], info["flops"], p.max_ratio)
    overrides = stretched_recipe(ctx.recipe, epochs) if p.stretch_schedule else {}
    return _train(ctx, main, _fresh_shrunk(ctx, main, p.init_seed), "scratch_b", epochs, overrides,
                  flops_ratio=info["flops"] / info["dense_flops"], flops_reduction=info["dense_flops"] / info["flops"])


@register_baseline("structured_lottery", StructuredLotteryParams)
def run_structured_lottery(ctx: RunContext, p: StructuredLotteryParams, main: FinishedRun) -> PipelineResult:
    """The kept channels of the original initialisation, trained E epochs."""
    info = _structure(main)
    model = apply_structure(ctx.build_model(), info)
    epochs, overrides = budget_epochs(p, ctx.recipe, info["dense_flops"], info["flops"])
    return _train(ctx, main, model, "structured_lottery", epochs, overrides)


@register_baseline("uniform_channels", UniformChannelsParams, requires=("dense",))
def run_uniform_channels(ctx: RunContext, p: UniformChannelsParams, main: FinishedRun) -> PipelineResult:
    """One uniform ratio at the main run's FLOPs: trained from scratch (default) or fine-tuned."""
    info = _structure(main)
    dense = ctx.dense_run()
    model, _ = dense.load()
    x = example_input(model)
    plan = uniform_for_flops(model, x, info["flops"] / info["dense_flops"])
    small = shrink(model, x, plan)
    sizes = save_structure(ctx, model, small, plan)
    if p.train == "scratch":
        seed = p.init_seed if p.init_seed is not None else 1000 + ctx.seed
        torch.manual_seed(seed)
        fresh = models.get(ctx.spec.model.name, **ctx.model_kwargs())
        fresh = shrink(fresh, example_input(fresh), plan)
        epochs, overrides = budget_epochs(p, ctx.recipe, sizes["dense_flops"], sizes["dense_flops"] * sizes["flops_ratio"])
        result = _train(ctx, main, fresh.to(ctx.device), "uniform_channels", epochs, overrides)
        result.metrics["trained_from"] = "scratch"
        return result
    ctx.record("pruned", small)
    main_params = main.params
    epochs = p.finetune_epochs if p.finetune_epochs is not None else int(main_params.get("finetune_epochs", 40))
    lr = p.finetune_lr if p.finetune_lr is not None else float(main_params.get("finetune_lr", 1e-3))
    finetune_shrunk(ctx, small, epochs, lr, main_params.get("finetune_schedule", "constant"))
    return ctx.result(small, metrics={"requested_sparsity": main.metrics.get("requested_sparsity")},
                      built_on=[dense])

