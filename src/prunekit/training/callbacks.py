"""The hooks through which methods and pipelines plug into :func:`prunekit.training.fit`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from prunekit.training.metrics import History


@dataclass
class TrainState:
    """What ``fit`` shares with its callbacks; they may read it and mutate the objects in it.

    - ``epoch``: 0-based index of the epoch being run (equals ``epochs`` after the last one).
    - ``step``: optimizer steps taken so far over the whole run (global iteration count); in
      ``on_step_end`` it already counts the step just taken.
    - ``scheduler``: the ``LambdaLR``; it is None during ``on_fit_start``, because it is built
      after that hook so that param groups a callback adds there get scheduled too.
    - ``loss``: the last step's training loss (task loss + penalties) as a float.
    - ``skipped``: in ``on_step_end``, True when the optimizer step was skipped (fp16's
      GradScaler found an inf/NaN gradient: no weight and no optimizer state changed);
      ``skipped_steps`` counts them over the run.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    history: History = field(default_factory=History)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    loss: float = float("nan")
    epochs: int = 0
    skipped: bool = False
    skipped_steps: int = 0


class Callback:
    """Base class with no-op hooks, called by ``fit`` in this order::

        on_fit_start
        for each epoch:  on_epoch_start
                         for each batch:  penalty (added to the loss), then after
                                          optimizer.step() and the lr step: on_step_end
                         on_epoch_end(metrics)   -> checkpoint written after this
        on_fit_end

    On resume, ``on_fit_start`` runs first (model weights already restored), then
    ``load_state_dict`` with what ``state_dict`` returned at the last checkpoint.
    ``state_dict`` must hold only tensors, numbers, strings, None, lists and dicts.
    """

    def on_fit_start(self, state: TrainState) -> None:
        pass

    def on_epoch_start(self, state: TrainState) -> None:
        pass

    def penalty(self, state: TrainState) -> Optional[torch.Tensor]:
        """A term added to the task loss of the current step (None: nothing)."""
        return None

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState, metrics: Dict[str, Any]) -> None:
        """May add keys to ``metrics`` (plain numbers/strings); they go to the history."""

    def on_fit_end(self, state: TrainState) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
