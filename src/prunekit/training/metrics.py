"""Accuracy, evaluation, and the per-epoch training history."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class History(list):
    """A list of per-epoch metric dicts, oldest first, with two helpers."""

    @property
    def last(self) -> Optional[Dict[str, Any]]:
        """The latest epoch's metrics, or None before the first epoch."""
        return self[-1] if self else None

    def best(self, key: str, mode: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The epoch with the best value of ``key`` (entries where it is None are skipped).

        ``mode`` is "min" or "max"; by default "min" for keys containing "loss", else "max".
        Ties go to the earliest epoch.
        """
        mode = mode or ("min" if "loss" in key else "max")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        rows = [r for r in self if r.get(key) is not None]
        if not rows:
            return None
        pick = min if mode == "min" else max
        return pick(rows, key=lambda r: r[key])


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or tensors nested in lists/tuples/dicts, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def on_device(loader: Any, device: torch.device) -> Any:
    """``loader.on_device(device)`` for a loader that can keep its data on the device
    (:class:`prunekit.data.Loader`: its tensors copied there once, its augmentation run there);
    any other iterable unchanged (its batches are moved one by one with :func:`to_device`)."""
    move = getattr(loader, "on_device", None)
    return move(device) if callable(move) else loader


def topk_correct(output: torch.Tensor, target: torch.Tensor,
                 ks: Tuple[int, ...] = (1, 5)) -> Optional[Dict[int, int]]:
    """Count samples whose target is among the top-k logits, for each k that fits.

    Returns None when the output is not (batch, classes) logits for integer targets (e.g.
    a regression loss), where accuracy has no meaning.
    """
    if output.dim() != 2 or target.dim() != 1 or target.is_floating_point():
        return None
    num_classes = output.size(1)
    usable = [k for k in ks if k <= num_classes]
    if not usable:
        return {}
    top = output.topk(max(usable), dim=1).indices  # (batch, kmax)
    hits = top.eq(target.unsqueeze(1))
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in usable}


def evaluate(model: nn.Module, loader: Iterable, device: Any = "cpu",
             loss_fn: Optional[LossFn] = None, sharded: bool = False) -> Dict[str, Optional[float]]:
    """Mean loss and top-1/top-5 accuracy (percent) of ``model`` over ``loader``.

    Runs in eval mode under ``torch.no_grad()`` and restores every submodule's previous
    train/eval flag afterwards. ``top5`` is None with fewer than 5 classes, and both
    accuracies are None when the outputs are not class logits. ``loss_fn`` (default
    cross-entropy) must return the batch mean; the result is weighted by batch size.

    ``sharded=True`` under torchrun (see :mod:`prunekit.distributed`): rank r evaluates
    batches r, r + N, ... and the sums are all-reduced, so every rank returns the numbers of
    the whole loader for 1/N of the work. It is a collective: every rank must call it. Off by
    default, so a call made by one rank alone never waits for the others.
    """
    world = distributed.world_size() if sharded else 1
    me = distributed.rank() if world > 1 else 0
    # A loader that shards itself (FileLoader under torchrun) already holds only this rank's
    # samples: evaluate all of them, then sum over the ranks as usual.
    stride, mine = (1, 0) if getattr(loader, "sharded", False) else (world, me)
    if getattr(loader, "sharded", False) and world == 1 and distributed.world_size() > 1:
        raise ValueError("this loader holds only this rank's share of the samples: evaluate it "
                         "with sharded=True on every rank")
    loss_fn = loss_fn or F.cross_entropy
    device = torch.device(device)
    loader = on_device(loader, device)
    # Restore per module: a caller may keep e.g. frozen BatchNorm layers in eval mode.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    total_loss, n, correct = 0.0, 0, {}
    classification = True
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if i % stride != mine:
                    continue
                x, y = to_device(x, device), to_device(y, device)
                out = model(x)
                batch = len(y)
                total_loss += float(loss_fn(out, y)) * batch
                n += batch
                counts = topk_correct(out, y)
                if counts is None:
                    classification = False
                elif classification:
                    for k, c in counts.items():
                        correct[k] = correct.get(k, 0) + c
    finally:
        for m, mode in modes.items():
            m.training = mode
    if world > 1:
        has = [float(classification), float(1 in correct), float(5 in correct)]
        total_loss, n, c1, c5, *has = distributed.all_reduce_sum(
            [total_loss, n, correct.get(1, 0), correct.get(5, 0)] + has)
        n = int(n)
        # Logits on every rank (one without batches keeps its initial True).
        classification = has[0] == world
        correct = {k: int(c) for k, c, h in ((1, c1, has[1]), (5, c5, has[2])) if h > 0}
    if n == 0:
        raise ValueError("evaluate() got an empty loader")
    acc = (lambda k: 100.0 * correct[k] / n if classification and k in correct else None)
    return {"loss": total_loss / n, "top1": acc(1), "top5": acc(5)}
