"""Fine-tuning a pruned model with its mask held fixed."""
from __future__ import annotations

from typing import Any, Dict, Sequence

from torch import nn

from ..core.mask import Mask, enforce
from ..training import Callback, TrainState, fit


class EnforceMask(Callback):
    """Callback that keeps ``mask`` enforced on the optimizer ``fit`` builds (see
    :func:`prunekit.enforce`) and records the achieved sparsity after each epoch."""

    def __init__(self, mask: Mask):
        self.mask = mask
        self._handle = None

    def on_fit_start(self, state: TrainState) -> None:
        self._handle = enforce(self.mask, state.optimizer, state.model)

    def on_epoch_end(self, state: TrainState, metrics: Dict[str, Any]) -> None:
        params = self.mask.parameters()
        nonzero = sum(int((params[n] != 0).sum()) for n in self.mask)
        metrics["sparsity"] = 1.0 - nonzero / self.mask.total()

    def on_fit_end(self, state: TrainState) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def finetune(model: nn.Module, mask: Mask, train, test=None, epochs: int = 1, *, lr: float = 0.01,
             schedule: str = "cosine", callbacks: Sequence[Callback] = (), **fit_kwargs):
    """Train ``model`` for ``epochs`` with ``mask`` enforced (pruned weights stay exactly zero).

    Defaults are a short cosine fine-tune at a tenth of a typical SGD learning rate; every
    keyword of :func:`prunekit.training.fit` is accepted. Returns fit's history.
    """
    return fit(model, train, test, epochs=epochs, lr=lr, schedule=schedule,
               callbacks=[EnforceMask(mask), *callbacks], **fit_kwargs)
