"""The built-in ``dense`` pipeline and ``dense`` baseline: plain training with the spec's recipe.

The dense run of a data / model / recipe / seed is shared: pipelines that ``require`` it (one-shot,
IMP, structured) and the ``dense`` baseline all point at the same run.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import BASELINES, Baseline, register_pipeline
from .results import PipelineResult, RunContext


@dataclass
class DenseParams:
    """The dense pipeline has no parameters: it trains with the spec's ``train`` recipe."""


@register_pipeline("dense", DenseParams, target=lambda p: 0.0)
def run_dense(ctx: RunContext, p: DenseParams) -> PipelineResult:
    """Train the model densely with the spec's recipe."""
    model = ctx.model
    ctx.fit(model, "train")
    return ctx.result(model)


@dataclass
class DenseBaselineParams:
    """The dense baseline is the dense run itself: no parameters."""


BASELINES.register("dense")(Baseline(
    "dense", DenseBaselineParams, run=None, requires=("dense",), same_as="dense",
    doc="The dense model of the same data, model, recipe and seed (trained once, shared)."))
