"""Accounting: parameters, nonzeros, FLOPs (dense and effective) per layer and in total.

FLOPs are counted by ``torch.utils.flop_counter`` (2 FLOPs per multiply-add of convolutions
and matrix products; elementwise ops, norms and pooling are not counted). The *effective*
FLOPs of a prunable layer are its dense FLOPs times the density of its weight, the usual
convention for unstructured sparsity (what a sparse kernel would have to compute).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .targets import prunable_parameters


def _example_input(model: nn.Module, input_shape: Optional[Sequence[int]], example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is not None:
        return example_input
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("FLOPs need an input: pass input_shape=(C, H, W) or example_input=..., "
                         "or use a model from pk.models (they carry .input_shape)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((1, *shape), device=device)


@torch.no_grad()
def flops_per_module(model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                     example_input: Optional[torch.Tensor] = None) -> Tuple[Dict[str, int], int]:
    """Dense FLOPs of one forward pass at batch 1: ``({module name: flops}, total)``.

    Per-module figures are those of modules that own a ``weight`` (conv, linear); the total
    counts every op the counter knows.
    """
    x = _example_input(model, input_shape, example_input)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    per_module = {}
    for name, module in model.named_modules():
        if not name or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        ops = counts.get(f"{prefix}.{name}")
        if ops:
            per_module[name] = int(sum(ops.values()))
    return per_module, int(counter.get_total_flops())


@dataclass
class LayerRow:
    name: str
    shape: Tuple[int, ...]
    params: int
    kept: int
    flops: int
    effective_flops: int

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
                        "density": r.density, "flops": r.flops, "effective_flops": r.effective_flops}
                       for r in self.layers],
        }

    def table(self) -> str:
        head = f"{'layer':<28} {'shape':<18} {'params':>10} {'kept':>10} {'density':>8} {'FLOPs':>12} {'eff. FLOPs':>12}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(f"{r.name[:28]:<28} {'x'.join(map(str, r.shape))[:18]:<18} {r.params:>10,} {r.kept:>10,} "
                         f"{r.density:>8.4f} {r.flops:>12,} {r.effective_flops:>12,}")
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
    themselves, so the figures are the achieved ones whatever produced the zeros.

    With ``flops=True`` an input shape is needed (``input_shape``, ``example_input`` or the
    model's ``.input_shape``).
    """
    prunable = prunable_parameters(model, include=include, exclude=exclude, types=types)
    counts = count_parameters(model, include=include, exclude=exclude, types=types)
    per_module, total_flops = ({}, None)
    if flops:
        per_module, total_flops = flops_per_module(model, input_shape, example_input)
    rows = []
    saved = 0
    for name, p in prunable.items():
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        kept = int(torch.count_nonzero(p))
        dense_f = per_module.get(module_name, 0)
        eff_f = int(round(dense_f * kept / p.numel())) if p.numel() else 0
        saved += dense_f - eff_f
        rows.append(LayerRow(name, tuple(p.shape), p.numel(), kept, dense_f, eff_f))
    return Report(
        layers=rows, total_params=counts["total"], nonzero_params=counts["nonzero"],
        prunable_params=counts["prunable"], prunable_nonzero=counts["prunable_nonzero"],
        flops=total_flops, effective_flops=(total_flops - saved) if total_flops is not None else None,
    )
