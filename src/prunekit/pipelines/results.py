"""What pipeline and baseline run functions receive and return: :class:`RunContext` (the
experiments runner implements it), :class:`PipelineResult`, and :class:`FinishedRun` (a
finished run as another run sees it, e.g. the shared dense run)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..artifacts import load_model
from ..core.mask import Mask


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
