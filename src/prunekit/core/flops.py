"""FLOPs of one forward pass, attributed to the weight tensors that take part in them.

Why not ``FlopCounterMode`` alone: it attributes FLOPs to the module whose ``forward`` is
running, which is wrong wherever a module uses another module's weight directly.
``nn.MultiheadAttention`` calls ``F.linear`` with ``out_proj.weight`` (the ``out_proj``
module never runs) and multiplies by ``in_proj_weight``, which no module owns; tied weights
run under several modules. And two paths are not counted at all: the fused MHA fast path
(``aten._native_multi_head_attention``, taken in eval mode) and the CPU kernel of
``scaled_dot_product_attention``. On vit_b_16 that left 22.5 of 35.1 GFLOPs.

So this module counts every op the counter has a formula for (2 FLOPs per multiply-add of
matrix products and convolutions; elementwise ops, norms and softmax are not counted, the
usual convention) and attributes each op to the parameter whose storage one of its arguments
views (``weight.t()``, a chunk of ``in_proj_weight``). The MHA fast path is switched off
while counting so that attention runs as matmuls + SDPA, and SDPA's CPU kernel gets the same
formula as its CUDA kernels: 4·B·H·L·S·E (QKᵀ and AV).

The *effective* FLOPs of an op are its FLOPs times the density of the weight view it used
(what a sparse kernel would compute), so a chunk of a packed projection counts its own zeros.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from .calling import call_model

aten = torch.ops.aten


def _sdpa_cpu_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu`` (QKᵀ and AV)."""
    return sdpa_flop_count(query.shape, key.shape, value.shape)


# Ops with a FLOP formula: torch's own registry plus the CPU attention kernel it lacks.
_FORMULAS = dict(flop_registry)
if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


@dataclass
class FlopCount:
    """``total``: every counted op; ``dense`` / ``effective``: per parameter name, the FLOPs
    of the ops that used that weight, and the same times the density of the weight used."""

    total: int = 0
    dense: Dict[str, int] = field(default_factory=dict)
    effective: Dict[str, int] = field(default_factory=dict)

    @property
    def effective_total(self) -> int:
        """The total with every attributed op counted at its weight's density."""
        saved = sum(self.dense[n] - self.effective[n] for n in self.dense)
        return self.total - saved


class _Owners:
    """Finds which parameter (if any) a tensor is a view of, by storage and element range."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        self._by_storage: Dict[int, List[Tuple[int, int, str]]] = defaultdict(list)
        for name, p in params.items():
            if p.numel():
                start = p.storage_offset()
                self._by_storage[p.untyped_storage().data_ptr()].append((start, start + p.numel(), name))

    def owner(self, t: torch.Tensor) -> Optional[str]:
        if not isinstance(t, torch.Tensor) or t.is_sparse or t.layout != torch.strided or not t.numel():
            return None
        candidates = self._by_storage.get(t.untyped_storage().data_ptr())
        if not candidates:
            return None
        first = t.storage_offset()
        last = first + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
        for start, end, name in candidates:
            if start <= first and last < end:
                return name
        return None


class _AttributingCounter(TorchDispatchMode):
    def __init__(self, owners: _Owners):
        super().__init__()
        self.owners = owners
        self.count = FlopCount()
        self._dense: Dict[str, int] = defaultdict(int)
        self._effective: Dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FORMULAS.get(func._overloadpacket) or _FORMULAS.get(func)
        if formula is None:
            return out
        flops = int(formula(*args, **kwargs, out_val=out))
        self.count.total += flops
        for arg in args:
            name = self.owners.owner(arg)
            if name is not None:
                density = float(torch.count_nonzero(arg)) / arg.numel()
                self._dense[name] += flops
                self._effective[name] += flops * density
                break
        return out

    def result(self) -> FlopCount:
        self.count.dense = dict(self._dense)
        self.count.effective = {n: int(round(v)) for n, v in self._effective.items()}
        return self.count


@torch.no_grad()
def count_flops(model: nn.Module, example_input, params: Optional[Mapping[str, torch.Tensor]] = None) -> FlopCount:
    """Count one forward pass of ``model`` on ``example_input`` (a tensor, a tuple of
    positional arguments or a dict of keyword arguments), in eval mode.

    ``params``: ``{name: tensor}`` the FLOPs are attributed to (default: every parameter of
    two or more dimensions, i.e. the weights, each shared Parameter under its first name;
    biases are left out so that ``addmm(bias, x, weight.t())`` goes to the weight).
    """
    if params is None:
        params = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    counter = _AttributingCounter(_Owners(params))
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    # The fused MHA kernel hides its matmuls from any counter: run the unfused path.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter:
            call_model(model, example_input)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return counter.result()
