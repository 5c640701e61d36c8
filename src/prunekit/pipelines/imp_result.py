"""What IMP and the other multi-stage pipelines return: ``PruneResult``, one history row per
stage, and the figures those rows are made of (a stage's top-1, its training seconds).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from torch import nn

from ..core.mask import Mask
from ..training import evaluate


@dataclass
class PruneResult:
    """What IMP and the other pipelines of this package return.

    ``history`` has one row per stage: ``phase`` (0 = dense training), ``stage``,
    ``requested_sparsity``, ``sparsity`` (achieved, of the prunable weights), ``kept``,
    ``pruned_top1`` (right after pruning), ``top1`` (after the stage's training), ``epochs`` and
    ``seconds`` (the stage's training cost, wall time including evaluation), plus stage details
    (``schedule``, ``lr_peak``, ``change``). ``epochs_log`` has fit's per-epoch rows of every
    stage, each with a ``stage`` key (``dense``, ``phase_01``, ...).
    """

    model: nn.Module
    mask: Optional[Mask]
    history: List[Dict[str, Any]] = field(default_factory=list)
    folder: Optional[Path] = None
    epochs_log: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def total_epochs(self) -> float:
        """Training epochs of every stage, dense training included (seed 004's cost)."""
        return float(sum(r.get("epochs") or 0 for r in self.history))

    @property
    def total_seconds(self) -> float:
        return float(sum(r.get("seconds") or 0.0 for r in self.history))

    @property
    def top1(self) -> Optional[float]:
        return self.history[-1].get("top1") if self.history else None

    def table(self) -> str:
        """The history as a fixed-width text table."""
        head = f"{'phase':>5} {'stage':<12} {'sparsity':>9} {'kept':>9} {'pruned':>7} {'top-1':>7} {'epochs':>7} {'seconds':>8}"
        lines = [head, "-" * len(head)]
        for r in self.history:
            lines.append(f"{r['phase']:>5} {r.get('stage', ''):<12} {r.get('sparsity', 0):>9.4f} "
                         f"{_fmt(r.get('kept'), 'd'):>9} {_fmt(r.get('pruned_top1'), '.2f'):>7} "
                         f"{_fmt(r.get('top1'), '.2f'):>7} {_fmt(r.get('epochs'), 'g'):>7} "
                         f"{_fmt(r.get('seconds'), '.1f'):>8}")
        lines.append(f"total: {self.total_epochs:g} epochs, {self.total_seconds:.1f} s")
        return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def top1_on(model: nn.Module, test: Optional[Iterable], device: Any) -> Optional[float]:
    """Top-1 accuracy of ``model`` on ``test`` (None without test data)."""
    return None if test is None else float(evaluate(model, test, device=device)["top1"])


def history_seconds(history: Sequence[Mapping[str, Any]]) -> float:
    """The wall time of a fit history (the sum of its epochs' ``seconds``)."""
    return float(sum(r.get("seconds") or 0.0 for r in history))
