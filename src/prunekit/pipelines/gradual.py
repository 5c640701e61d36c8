"""Gradual magnitude pruning as a whole pipeline: train once with GMP (``methods/gmp.py``).

Seed 004 compares IMP with pruning during training at equal total cost; this runs GMP inside
one :func:`prunekit.training.fit` with the dense recipe and reports the same
:class:`~prunekit.pipelines.imp_result.PruneResult` (cost = the epochs of that one training).

    result = pk.pipelines.gmp(pk.models.get("lenet_300_100"), "fashion_mnist",
                              target_sparsity=0.9, recipe={"epochs": 10})
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from ..core.mask import Mask
from ..core.prune import check_sparsity
from ..methods.base import MethodCallback
from ..methods.gmp import GMP
from ..training import fit
from .imp import dense_recipe
from .imp_data import resolve_data
from .imp_result import PruneResult, history_seconds, top1_on
from .imp_stages import Stage


def gmp_steps(epochs: int, steps_per_epoch: int, start_epoch: float, end_epoch: Optional[float],
              prune_every: Optional[int]):
    """``(start_step, end_step, prune_every)`` for a GMP run given in epochs: ``end_epoch``
    defaults to 3/4 of training and ``prune_every`` to a quarter epoch; the end is moved to
    the nearest whole number of pruning intervals (at least one)."""
    end_epoch = 0.75 * epochs if end_epoch is None else end_epoch
    if not 0 <= start_epoch < end_epoch <= epochs:
        raise ValueError(f"GMP needs 0 <= start_epoch < end_epoch <= epochs, got {start_epoch}, {end_epoch}, {epochs}")
    dt = prune_every if prune_every is not None else max(1, steps_per_epoch // 4)
    start = int(round(start_epoch * steps_per_epoch))
    n = max(1, round((end_epoch * steps_per_epoch - start) / dt))
    return start, start + n * dt, dt


def gmp(model: nn.Module, data: Any, target_sparsity: float, *, recipe: Optional[Mapping[str, Any]] = None,
        start_epoch: float = 0.0, end_epoch: Optional[float] = None, prune_every: Optional[int] = None,
        initial_sparsity: float = 0.0, score: str = "magnitude", allocation: str = "global",
        include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
        folder: Optional[Union[str, Path]] = None, seed: int = 0, progress: Optional[bool] = None,
        device: Any = "cpu", model_info: Optional[Mapping[str, Any]] = None) -> PruneResult:
    """Train ``model`` from scratch with the dense ``recipe`` (fit keywords, default
    :data:`~prunekit.pipelines.imp.DENSE_RECIPE`) while GMP prunes it to ``target_sparsity``
    between ``start_epoch`` and ``end_epoch`` (every ``prune_every`` steps); the rest of the
    training runs at the final sparsity. Resumable with ``folder``."""
    target_sparsity = check_sparsity(target_sparsity)
    train, test = resolve_data(data, seed)
    settings = dense_recipe(recipe)
    start, end, dt = gmp_steps(int(settings["epochs"]), len(train), start_epoch, end_epoch, prune_every)
    stage = Stage(Path(folder) if folder is not None else None, "gmp")
    if stage.done():
        saved = stage.load(model.to(device))
        return PruneResult(model, Mask(saved["mask"], model), [json.loads((stage.path / "metrics.json").read_text())],
                           stage.path, [{"stage": "gmp", **r} for r in saved.get("history") or []])
    method = GMP(target_sparsity, end_step=end, start_step=start, prune_every=dt, initial_sparsity=initial_sparsity,
                 score=score, allocation=allocation, include=include, exclude=exclude, seed=seed)
    hist = fit(model, train, test, checkpoint_dir=stage.checkpoints, seed=seed, progress=progress, device=device,
               callbacks=[MethodCallback(method)], recipe={"gmp": [start, end, dt, target_sparsity]}, **settings)
    mask = method.finalize()
    rows = [{"phase": 1, "stage": "gmp", "requested_sparsity": target_sparsity, "sparsity": mask.sparsity(),
             "kept": mask.kept(), "pruned_top1": None,
             "top1": hist[-1].get("test_top1") if hist else top1_on(model, test, device),
             "epochs": int(settings["epochs"]), "seconds": history_seconds(hist),
             "start_step": start, "end_step": end, "prune_every": dt}]
    stage.save(model, mask, rows[0], dict(model_info or {}), dict(settings, steps_per_epoch=len(train)), history=hist)
    return PruneResult(model, mask, rows, stage.path, [{"stage": "gmp", **r} for r in hist])
