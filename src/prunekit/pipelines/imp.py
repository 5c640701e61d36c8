"""Iterative magnitude pruning (IMP) with retraining schedules and weight rewinding.

Han et al. (2015) and Zimmer et al., "Back to Basics: Efficient Network Compression via IMP"
(seed 004, section 2): train dense, then J phases of {prune a fraction p = 1 - (1-s)^(1/J) of
the remaining weights -> retrain T_r epochs}. After phase j of J, exactly
``round(N (1-s)^(j/J))`` of the N prunable weights are kept (SPEC.md section 2), so the last
phase lands on the target sparsity s exactly. Any score x allocation of the core prunes
(global magnitude by default; LAMP = score "lamp"; ERK = allocation "erk").

    import prunekit as pk
    result = pk.pipelines.imp(pk.models.get("lenet_300_100"), "fashion_mnist",
                              target_sparsity=0.9, phases=3, retrain_epochs=2,
                              schedule="slr", folder="runs/imp")
    result.model, result.mask, result.history      # history: one row per phase (0 = dense)
    result.total_epochs, result.total_seconds       # the whole cost, dense training included

Retraining learning rates: :mod:`.retrain_schedules` (ft, lrw, slr, clr, llr, allr). With
``rewind=k`` the survivors are reset to their values at iteration k of the dense training after
each pruning step and the phase replays the original schedule from k (lottery tickets,
:mod:`.rewind`); the retraining schedule and T_r then do not apply.

With ``folder``, every stage lives in its own subfolder (``dense/``, ``phase_01/`` ...) holding
its model file (``model.pt``, a prunekit model file with the mask), ``mask.pt``,
``metrics.json`` and fit's epoch checkpoints: a rerun skips the finished phases and resumes the
unfinished one from its last epoch.

Modules: the loop and the lottery-ticket training are here (they share ``masked_fit``);
``imp_result`` (``PruneResult``), ``imp_data`` (loaders), ``imp_stages`` (stage folders).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .. import distributed
from ..core.mask import Mask, carried_keep
from ..core.prune import check_sparsity, prune
from ..core.targets import prunable_parameters
from ..training import fit
from ..training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .finetune import EnforceMask
# Results, data and stage folders have their own modules; their public names stay importable
# from here.
from .imp_data import ContinuedLoader, resolve_data  # noqa: F401
from .imp_result import PruneResult, history_seconds, top1_on  # noqa: F401
from .imp_stages import Stage, write_json
from .retrain_schedules import (OriginalSchedule, allr_peak, check_retrain_schedule, relative_change,
                                retrain_schedule)
from .rewind import RewindPoint, replay_schedule, rewind as rewind_to

# The dense recipe used when none is given: the team's Fashion-MNIST LeNet recipe.
DENSE_RECIPE: Dict[str, Any] = {"epochs": 8, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                                "weight_decay": 5e-4, "schedule": "cosine"}
# The optimizer settings a retraining phase takes over from the dense recipe.
OPTIMIZER_KEYS = ("optimizer", "momentum", "nesterov", "weight_decay", "optimizer_kwargs")
FIT_KEYS = ("epochs", "lr", "schedule", "schedule_kwargs", *OPTIMIZER_KEYS)


# ------------------------------------------------------------------------------ helpers


def phase_sparsity(target: float, phase: int, phases: int) -> float:
    """Sparsity after ``phase`` of ``phases``: ``1 - (1 - target)^(phase/phases)`` (the last
    phase returns ``target`` itself, so it is hit exactly)."""
    if phase == phases:
        return float(target)
    return 1.0 - (1.0 - target) ** (phase / phases)


def dense_recipe(recipe: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The fit keywords of the dense training: :data:`DENSE_RECIPE` updated with ``recipe``."""
    out = dict(DENSE_RECIPE)
    out.update({k: v for k, v in (recipe or {}).items() if k in FIT_KEYS})
    return out


def masked_fit(model: nn.Module, mask: Mask, train: Iterable, test: Optional[Iterable], epochs: int,
               schedule, optimizer_settings: Mapping[str, Any], *, checkpoint_dir: Optional[Path], seed: int,
               progress: Optional[bool], device: Any, recipe: Optional[Dict[str, Any]] = None):
    """Train with ``mask`` enforced; ``schedule`` gives absolute learning rates (base lr 1)."""
    settings = {k: v for k, v in optimizer_settings.items() if k in OPTIMIZER_KEYS}
    return fit(model, train, test, epochs=epochs, lr=1.0, schedule=schedule, callbacks=[EnforceMask(mask)],
               checkpoint_dir=checkpoint_dir, seed=seed, progress=progress, device=device, recipe=recipe,
               **settings)


@dataclass(frozen=True)
class PhasePlan:
    """The settings every pruning phase of one IMP run shares (``imp``'s arguments, grouped so
    that ``_phase`` takes one object instead of a dozen keywords)."""

    target_sparsity: float
    phases: int
    retrain_epochs: int
    schedule: str
    score: str
    allocation: str
    include: Optional[Sequence[str]]
    exclude: Optional[Sequence[str]]
    rewind: Optional[int]
    seed: int
    progress: Optional[bool]
    device: Any


# ------------------------------------------------------------------------- dense stage


def _train_dense(model, train, test, recipe, rewind_step, stage: Stage, seed, progress, device, model_info):
    """Train dense (resumable); returns (history row, full recipe, rewind weights or None, fit history)."""
    if stage.done():
        data = stage.load(model)
        rewind_file = stage.path / "rewind.pt"
        weights = load_checkpoint(rewind_file)["weights"] if rewind_step is not None and rewind_file.exists() else None
        if rewind_step is not None and weights is None:
            raise CheckpointError(f"{stage.path} holds a dense run without the weights of iteration {rewind_step}; "
                                  "delete the folder to train again with rewinding")
        return dict(data["metrics"]), dict(data["recipe"]), weights, list(data.get("history") or [])
    callbacks = [RewindPoint(rewind_step)] if rewind_step is not None else []
    history = fit(model, train, test, checkpoint_dir=stage.checkpoints, seed=seed, progress=progress,
                  device=device, callbacks=callbacks, **recipe)
    full = dict(recipe, steps_per_epoch=len(train), total_steps=int(recipe["epochs"]) * len(train))
    row = {"phase": 0, "stage": "dense", "requested_sparsity": 0.0, "sparsity": 0.0, "kept": None,
           "pruned_top1": None, "top1": history[-1].get("test_top1") if history else top1_on(model, test, device),
           "epochs": int(recipe["epochs"]), "seconds": history_seconds(history)}
    weights = callbacks[0].weights if callbacks else None
    if stage.path is not None and weights is not None and distributed.is_main():
        save_checkpoint(stage.path / "rewind.pt", {"step": rewind_step, "weights": weights})
    stage.save(model, None, row, model_info, full, history=history)  # last: model.pt marks it finished
    return row, full, weights, list(history)


def _given_dense(model, pretrained, recipe, test, device):
    """A model trained elsewhere: (history row, its recipe, its fit history). ``pretrained`` is True (the model
    as given) or a prunekit model file / fit checkpoint whose weights are loaded."""
    stored_recipe, history = {}, []
    if pretrained is not True:
        data = load_checkpoint(pretrained)
        state = data.get("state_dict", data.get("model"))
        if not isinstance(state, dict):
            raise CheckpointError(f"{pretrained} holds no model weights (a prunekit model file or fit checkpoint)")
        model.load_state_dict(state)
        stored_recipe, history = dict(data.get("recipe") or {}), list(data.get("history") or [])
    full = {**stored_recipe, **dict(recipe or {})}
    row = {"phase": 0, "stage": "given", "requested_sparsity": 0.0, "sparsity": 0.0, "kept": None,
           "pruned_top1": None, "top1": top1_on(model, test, device), "epochs": full.get("epochs"),
           "seconds": history_seconds(history) if history else None}
    return row, full, history


# ---------------------------------------------------------------------------------- IMP


def imp(model: nn.Module, data: Any, target_sparsity: float, phases: int = 5, retrain_epochs: int = 1, *,
        schedule: str = "slr", score: str = "magnitude", allocation: str = "global",
        rewind: Optional[int] = None, include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None, recipe: Optional[Mapping[str, Any]] = None,
        pretrained: Union[bool, str, Path] = False, rewind_weights: Optional[Mapping[str, torch.Tensor]] = None,
        eta_max: Optional[float] = None, eta_min: Optional[float] = None, ft_floor: float = 0.01,
        folder: Optional[Union[str, Path]] = None, seed: int = 0, progress: Optional[bool] = None,
        device: Any = "cpu", model_info: Optional[Mapping[str, Any]] = None) -> PruneResult:
    """Iterative magnitude pruning of ``model`` to ``target_sparsity`` in ``phases`` phases.

    - ``data``: ``(train_loader, test_loader)`` or a dataset name.
    - ``recipe``: the dense training as :func:`prunekit.training.fit` keywords (epochs, lr,
      schedule, schedule_kwargs, optimizer, momentum, nesterov, weight_decay), defaults
      :data:`DENSE_RECIPE`. Retraining phases use its optimizer settings.
    - ``pretrained``: False trains dense first; a path starts from that trained checkpoint (a
      prunekit model file or a fit checkpoint, whose saved recipe gives the original schedule;
      ``recipe`` overrides it); True means ``model`` is already trained (``recipe`` then says
      how). LRW, SLR, ALLR and rewinding need the original schedule and raise without it.
    - ``schedule``: retraining schedule (ft, lrw, slr, clr, llr, allr); ``eta_max``/``eta_min``
      override the values read from the recipe. FT's rate is at least ``ft_floor * eta_max``
      (:meth:`OriginalSchedule.with_ft_floor`; 0 turns the floor off) unless ``eta_min`` is given.
    - ``score`` / ``allocation`` / ``include`` / ``exclude``: as :func:`prunekit.prune`.
    - ``rewind``: iteration k to rewind survivors to after each pruning (0 = initialisation);
      from a pretrained model it needs ``rewind_weights`` (that iteration's ``state_dict``).
    - ``folder``: where stages are saved and resumed from (None: nothing is written).
    - ``model_info``: ``{"name", "kwargs", "dataset"}`` written into the model files, so that
      ``prunekit eval`` / :func:`prunekit.artifacts.load_model` can rebuild them.

    Returns a :class:`PruneResult` (final model, its mask, one history row per stage).
    """
    target_sparsity = check_sparsity(target_sparsity)
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise ValueError(f"phases must be an int >= 1, got {phases!r}")
    if isinstance(retrain_epochs, bool) or not isinstance(retrain_epochs, int) or retrain_epochs < 1:
        raise ValueError(f"retrain_epochs must be an int >= 1, got {retrain_epochs!r}")
    schedule = check_retrain_schedule(schedule)
    if rewind is not None and (isinstance(rewind, bool) or not isinstance(rewind, int) or rewind < 0):
        raise ValueError(f"rewind must be None or an iteration >= 0, got {rewind!r}")
    train, test = resolve_data(data, seed)
    folder = Path(folder) if folder is not None else None
    model_info = dict(model_info or {})
    model.to(device)
    plan = PhasePlan(target_sparsity=target_sparsity, phases=phases, retrain_epochs=retrain_epochs,
                     schedule=schedule, score=score, allocation=allocation, include=include, exclude=exclude,
                     rewind=rewind, seed=seed, progress=progress, device=device)

    config = {"target_sparsity": target_sparsity, "phases": phases, "retrain_epochs": retrain_epochs,
              "schedule": schedule, "score": score, "allocation": allocation, "rewind": rewind,
              "include": include, "exclude": exclude, "recipe": dict(recipe or {}),
              "pretrained": str(pretrained) if pretrained else False, "eta_max": eta_max, "eta_min": eta_min,
              "seed": seed}
    if schedule == "ft" and eta_min is None and rewind is None and ft_floor:  # other folders claim what they claimed before
        config["ft_floor"] = ft_floor
    _claim_folder(folder, config)

    def original(full_recipe):
        # The dense run's lr schedule; building the retraining schedule once here makes a
        # missing piece (e.g. SLR without a recipe) fail before any training or pruning.
        orig = OriginalSchedule.from_recipe(full_recipe, steps_per_epoch=len(train))
        orig = orig.replace(eta_max=eta_max, eta_min=eta_min)
        if schedule == "ft" and eta_min is None:
            orig = orig.with_ft_floor(ft_floor)
        if rewind is None:
            retrain_schedule(schedule, retrain_epochs * len(train), orig,
                             peak=orig.eta_max if schedule == "allr" else None)
        else:
            replay_schedule(orig, rewind, len(train))
        return orig

    # Stage 0: the dense model and the original schedule it was trained with.
    weights = None
    if pretrained:
        row, full_recipe, dense_log = _given_dense(model, pretrained, recipe, test, device)
        orig = original(full_recipe)
        if rewind is not None:
            if rewind_weights is None:
                raise ValueError("rewinding a pretrained model needs rewind_weights: the state_dict of iteration "
                                 f"{rewind} of its training")
            weights = {k: v.detach().cpu().clone() for k, v in rewind_weights.items()}
    else:
        orig = original(dense_recipe(recipe))
        row, full_recipe, weights, dense_log = _train_dense(model, train, test, dense_recipe(recipe), rewind,
                                                            Stage(folder, "dense"), seed, progress, device,
                                                            model_info)
    history: List[Dict[str, Any]] = [row]
    log = [{"stage": "dense", **r} for r in dense_log]
    settings = dense_recipe(full_recipe)
    epochs_so_far = int(row.get("epochs") or 0)

    mask: Optional[Mask] = None
    for j in range(1, phases + 1):
        stage = Stage(folder, f"phase_{j:02d}")
        if stage.done():
            saved = stage.load(model)
            mask = Mask(saved["mask"], model)
            row = json.loads((stage.path / "metrics.json").read_text())
            hist = list(saved.get("history") or [])
        else:
            row, mask, hist = _phase(model, mask, j, plan, train, test, stage, orig, settings, weights=weights,
                                     epoch_offset=epochs_so_far)
            stage.save(model, mask, row, model_info, {"retrain_schedule": schedule, "phase": j}, history=hist)
        history.append(row)
        log.extend({"stage": f"phase_{j:02d}", **r} for r in hist)
        epochs_so_far += int(row["epochs"])
    return PruneResult(model, mask, history, folder, log)


def _claim_folder(folder: Optional[Path], config: Dict[str, Any]) -> None:
    """Refuse to mix two different IMP runs in one folder (a resumed run must be the same)."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "imp.json"
    plain = json.loads(json.dumps(config, default=str))
    if path.exists():
        stored = json.loads(path.read_text())
        diffs = [f"{k}: {stored.get(k)!r} -> {plain.get(k)!r}" for k in sorted(set(stored) | set(plain))
                 if stored.get(k) != plain.get(k)]
        if diffs:
            raise ValueError(f"{folder} holds an IMP run with other settings ({'; '.join(diffs)}); "
                             "use another folder or delete it")
        return
    write_json(path, plain)


def _phase(model, mask, j: int, plan: PhasePlan, train, test, stage: Stage, orig: OriginalSchedule,
           settings, *, weights, epoch_offset: int):
    """Prune to phase ``j``'s sparsity, then retrain (resumable). Returns (row, mask, fit history)."""
    start = time.perf_counter()
    requested = phase_sparsity(plan.target_sparsity, j, plan.phases)
    params = prunable_parameters(model, include=plan.include, exclude=plan.exclude)
    before = {n: p.detach().clone() for n, p in params.items()}
    # without a mask, what prune() treats as alive: every weight unless a prunekit mask was applied
    alive = mask.kept() if mask is not None else sum(int(carried_keep(p).sum()) for p in params.values())
    # Deterministic in the previous phase's weights (and the seed), so a resumed phase recomputes
    # the same mask before fit restores its epoch checkpoint.
    mask = prune(model, requested, score=plan.score, allocation=plan.allocation, include=plan.include,
                 exclude=plan.exclude, mask=mask, seed=plan.seed)
    change = relative_change(before, {n: p.detach() for n, p in params.items()})
    pruned_fraction = (alive - mask.kept()) / alive if alive else 0.0
    pruned_top1 = top1_on(model, test, plan.device)

    steps_per_epoch = len(train)
    peak = None
    if plan.rewind is not None:
        rewind_to(model, mask, weights)
        epochs, sched = replay_schedule(orig, plan.rewind, steps_per_epoch)
    else:
        epochs = plan.retrain_epochs
        if plan.schedule == "allr":
            peak = allr_peak(change, pruned_fraction, orig.eta_max, plan.retrain_epochs, float(orig.epochs)) \
                if pruned_fraction > 0 else orig.eta_max
        sched = retrain_schedule(plan.schedule, epochs * steps_per_epoch, orig, peak=peak)
    prune_seconds = time.perf_counter() - start
    hist = masked_fit(model, mask, ContinuedLoader(train, epoch_offset), test, epochs, sched, settings,
                      checkpoint_dir=stage.checkpoints, seed=plan.seed + j, progress=plan.progress,
                      device=plan.device, recipe={"imp_phase": j, "retrain_schedule": sched.name})
    top1 = hist[-1].get("test_top1") if hist else pruned_top1
    row = {"phase": j, "stage": "rewind" if plan.rewind is not None else plan.schedule,
           "requested_sparsity": requested,
           "sparsity": mask.sparsity(), "kept": mask.kept(), "pruned_top1": pruned_top1, "top1": top1,
           "epochs": epochs, "seconds": prune_seconds + history_seconds(hist), "change": change,
           "pruned_fraction": pruned_fraction, "lr_peak": sched.max_factor(), "schedule": sched.name}
    return row, mask, list(hist)


# ------------------------------------------------------------------ lottery comparison


def train_ticket(model: nn.Module, mask: Mask, weights: Mapping[str, torch.Tensor], data: Any,
                 recipe: Optional[Mapping[str, Any]] = None, *, rewind_step: int = 0, stage: str = "ticket",
                 folder: Optional[Union[str, Path]] = None, seed: int = 0, progress: Optional[bool] = None,
                 device: Any = "cpu", model_info: Optional[Mapping[str, Any]] = None) -> PruneResult:
    """Reset ``model``'s survivors to ``weights`` and train it with ``mask`` enforced, replaying
    the original ``recipe`` (fit keywords; default :data:`DENSE_RECIPE`) from ``rewind_step``.

    With the weights of the dense run's initialisation this is the lottery ticket; with
    :func:`prunekit.pipelines.rewind.reinitialized_weights` it is the random re-init baseline
    (Liu et al., seed 001). The history's single row counts this training's cost only.
    """
    train, test = resolve_data(data, seed)
    settings = dense_recipe(recipe)
    full = dict(settings, steps_per_epoch=len(train), total_steps=int(settings["epochs"]) * len(train))
    orig = OriginalSchedule.from_recipe(full)
    model.to(device)
    rewind_to(model, mask, weights)
    epochs, sched = replay_schedule(orig, rewind_step, len(train))
    box = Stage(Path(folder) if folder is not None else None, stage)
    if box.done():
        saved = box.load(model)
        return PruneResult(model, Mask(saved["mask"], model), [json.loads((box.path / "metrics.json").read_text())],
                           box.path, [{"stage": stage, **r} for r in saved.get("history") or []])
    hist = masked_fit(model, mask, train, test, epochs, sched, settings, checkpoint_dir=box.checkpoints,
                      seed=seed, progress=progress, device=device, recipe={"ticket": stage})
    row = {"phase": 1, "stage": stage, "requested_sparsity": mask.sparsity(), "sparsity": mask.sparsity(),
           "kept": mask.kept(), "pruned_top1": None, "top1": hist[-1].get("test_top1") if hist else None,
           "epochs": epochs, "seconds": history_seconds(hist)}
    box.save(model, mask, row, dict(model_info or {}), full, history=hist)
    return PruneResult(model, mask, [row], box.path, [{"stage": stage, **r} for r in hist])
