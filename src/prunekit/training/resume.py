"""Resuming ``fit`` safely: the checkpoint it writes after every epoch, the recipe stored in
it, and the guards that refuse a checkpoint of another format, recipe or set of callbacks
(or whose states do not fit this model, optimizer or callbacks) with a ``CheckpointError``
that says what differs, instead of silently mixing two trainings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from .callbacks import Callback, TrainState
from .checkpoint import CheckpointError, check_payload
from .metrics import History
from .schedules import SCHEDULES, Schedule

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "prunekit.fit/1"


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively, so a recipe compares equal after a save/load trip."""
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def make_recipe(opt: torch.optim.Optimizer, optimizer: Any, optimizer_kwargs: Optional[dict],
                sched: Schedule, schedule: Any, epochs: int, steps_per_epoch: int,
                total_steps: int, seed: Optional[int], extra: Optional[dict]) -> Dict[str, Any]:
    """The recipe saved in the checkpoint and compared on resume: this call's settings."""
    # Read the hyper-parameters back from the optimizer, so a ready-made one is described
    # as faithfully as one built here.
    group = opt.param_groups[0]
    base_lr = float(group.get("initial_lr", group["lr"]))
    named = isinstance(schedule, str) and schedule in SCHEDULES
    recipe: Dict[str, Any] = {
        "optimizer": optimizer.lower() if isinstance(optimizer, str) else type(opt).__name__,
        "lr": base_lr,
        "momentum": group.get("momentum"),
        "nesterov": group.get("nesterov"),
        "weight_decay": group.get("weight_decay"),
        "optimizer_kwargs": dict(optimizer_kwargs or {}),
        "schedule": sched.name,
        "schedule_kwargs": dict(sched.params) if named else {},
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "eta_max": base_lr * sched.max_factor(),
        "eta_min": base_lr * sched.min_factor(),
        "seed": seed,
    }
    recipe.update(extra or {})
    recipe = _plain(recipe)
    try:
        check_payload(recipe, "recipe")
    except TypeError as err:
        raise TypeError(f"the recipe must be plain data: {err}") from None
    return recipe


# ------------------------------------------------------------------ checkpoint I/O


def checkpoint_payload(state: TrainState, callbacks: List[Callback], recipe: Dict[str, Any]) -> dict:
    """Everything needed to continue after this epoch: weights, optimizer, scheduler, RNG..."""
    rng: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "epoch": state.epoch + 1,  # epochs completed: the resumed run starts at this index
        "step": state.step,
        "history": [dict(row) for row in state.history],
        "callbacks": [cb.state_dict() for cb in callbacks],
        "rng": rng,
        "recipe": recipe,
    }


_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "history", "callbacks", "rng",
         "recipe")


def check_resumable(payload: dict, recipe: Dict[str, Any], n_callbacks: int,
                    path: Path) -> None:
    """Refuse a checkpoint of another format, recipe or number of callbacks."""
    missing = [k for k in _KEYS if k not in payload]
    if payload.get("format") != CHECKPOINT_FORMAT or missing:
        raise CheckpointError(
            f"{path} is not a prunekit training checkpoint (format "
            f"{payload.get('format')!r}, missing {missing}); delete it to start over")
    stored = payload["recipe"]
    diffs = [f"{k}: {stored.get(k)!r} -> {recipe.get(k)!r}"
             for k in sorted(set(stored) | set(recipe)) if stored.get(k) != recipe.get(k)]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was written by a different training recipe ("
            + "; ".join(diffs) + "). Delete the file (or write to another "
            "folder) to start over.")
    if len(payload["callbacks"]) != n_callbacks:
        raise CheckpointError(
            f"checkpoint {path} holds the state of {len(payload['callbacks'])} callbacks but "
            f"fit() got {n_callbacks}; delete the file to start over")


def guarded(path: Path, what: str, load: Callable[[], Any]) -> None:
    """Run ``load``; a state that does not fit ``what`` becomes a ``CheckpointError``."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint {path} does not match this {what}: {err}. Delete the file (or "
            "write to another folder) to start over.") from err


def restore(payload: dict, state: TrainState, callbacks: List[Callback], path: Path) -> int:
    """Load the optimizer, scheduler, callbacks, history and RNG; returns the next epoch."""
    guarded(path, "optimizer", lambda: state.optimizer.load_state_dict(payload["optimizer"]))
    guarded(path, "lr scheduler", lambda: state.scheduler.load_state_dict(payload["scheduler"]))
    for i, (cb, cb_state) in enumerate(zip(callbacks, payload["callbacks"])):
        guarded(path, f"callback #{i} ({type(cb).__name__})",
                lambda: cb.load_state_dict(cb_state))
    state.history = History(payload["history"])
    state.step = int(payload["step"])
    state.epoch = int(payload["epoch"])
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return state.epoch
