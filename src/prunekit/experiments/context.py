"""The run context a pipeline receives (the concrete :class:`prunekit.pipelines.RunContext`).

It owns what every pipeline would otherwise repeat: building the seeded model and the
loaders, training through ``fit`` with a per-phase checkpoint folder (so a killed run resumes
where it stopped), collecting the per-epoch history and the trail, and finding or running the
runs a pipeline builds on (the shared dense run, a baseline's main run).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .. import data as datasets, models, training
from ..core.accounting import count_parameters
from ..data import FileLoader, Loader
from ..data import make_loaders as build_loaders
from ..device import resolve as resolve_device
from ..training import evaluate
from ..pipelines.results import FinishedRun, PipelineResult, RunContext
from .project import Project
from .spec import DataSpec, RunSpec, to_dict

# Datasets stay in memory between runs of one process (a sweep worker runs many): loading
# Fashion-MNIST again for each of 100 runs would cost more than some of the runs.
_SPLITS: "OrderedDict[Tuple[str, Optional[str]], Any]" = OrderedDict()
_SPLITS_KEPT = 2
_PHASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def dataset_splits(data: DataSpec):
    """``prunekit.data.load`` of the spec's dataset, cached per process."""
    key = (data.name, data.data_dir)
    if key not in _SPLITS:
        _SPLITS[key] = datasets.load(data.name, data_dir=data.data_dir)
        while len(_SPLITS) > _SPLITS_KEPT:
            _SPLITS.popitem(last=False)
    _SPLITS.move_to_end(key)
    return _SPLITS[key]


def make_loaders(data: DataSpec, seed: int):
    """Train and test loaders as ``prunekit.data.loaders`` builds them, from cached splits."""
    splits = dataset_splits(data)
    train = splits.train
    if data.train_subset is not None:
        train = train.subset(data.train_subset, seed)
    return build_loaders(train, splits.test, splits.info, data.batch_size, data.test_batch_size,
                         seed=seed, augment=data.augment, workers=data.workers, name=data.name)


class Context(RunContext):
    """See :class:`prunekit.pipelines.RunContext` for the contract."""

    def __init__(self, project: Project, spec: RunSpec, progress: bool,
                 run_required: Callable[[RunSpec], Any]):
        self.spec = spec
        self.project = project
        self.folder: Path = project.run_folder(spec.id)
        self.seed = spec.seed
        self.progress = progress
        self._run_required = run_required
        self.train, self.test, self.info = make_loaders(spec.data, spec.seed)
        self.device = resolve_device()  # --device / $PRUNEKIT_DEVICE; not part of the run id
        self.recipe = spec.train.fit_kwargs()
        self.history: list = []
        self.trail: list = []
        self.epochs = 0
        self.steps = 0
        self._phases: set = set()
        self._model = None

    # -- models
    @property
    def model(self):
        if self._model is None:
            self._model = self.build_model()
        return self._model

    def model_kwargs(self, **overrides) -> Dict[str, Any]:
        m = self.spec.model
        return {"num_classes": self.info.num_classes, "in_channels": self.info.in_channels,
                "width": m.width, **m.kwargs, **overrides}

    def build_model(self, **overrides):
        torch.manual_seed(self.seed)  # the same seed gives the same initial weights (built on CPU)
        return models.get(self.spec.model.name, **self.model_kwargs(**overrides)).to(self.device)

    # -- data
    def train_loader(self, subset: Optional[int] = None):
        if subset is None or subset >= self.train.num_samples:
            return self.train
        base = self.train
        if isinstance(base, FileLoader):
            return FileLoader(base.dataset.subset(subset, self.seed), base.info, batch_size=base.batch_size,
                              train=True, workers=base.workers, seed=self.seed, augment=base.augment)
        return Loader(base.dataset.subset(subset, self.seed), base.info, batch_size=base.batch_size,
                      shuffle=True, augment=base.augment, seed=self.seed)

    # -- training
    def fit(self, model, phase: str, *, epochs: Optional[int] = None, callbacks: Sequence = (),
            train=None, **overrides):
        if not _PHASE_RE.match(phase):
            raise ValueError(f"phase names a folder: use letters, digits, '_', '.', '-' (got {phase!r})")
        if phase in self._phases:
            raise ValueError(f"phase {phase!r} is used twice in run {self.spec.id}; give each fit its own name")
        self._phases.add(phase)
        kwargs = {**self.recipe, **overrides}
        if epochs is not None:
            kwargs["epochs"] = epochs
        loader = self.train if train is None else train
        # The data description goes into the checkpoint's recipe: resuming with other data
        # is refused by fit rather than silently mixed.
        # training.fit is looked up at call time, so a test can swap it (tests/test_device.py).
        history = training.fit(model, loader, self.test, callbacks=list(callbacks), seed=self.seed,
                               checkpoint_dir=self.folder / "checkpoints" / phase, resume=True,
                               progress=self.progress, device=self.device,
                               recipe={"phase": phase, "data": to_dict(self.spec.data, canonical=True),
                                       "train_samples": getattr(loader, "num_samples", None)},
                               **kwargs)
        self.history.extend({"phase": phase, **row} for row in history)
        self.epochs += int(kwargs["epochs"])
        self.steps += int(history[-1]["step"]) if len(history) else 0
        return history

    def record(self, phase: str, model, **values) -> Dict[str, Any]:
        result = evaluate(model, self.test, device=self.device)
        counts = count_parameters(model)
        prunable = counts["prunable"]
        point = {"phase": phase,
                 "sparsity": 1.0 - counts["prunable_nonzero"] / prunable if prunable else 0.0,
                 "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
                 "nonzero_params": counts["nonzero"], **values}
        self.trail.append(point)
        return point

    # -- other runs
    def requirement(self, name: str) -> FinishedRun:
        spec = self.spec.requirement(name)
        if self.project.is_done(spec.id) and not self.project.has_model(spec.id):
            # kept without its model (records-only folder): this run needs the weights, so rerun it
            self.project.set_aside(spec.id, suffix=".no-model")
        if not self.project.is_done(spec.id):
            outcome = self._run_required(spec)  # normally the sweep ran it already
            if getattr(outcome, "status", None) in ("failed", "diverged"):
                raise RuntimeError(f"the {name} run {spec.id} this run needs failed: {outcome.error}")
        record = self.project.read_record(spec.id)
        return FinishedRun(spec.id, self.project.run_folder(spec.id), spec.to_dict(), record["metrics"],
                           device=self.device)

    def result(self, model, mask=None, metrics: Optional[Dict[str, Any]] = None,
               built_on: Sequence[FinishedRun] = ()) -> PipelineResult:
        return PipelineResult(
            model=model, mask=mask, metrics=dict(metrics or {}), history=list(self.history),
            trail=list(self.trail),
            epochs=self.epochs + sum(r.metrics.get("epochs") or 0 for r in built_on),
            steps=self.steps + sum(r.metrics.get("steps") or 0 for r in built_on))
