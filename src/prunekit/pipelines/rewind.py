"""Weight rewinding (lottery tickets) and the random re-initialisation baseline.

Frankle & Carbin, "The Lottery Ticket Hypothesis" (ICLR 2019), section 2: after pruning, the
surviving weights are reset to their values at the start of training instead of keeping their
trained values; Frankle et al. ("Stabilizing the Lottery Ticket Hypothesis", 2019) reset them to
iteration k of training instead (k = 0: the initialisation). The retraining that follows replays
the original schedule from iteration k (SPEC.md section 2). Liu et al. ("Rethinking the Value of
Network Pruning", seed 001, section 6) compare that ticket with the same mask trained from a
fresh random initialisation: :func:`reinitialized_weights` + :func:`rewind`.

    point = RewindPoint(step=0)                  # a fit() callback
    fit(model, train, epochs=8, callbacks=[point], ...)
    mask = prune(model, 0.9)
    rewind(model, mask, point.weights)           # survivors = values at step 0, others 0
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from ..core.mask import Mask
from ..models._common import init_weights
from ..training.callbacks import Callback, TrainState
from ..training.schedules import Schedule
from .retrain_schedules import OriginalSchedule


def _snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class RewindPoint(Callback):
    """A ``fit`` callback that keeps a copy of the model's ``state_dict`` at iteration ``step``
    (after ``step`` optimizer steps; 0 = the initialisation, before the first step).

    The copy is part of the callback's state, so it is saved in fit's checkpoints and survives
    an interrupted, resumed training.
    """

    def __init__(self, step: int):
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"the rewind iteration must be an int >= 0, got {step!r}")
        self.step = step
        self._weights: Optional[Dict[str, torch.Tensor]] = None

    @property
    def weights(self) -> Dict[str, torch.Tensor]:
        if self._weights is None:
            raise RuntimeError(f"the weights of iteration {self.step} were not captured (training stopped earlier)")
        return self._weights

    def on_fit_start(self, state: TrainState) -> None:
        if self.step > state.total_steps:
            raise ValueError(f"cannot rewind to iteration {self.step}: the dense training has only "
                             f"{state.total_steps} iterations")

    def on_epoch_start(self, state: TrainState) -> None:
        if self.step == 0 and state.step == 0 and self._weights is None:
            self._weights = _snapshot(state.model)

    def on_step_end(self, state: TrainState) -> None:
        if state.step == self.step:
            self._weights = _snapshot(state.model)

    def state_dict(self):
        return {"step": self.step, "weights": self._weights}

    def load_state_dict(self, state) -> None:
        if int(state.get("step", self.step)) != self.step:
            raise ValueError(f"checkpoint rewinds to iteration {state.get('step')}, not {self.step}")
        self._weights = state.get("weights")


@torch.no_grad()
def rewind(model: nn.Module, mask: Mask, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """Reset ``model`` to ``weights`` (a full ``state_dict``: biases, norms and buffers too) and
    zero the weights ``mask`` prunes: survivors get exactly the saved values, the rest 0."""
    model.load_state_dict(dict(weights), strict=True)
    mask.apply(model)
    return model


def reinitialized_weights(model: nn.Module, seed: int) -> Dict[str, torch.Tensor]:
    """A fresh random initialisation of ``model``'s architecture (its ``state_dict``), drawn
    from seed ``seed`` without touching the global RNG.

    Every module's ``reset_parameters()`` is called in registration order; for prunekit's own
    models, their standard :func:`prunekit.models._common.init_weights` follows (the same
    distribution a freshly built model has). A model with a custom initialisation should build
    a fresh copy itself and pass its ``state_dict`` to :func:`rewind` instead.
    """
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        if type(model).__module__.startswith("prunekit.models"):
            init_weights(clone)
    return _snapshot(clone)


def replay_schedule(orig: OriginalSchedule, step: int, steps_per_epoch: int) -> Tuple[int, Schedule]:
    """The original schedule replayed from iteration ``step``, for the training that follows a
    rewind: ``(epochs, schedule)`` with ``T - step`` steps rounded up to whole epochs of
    ``steps_per_epoch`` batches (any extra steps hold the final learning rate).
    """
    if orig.lr is None:
        raise ValueError("rewinding replays the original learning-rate schedule, and the dense "
                         "training's recipe is unknown: start from a prunekit checkpoint or pass the recipe")
    remaining = orig.lr.total_steps - int(step)
    if remaining < 1:
        raise ValueError(f"cannot rewind to iteration {step}: the original schedule has {orig.lr.total_steps} steps")
    epochs = math.ceil(remaining / steps_per_epoch)
    sched = orig.lr.shifted(int(step), epochs * steps_per_epoch)
    return epochs, Schedule(sched.factor, sched.total_steps, "replay", {"from_step": int(step)})
