"""Plug-in points of the experiments layer: the ``PIPELINES`` and ``BASELINES`` registries.

A *pipeline* is what the ``method:`` key of an experiment spec names: a typed parameters
dataclass plus a run function. A *baseline* is a run derived from a finished main run (the
``baselines:`` list of a spec), e.g. ``random_same_allocation`` keeps the main run's
per-layer kept counts but picks the weights at random. Both are registered by name; a spec
that names an unregistered one gets an error listing the registered names.

Registering a pipeline (what the method issues do)::

    @dataclass(kw_only=True)
    class GmpParams:
        sparsity: float = param(check=valid.sparsity, example=0.9)   # required (no default)
        prune_every: int = param(100, check=valid.positive, doc="steps between pruning steps")

    @register_pipeline("gmp", GmpParams)
    def run_gmp(ctx: RunContext, p: GmpParams) -> PipelineResult:
        model = ctx.model                                       # freshly built, seeded
        ctx.fit(model, "train", callbacks=[...])               # checkpointed, resumable
        return ctx.result(model, mask)

Rules for params dataclasses (they are hashed into run ids, like open_lth's hparams):
fields are plain types (bool, int, float, str, Optional/List/Dict of them); a field without a
default is required (give it an ``example``); **never change a default or a field's meaning
once runs exist**, and add new fields only with a default that reproduces the old behaviour
(defaults are left out of the hash, so old run ids stay valid). ``param`` and the validators
live in :mod:`prunekit.params`; the spec loader runs them, reporting the key path
(``method.params.score``) on error. A pipeline of a during-training method reuses the method's
``Params`` (``class SteFixedParams(FinetuneParams, STEFixed.Params)``) and adds only its own
fields.

This module holds only the registries and their decorators: the run types are in
:mod:`.results`, the built-in pipelines in their own modules, registered by importing
:mod:`prunekit.pipelines` (its ``builtin`` module imports them all).

Requirements: ``requires=("dense",)`` makes the sweep train the dense run of the same data /
model / recipe / seed first (it is shared by every pipeline and baseline asking for it);
``ctx.dense_run()`` then returns it. Baselines implicitly require ``"main"``
(``ctx.main_run()``, also passed as their third argument).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

from .. import params as valid
from ..params import nonnegative, param, positive  # noqa: F401  (re-exported: pipelines import them from here)
from ..registry import Registry
from .results import FinishedRun, PipelineResult, RunContext  # noqa: F401  (re-exported)

check_sparsity = valid.sparsity  # the old name of the sparsity check, kept for importers


def _requested_sparsity(params: Any) -> Optional[float]:
    return getattr(params, "sparsity", None)


@dataclass(frozen=True)
class Pipeline:
    """A registered pipeline. ``target(params)`` gives the requested sparsity (for grouping
    results; default: the ``sparsity`` param, if any); ``target_params`` names the params it is
    computed from (a sweep over them is one method at several sparsities, not several methods)."""

    name: str
    params: type
    run: Callable[[RunContext, Any], PipelineResult]
    requires: Tuple[str, ...] = ()
    target: Callable[[Any], Optional[float]] = _requested_sparsity
    doc: str = ""
    target_params: Tuple[str, ...] = ("sparsity",)


@dataclass(frozen=True)
class Baseline:
    """A registered baseline. ``run(ctx, params, main)`` gets the finished main run;
    ``same_as="dense"`` makes the baseline *be* the dense run (no run of its own)."""

    name: str
    params: type
    run: Optional[Callable[[RunContext, Any, FinishedRun], PipelineResult]] = None
    requires: Tuple[str, ...] = ("main",)
    same_as: Optional[str] = None
    doc: str = ""


PIPELINES: Registry[Pipeline] = Registry("pipeline")
BASELINES: Registry[Baseline] = Registry("baseline")
REQUIREMENTS = ("dense", "main")


def _check_params_class(params: type, what: str) -> None:
    if not dataclasses.is_dataclass(params) or not isinstance(params, type):
        raise TypeError(f"{what}: params must be a dataclass type, got {params!r}")


def register_pipeline(name: str, params: type, requires: Sequence[str] = (),
                      target: Optional[Callable[[Any], Optional[float]]] = None,
                      target_params: Optional[Sequence[str]] = None):
    """Decorator registering ``run(ctx, params) -> PipelineResult`` as pipeline ``name``
    (``target`` / ``target_params``: see ``Pipeline``)."""
    fields = {f.name for f in dataclasses.fields(params)}
    unknown = [t for t in target_params or () if t not in fields]
    if unknown:
        raise ValueError(f"pipeline {name!r}: target_params {unknown} are not fields of {params.__name__}")
    _check_params_class(params, f"pipeline {name!r}")
    bad = [r for r in requires if r not in REQUIREMENTS]
    if bad:
        raise ValueError(f"pipeline {name!r}: unknown requirement(s) {bad}; known: {REQUIREMENTS}")

    def add(fn):
        PIPELINES.register(name)(Pipeline(name, params, fn, tuple(requires),
                                          target or _requested_sparsity, (fn.__doc__ or "").strip(),
                                          tuple(target_params) if target_params is not None else ("sparsity",)))
        return fn

    return add


def register_baseline(name: str, params: type, requires: Sequence[str] = ("main",),
                      same_as: Optional[str] = None):
    """Decorator registering ``run(ctx, params, main) -> PipelineResult`` as baseline ``name``."""
    _check_params_class(params, f"baseline {name!r}")
    requires = tuple(dict.fromkeys(("main", *requires)))
    bad = [r for r in requires if r not in REQUIREMENTS]
    if bad:
        raise ValueError(f"baseline {name!r}: unknown requirement(s) {bad}; known: {REQUIREMENTS}")

    def add(fn):
        BASELINES.register(name)(Baseline(name, params, fn, requires, same_as, (fn.__doc__ or "").strip()))
        return fn

    return add
