"""Accounting: parameters, nonzeros, FLOPs (dense and effective) per layer and in total.

FLOPs are counted with torch's FLOP formulas (2 FLOPs per multiply-add of convolutions,
matrix products and attention; elementwise ops, norms and pooling are not counted) and
attributed to the weight each op used (:mod:`prunekit.core.flops`). The *effective* FLOPs of
a prunable layer are its dense FLOPs times the density of its weight, the usual convention
for unstructured sparsity (what a sparse kernel would have to compute).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from .flops import count_flops
from .targets import prunable_parameters, prunable_targets


def _example_input(model: nn.Module, input_shape: Optional[Sequence[int]], example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is not None:
        return example_input
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("FLOPs need an input: pass input_shape=(C, H, W) or example_input=..., "
                         "or use a model from pk.models (they carry .input_shape)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((1, *shape), device=device)


def kept_fraction(ratio: float) -> float:
    """A stored ``flops_ratio`` / ``params_ratio`` as the fraction **kept** (pruned / dense), the
    convention of every ``*_ratio`` target and metric (README, "Conventions of the public API").

    Read-compatible with older records: the structured / slimming / scratch metrics and
    ``structured.compare`` stored dense / pruned there, which is > 1 for any pruned model,
    while a kept fraction never exceeds 1; so a value above 1 is an old record, inverted here."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio > 0:
        raise ValueError(f"a FLOPs / parameter ratio must be a positive number, got {ratio!r}")
    return 1.0 / ratio if ratio > 1.0 else float(ratio)


def flops_per_module(model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                     example_input: Optional[torch.Tensor] = None) -> Tuple[Dict[str, int], int]:
    """Dense FLOPs of one forward pass at batch 1: ``({module name: flops}, total)``.

    Per-module figures are those of the ops that used a module's ``weight`` (wherever they
    ran: MHA's ``out_proj`` is used by its parent); weights not called ``weight`` (MHA's
    ``in_proj_weight``) appear under their full parameter name. The total counts every op
    the counter knows, attention products included (see :mod:`prunekit.core.flops`).
    """
    counted = count_flops(model, _example_input(model, input_shape, example_input))
    per_module = {}
    for name, ops in counted.dense.items():
        if ops:
            per_module[name[: -len(".weight")] if name.endswith(".weight") else name] = ops
    return per_module, counted.total


@dataclass
class LayerRow:
    name: str
    shape: Tuple[int, ...]
    params: int
    kept: int
    flops: int
    effective_flops: int
    aliases: Tuple[str, ...] = ()   # other names of a tied Parameter (counted once, here)

    @property
    def density(self) -> float:
        return self.kept / self.params if self.params else 1.0


@dataclass
class Report:
    """Per-layer and total figures of a (possibly pruned) model. ``str(report)`` is a table."""

    layers: List[LayerRow] = field(default_factory=list)
    total_params: int = 0
    nonzero_params: int = 0
    prunable_params: int = 0
    prunable_nonzero: int = 0
    flops: Optional[int] = None
    effective_flops: Optional[int] = None

    @property
    def sparsity(self) -> float:
        """Achieved sparsity over the prunable weights (what was actually zeroed)."""
        return 1.0 - self.prunable_nonzero / self.prunable_params if self.prunable_params else 0.0

    @property
    def compression(self) -> float:
        """Total parameters / nonzero parameters (the "12x" of Han et al.)."""
        return self.total_params / self.nonzero_params if self.nonzero_params else float("inf")

    def as_dict(self) -> dict:
        return {
            "total_params": self.total_params, "nonzero_params": self.nonzero_params,
            "prunable_params": self.prunable_params, "prunable_nonzero": self.prunable_nonzero,
            "sparsity": self.sparsity, "compression": self.compression,
            "flops": self.flops, "effective_flops": self.effective_flops,
            "layers": [{"name": r.name, "shape": list(r.shape), "params": r.params, "kept": r.kept,
                        "density": r.density, "flops": r.flops, "effective_flops": r.effective_flops,
                        "aliases": list(r.aliases)}
                       for r in self.layers],
        }

    def table(self) -> str:
        head = f"{'layer':<28} {'shape':<18} {'params':>10} {'kept':>10} {'density':>8} {'FLOPs':>12} {'eff. FLOPs':>12}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(f"{r.name[:28]:<28} {'x'.join(map(str, r.shape))[:18]:<18} {r.params:>10,} {r.kept:>10,} "
                         f"{r.density:>8.4f} {r.flops:>12,} {r.effective_flops:>12,}")
            for alias in r.aliases:
                lines.append(f"  = {alias}")
        lines.append("-" * len(head))
        lines.append(f"prunable: {self.prunable_nonzero:,} / {self.prunable_params:,} kept "
                     f"(sparsity {self.sparsity:.4f}); all parameters: {self.nonzero_params:,} nonzero / "
                     f"{self.total_params:,} ({self.compression:.2f}x)")
        if self.flops is not None:
            ratio = self.flops / self.effective_flops if self.effective_flops else float("inf")
            lines.append(f"FLOPs (batch 1): {self.flops:,} dense, {self.effective_flops:,} effective ({ratio:.2f}x fewer)")
        return "\n".join(lines)

    __str__ = table


def count_parameters(model: nn.Module, **target_kw) -> Dict[str, int]:
    """``{total, nonzero, prunable, prunable_nonzero}`` parameter counts."""
    params = list(model.parameters())
    prunable = prunable_parameters(model, **target_kw)
    return {
        "total": sum(p.numel() for p in params),
        "nonzero": sum(int(torch.count_nonzero(p)) for p in params),
        "prunable": sum(p.numel() for p in prunable.values()),
        "prunable_nonzero": sum(int(torch.count_nonzero(p)) for p in prunable.values()),
    }


def report(
    model: nn.Module,
    input_shape: Optional[Sequence[int]] = None,
    example_input: Optional[torch.Tensor] = None,
    flops: bool = True,
    include: Optional[Iterable[str] | str] = None,
    exclude: Optional[Iterable[str] | str] = None,
    types: Optional[Sequence[Type[nn.Module]]] = None,
) -> Report:
    """Per-layer report of ``model`` as it is now: nonzeros are counted in the weights
    themselves, so the figures are the achieved ones whatever produced the zeros. A tied
    Parameter is one row (its canonical name, its other names in ``aliases``), counted once.

    With ``flops=True`` an input shape is needed (``input_shape``, ``example_input`` or the
    model's ``.input_shape``).
    """
    targets = prunable_targets(model, include=include, exclude=exclude, types=types)
    prunable = {t.name: t.param for t in targets}
    counts = count_parameters(model, include=include, exclude=exclude, types=types)
    counted = None
    if flops:
        counted = count_flops(model, _example_input(model, input_shape, example_input), params=prunable)
    rows = []
    for t in targets:
        kept = int(torch.count_nonzero(t.param))
        dense_f = counted.dense.get(t.name, 0) if counted else 0
        eff_f = counted.effective.get(t.name, 0) if counted else 0
        rows.append(LayerRow(t.name, tuple(t.param.shape), t.param.numel(), kept, dense_f, eff_f, t.aliases[1:]))
    total_flops = counted.total if counted else None
    return Report(
        layers=rows, total_params=counts["total"], nonzero_params=counts["nonzero"],
        prunable_params=counts["prunable"], prunable_nonzero=counts["prunable_nonzero"],
        flops=total_flops, effective_flops=counted.effective_total if counted else None,
    )
