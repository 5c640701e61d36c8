"""Plug-in points of the experiments layer: the ``PIPELINES`` and ``BASELINES`` registries.

A *pipeline* is what the ``method:`` key of an experiment spec names: a typed parameters
dataclass plus a run function. A *baseline* is a run derived from a finished main run (the
``baselines:`` list of a spec), e.g. ``random_same_allocation`` keeps the main run's
per-layer kept counts but picks the weights at random. Both are registered by name; a spec
that names an unregistered one gets an error listing the registered names.

Registering a pipeline (what the method issues do)::

    @dataclass
    class GmpParams:
        sparsity: float = param(check=check_sparsity)          # required (no default)
        prune_every: int = param(100, check=positive, doc="steps between pruning steps")

    @register_pipeline("gmp", GmpParams)
    def run_gmp(ctx: RunContext, p: GmpParams) -> PipelineResult:
        model = ctx.model                                       # freshly built, seeded
        ctx.fit(model, "train", callbacks=[...])               # checkpointed, resumable
        return ctx.result(model, mask)

Rules for params dataclasses (they are hashed into run ids, like open_lth's hparams):
fields are plain types (bool, int, float, str, Optional/List/Dict of them); a field without a
default is required; **never change a default or a field's meaning once runs exist**, and add
new fields only with a default that reproduces the old behaviour (defaults are left out of the
hash, so old run ids stay valid). ``param(..., choices=, check=)`` attaches validation that the
spec loader runs, reporting the key path (``method.params.score``) on error.

Requirements: ``requires=("dense",)`` makes the sweep train the dense run of the same data /
model / recipe / seed first (it is shared by every pipeline and baseline asking for it);
``ctx.dense_run()`` then returns it. Baselines implicitly require ``"main"``
(``ctx.main_run()``, also passed as their third argument).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..registry import Registry

# ------------------------------------------------------------------------- validators


def param(default: Any = dataclasses.MISSING, *, choices: Optional[Callable[[], Iterable[str]] | Iterable[str]] = None,
          check: Optional[Callable[[Any], Any]] = None, doc: str = "", hashed: bool = True) -> Any:
    """A dataclass field with validation metadata read by the spec loader.

    ``choices``: the accepted values (or a function returning them, so registries are read at
    load time); ``check(value)`` raises ``ValueError`` for a bad value; ``hashed=False`` keeps
    a display-only field out of the run id. Mutable defaults (lists, dicts) are copied.
    """
    meta = {"choices": choices, "check": check, "doc": doc, "hash": hashed}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def positive(value: Any) -> None:
    """Check: a number > 0 (None passes: it means "not set")."""
    if value is not None and not value > 0:
        raise ValueError(f"must be > 0, got {value!r}")


def nonnegative(value: Any) -> None:
    """Check: a number >= 0 (None passes)."""
    if value is not None and not value >= 0:
        raise ValueError(f"must be >= 0, got {value!r}")


def check_sparsity(value: Any) -> None:
    """Check: a sparsity in [0, 1) (the fraction of prunable weights removed)."""
    from ..core.prune import check_sparsity as check

    check(value)


# ---------------------------------------------------------------------- what runs get


@dataclass
class PipelineResult:
    """What a pipeline or baseline returns.

    - ``model``: the final model (pruned weights are exact zeros); the runner evaluates it,
      counts parameters/FLOPs and saves it.
    - ``mask``: its :class:`prunekit.Mask`, when the method produces one (kept in model.pt;
      baselines such as random_same_allocation read it).
    - ``metrics``: extra numbers (``requested_sparsity``, ``oneshot_top1``, ...).
    - ``history``: per-epoch rows, each with a ``phase`` key (what ``ctx.fit`` recorded).
    - ``trail``: one row per phase end / pruning round (``ctx.record``): the sparsity/accuracy
      path an iterative method walks.
    - ``epochs`` / ``steps``: the training cost of the result *including* the runs it built
      on (a one-shot model counts the dense training too: seed 004 compares methods by total
      cost).
    - ``model_kwargs``: how to rebuild the final model with ``prunekit.models.get`` when it
      is not the spec's model (e.g. a thinner dense-equivalent); None: the spec's.
    """

    model: Any
    mask: Any = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)
    trail: List[Dict[str, Any]] = field(default_factory=list)
    epochs: float = 0
    steps: int = 0
    model_kwargs: Optional[Dict[str, Any]] = None


@dataclass
class FinishedRun:
    """A finished run's folder, as another run sees it (``ctx.dense_run()``/``main_run()``).

    ``spec`` is its resolved spec (a plain dict, every field present); ``metrics`` the numbers
    the runner recorded (top1, achieved_sparsity, nonzero_params, epochs, steps, ...).
    """

    id: str
    folder: Path
    spec: Dict[str, Any]
    metrics: Dict[str, Any]
    device: Any = "cpu"

    def load(self):
        """A fresh copy of its final model (on ``device``) and mask: ``(model, Mask or None)``."""
        from ..artifacts import load_model
        from ..core.mask import Mask

        model, data = load_model(self.folder / "model.pt", device=self.device)
        mask = Mask(data["mask"], model) if data.get("mask") else None
        return model, mask

    @property
    def params(self) -> Dict[str, Any]:
        """The method parameters it ran with (every field, defaults included)."""
        return dict(self.spec.get("method", {}).get("params") or {})


class RunContext:
    """What a run function receives; the experiments runner provides the implementation.

    Attributes: ``spec`` (the run's spec), ``folder`` (its run folder: put extra files here),
    ``seed``, ``model`` (built from the spec on first access, seeded), ``train``/``test``
    (loaders), ``info`` (the dataset's DatasetInfo), ``recipe`` (the spec's training recipe as
    :func:`prunekit.training.fit` keywords), ``progress`` (show progress bars).
    """

    spec: Any
    folder: Path
    seed: int
    train: Any
    test: Any
    info: Any
    recipe: Dict[str, Any]
    progress: bool

    @property
    def model(self):
        raise NotImplementedError

    def build_model(self, **overrides):
        """A freshly initialised model of the spec (``overrides`` e.g. ``width=``), seeded."""
        raise NotImplementedError

    def model_kwargs(self, **overrides) -> Dict[str, Any]:
        """The ``prunekit.models.get`` keywords of the spec's model (plus ``overrides``)."""
        raise NotImplementedError

    def fit(self, model, phase: str, *, epochs: Optional[int] = None, callbacks: Sequence = (),
            train=None, **overrides):
        """Train ``model`` with the spec's recipe (``overrides`` replace any fit keyword).

        Checkpoints go to ``folder/checkpoints/<phase>``, so an interrupted run resumes
        there; the epochs are added to the run's history under ``phase`` (unique per run).
        Returns fit's History.
        """
        raise NotImplementedError

    def train_loader(self, subset: Optional[int] = None):
        """The training loader, or one over a seeded subset of ``subset`` images."""
        raise NotImplementedError

    def requirement(self, name: str) -> FinishedRun:
        """A finished required run (``"dense"``, ``"main"``), run first if missing."""
        raise NotImplementedError

    def dense_run(self) -> FinishedRun:
        return self.requirement("dense")

    def main_run(self) -> FinishedRun:
        return self.requirement("main")

    def record(self, phase: str, model, **values) -> Dict[str, Any]:
        """Evaluate ``model`` now and append a trail point (phase, sparsity, top1, ...)."""
        raise NotImplementedError

    def result(self, model, mask=None, metrics: Optional[Dict[str, Any]] = None,
               built_on: Sequence[FinishedRun] = ()) -> PipelineResult:
        """A PipelineResult from what ``fit``/``record`` logged; the cost (epochs, steps) of
        the ``built_on`` runs is added to this run's own."""
        raise NotImplementedError


# -------------------------------------------------------------------------- registries


def _requested_sparsity(params: Any) -> Optional[float]:
    return getattr(params, "sparsity", None)


@dataclass(frozen=True)
class Pipeline:
    """A registered pipeline. ``target(params)`` gives the requested sparsity (for grouping
    results; default: the ``sparsity`` param, if any)."""

    name: str
    params: type
    run: Callable[[RunContext, Any], PipelineResult]
    requires: Tuple[str, ...] = ()
    target: Callable[[Any], Optional[float]] = _requested_sparsity
    doc: str = ""


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
                      target: Optional[Callable[[Any], Optional[float]]] = None):
    """Decorator registering ``run(ctx, params) -> PipelineResult`` as pipeline ``name``."""
    _check_params_class(params, f"pipeline {name!r}")
    bad = [r for r in requires if r not in REQUIREMENTS]
    if bad:
        raise ValueError(f"pipeline {name!r}: unknown requirement(s) {bad}; known: {REQUIREMENTS}")

    def add(fn):
        PIPELINES.register(name)(Pipeline(name, params, fn, tuple(requires),
                                          target or _requested_sparsity, (fn.__doc__ or "").strip()))
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


# ------------------------------------------------------------------ built-in: dense


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


# Built-in pipelines and baselines in their own modules (imported last: they use the above).
from . import oneshot as _oneshot  # noqa: E402,F401  (registers oneshot, random_same_allocation)
