"""Is training still going somewhere? Checked after every epoch by ``fit``.

- Divergence: a NaN or infinite loss, weight or buffer stops the run (``DivergedError``).
- Collapse: the network has learned something, then falls back to a constant output. Its
  cross-entropy is then ln C (C classes, the loss of predicting 1/C everywhere) and its top-1 is
  chance; with dead ReLUs no gradient reaches the weights again, so it does not recover. This
  is what ste_fixed at 98-99% sparsity does on LeNet-5 at lr 0.05 (benchmarks/results/
  leaderboard.md). The run goes on (its numbers are still true ones); ``fit`` warns once.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn


class DivergedError(ValueError):
    """Training diverged: the loss or the weights are no longer finite numbers."""


class CollapseWarning(UserWarning):
    """Training collapsed to a constant output (loss ln C, top-1 at chance) after learning."""


def lr_hint(lr: Optional[float]) -> str:
    return f"lower the learning rate (it was {lr:g})" if isinstance(lr, (int, float)) else "lower the learning rate"


def check_finite(model: nn.Module, metrics: Dict[str, Any], epoch: int, lr: Optional[float] = None) -> None:
    """Raise ``DivergedError`` when the epoch's training loss or any weight or buffer of
    ``model`` is NaN or infinite. The loss is summed over the ranks and the weights are the
    same on each, so every rank of a data-parallel job stops alike."""
    loss = metrics.get("train_loss")
    hint = lr_hint(lr)
    if loss is not None and not math.isfinite(loss):
        raise DivergedError(f"training diverged in epoch {epoch + 1}: the training loss is {loss}; {hint}")
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DivergedError(f"training diverged in epoch {epoch + 1}: {bad[0]}{more} hold NaN or infinite "
                            f"values; {hint}")


# A collapsed epoch: loss within 1% of ln C and top-1 at most 1.5x chance. "Had learned": some
# earlier epoch's loss below 80% of ln C. Both margins are wide: a collapsed LeNet-5 sits at
# ln 10 +- 0.002 and 10 +- 0.2%, a learning one far below.
COLLAPSED_LOSS, COLLAPSED_TOP1, LEARNED_LOSS = 0.99, 1.5, 0.8


def collapsed(metrics: Dict[str, Any], num_classes: Optional[int]) -> bool:
    """True when the epoch's training loss is ~ln C and its top-1 ~chance (C = ``num_classes``)."""
    loss, top1 = metrics.get("train_loss"), metrics.get("train_top1")
    if loss is None or top1 is None or not num_classes or num_classes < 2:
        return False
    return loss >= COLLAPSED_LOSS * math.log(num_classes) and top1 <= COLLAPSED_TOP1 * 100.0 / num_classes


def warn_if_collapsed(history: Iterable[Dict[str, Any]], metrics: Dict[str, Any],
                      num_classes: Optional[int], lr: Optional[float] = None) -> bool:
    """Warn (``CollapseWarning``) when this epoch collapsed, no earlier epoch had, and an earlier
    one had learned. Returns whether it warned."""
    earlier = list(history)
    if not collapsed(metrics, num_classes) or any(collapsed(m, num_classes) for m in earlier):
        return False
    learned = [m for m in earlier if m.get("train_loss") is not None
               and m["train_loss"] < LEARNED_LOSS * math.log(num_classes)]
    if not learned:
        return False
    best = min(learned, key=lambda m: m["train_loss"])
    warnings.warn(
        f"training collapsed in epoch {metrics['epoch']}: the training loss is {metrics['train_loss']:.3f} "
        f"~ ln {num_classes} and top-1 {metrics['train_top1']:.1f}% is chance, after {best['train_loss']:.3f} in "
        f"epoch {best['epoch']}: the output is constant and will not recover; {lr_hint(lr)}",
        CollapseWarning, stacklevel=2)
    return True
