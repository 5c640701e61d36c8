"""The parts of ``prune()`` that one-shot pruning from calibration data adds: which pattern a
score uses, the calibration statistics a score needs, and the selection inside one tensor.

Kept apart from ``prune.py`` so that its flow (scores -> allocation -> selection) stays
readable: ``prune()`` asks this module what to gather and how to choose, nothing more.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from . import calibration
from . import patterns as pattern_fns
from .calibration import as_rows, from_rows
from .patterns import NM
from .thresholds import topk_mask


def default_allocation(score_fn, select_fn) -> str:
    """Uniform under an N:M pattern (every layer has density N/M); otherwise the allocation the
    score's paper uses: uniform for Wanda and SparseGPT, global for the others."""
    if isinstance(select_fn, NM):
        return "uniform"
    return getattr(score_fn, "default_allocation", "global")


def resolve_pattern(pattern: Optional[str], score_fn, score: str, allocation: Optional[str],
                    sparsity: float):
    """The selection function for ``pattern`` (None: the score's default, usually unstructured).

    An N:M pattern fixes every layer's density at N/M, so ``sparsity`` must be 1 - N/M and the
    allocation uniform (or left unset). SparseGPT chooses its mask inside blocks of columns and
    takes unstructured or N:M, not per_output.
    """
    name = pattern if pattern is not None else getattr(score_fn, "default_pattern", "unstructured")
    select = pattern_fns.get(name)
    if isinstance(select, NM):
        if abs(sparsity - (1.0 - select.density)) > 1e-9:
            raise ValueError(f"pattern {select} keeps {select.n} of every {select.m} weights, i.e. sparsity "
                             f"{1 - select.density:g} on every layer; pass sparsity={1 - select.density:g} "
                             f"(got {sparsity})")
        if allocation not in (None, "uniform"):
            raise ValueError(f"pattern {select} gives every layer density {select.density:g} (the uniform "
                             f"allocation); leave allocation unset or 'uniform' (got {allocation!r})")
    if getattr(score_fn, "reconstructs", False) and select is pattern_fns.per_output:
        raise ValueError(f"score {score!r} chooses its mask inside blocks of columns: use pattern "
                         "'unstructured' or N:M (e.g. '2:4'), not 'per_output'")
    return select


def transposed_flags(model: nn.Module, params: Dict[str, nn.Parameter]) -> Dict[str, bool]:
    """Which prunable weights are stored (in, out) (HF Conv1D), for the row-wise patterns."""
    flags = {}
    for name in params:
        try:
            flags[name] = calibration.is_transposed(calibration.module_of(model, name))
        except ValueError:
            flags[name] = False      # a parameter not named <module>.weight: (out, in) by default
    return flags


def check_pattern(select, params: Dict[str, nn.Parameter], transposed: Dict[str, bool]) -> None:
    """N:M needs every tensor's input width divisible by M (one clear error otherwise)."""
    if isinstance(select, NM):
        for name, p in params.items():
            select.check_width(name, as_rows(p.detach(), transposed[name]).shape[1])


def gather(model: nn.Module, params: Dict[str, nn.Parameter], score_fn,
           loader: Optional[Iterable]) -> Optional[Dict[str, calibration.LayerStats]]:
    """The calibration statistics the score asks for (None for data-free scores)."""
    need = getattr(score_fn, "calibration", None)
    if need is None:
        return None
    return calibration.collect(model, list(params), loader, hessian=need == "hessian")


def select(select_fn, by: torch.Tensor, k: int, transposed: bool, threshold=None) -> torch.Tensor:
    """Keep ``k`` weights of one tensor ranked by ``by`` under the pattern ``select_fn``."""
    if select_fn is pattern_fns.unstructured:
        return topk_mask(by, k, threshold=threshold)
    keep = select_fn(as_rows(by, transposed), k)
    return from_rows(keep, by.shape, transposed)
