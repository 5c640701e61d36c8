"""Training budgets of the baselines that train from scratch (seed 001, Liu et al. 2019).

- Scratch-E: as many epochs E as the large model (the spec's ``train.epochs``);
- Scratch-B: the same computation, ``E * FLOPs_large / FLOPs_small`` epochs (Sec. 4; capped
  at ``max_ratio``, 2 on ImageNet), the learning-rate schedule *stretched* to the new length
  (step decays at the same fractions of training, :func:`stretched_schedule_kwargs`). For an
  unstructured mask FLOPs_small is the effective (sparse) count: each prunable layer's dense
  FLOPs times its density (Sec. 5, "Scratch-B" of the unstructured comparison).

:class:`ScratchBudgetParams` adds the choice to every baseline that trains from scratch
(``budget: E | B``); its default ``E`` is the behaviour those baselines always had.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..core.accounting import flops_per_module
from ..params import param, positive
from ..training.schedules import stretched_schedule_kwargs


def scratch_b_epochs(epochs: int, flops_large: float, flops_small: float, max_ratio: Optional[float] = None) -> int:
    """Scratch-B's epochs: ``round(E * min(FLOPs_large / FLOPs_small, max_ratio))``, at least E.

    The same total computation as training the large model E epochs (Liu et al. 2019,
    section 4: "Scratch-B"); ``max_ratio`` (e.g. 2 on ImageNet) caps the extension."""
    if epochs < 1 or flops_small <= 0 or flops_large <= 0:
        raise ValueError(f"need epochs >= 1 and positive FLOPs, got {epochs}, {flops_large}, {flops_small}")
    ratio = flops_large / flops_small
    if max_ratio is not None:
        ratio = min(ratio, max_ratio)
    return max(epochs, int(math.floor(epochs * ratio + 0.5)))


def sparse_flops(model: torch.nn.Module, mask: Mapping[str, torch.Tensor]) -> Tuple[int, int]:
    """``(dense FLOPs, effective FLOPs)`` of ``model`` under ``mask`` ({weight name: 0/1}):
    each masked layer's FLOPs times its density (the accounting convention of
    :mod:`prunekit.core.accounting`)."""
    per_module, total = flops_per_module(model)
    removed = 0.0
    for name, m in mask.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        if module in per_module and m.numel():
            removed += per_module[module] * (1.0 - float(m.float().mean()))
    return total, max(int(round(total - removed)), 1)


def stretched_recipe(recipe: Dict[str, Any], epochs: int) -> Dict[str, Any]:
    """The fit overrides training ``epochs`` with the recipe's schedule stretched to them."""
    return {"schedule_kwargs": stretched_schedule_kwargs(recipe.get("schedule"), recipe.get("schedule_kwargs"),
                                                         int(recipe["epochs"]), epochs)}


@dataclass
class ScratchBudgetParams:
    budget: str = param("E", choices=("E", "B"),
                        doc="E: train.epochs (Scratch-E); B: E x FLOPs_large/FLOPs_small epochs, schedule stretched "
                            "(Scratch-B, Liu et al. Sec. 4)")
    max_ratio: Optional[float] = param(None, check=positive, doc="budget B: cap on FLOPs_large / FLOPs_small (ImageNet: 2)")


def budget_epochs(p: Any, recipe: Dict[str, Any], flops_large: float, flops_small: float) -> Tuple[int, Dict[str, Any]]:
    """``(epochs, fit overrides)`` of a from-scratch baseline with ``p.budget`` / ``p.epochs``:
    a manual ``epochs`` wins (the recipe's schedule as given, as always); budget B computes
    Scratch-B's epochs and stretches the schedule; budget E is the recipe."""
    e = int(recipe["epochs"])
    if getattr(p, "epochs", None):
        return int(p.epochs), {}
    if p.budget == "B":
        n = scratch_b_epochs(e, flops_large, flops_small, p.max_ratio)
        return n, stretched_recipe(recipe, n)
    return e, {}
