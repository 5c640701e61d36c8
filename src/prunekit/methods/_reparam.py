"""Forward-time weight substitution shared by the threshold methods (ste_fixed, sparsity_loss, ltp).

Mechanism. The module keeps its ``weight`` :class:`~torch.nn.Parameter` (the dense, trained
tensor) in ``module._parameters`` all the time, so ``state_dict()`` keys, ``named_parameters()``
and the optimizer see the dense model. A forward *pre-hook* computes the effective weight
``fn(name, module, weight)`` (with autograd, so gradients flow back to the dense weight and to
the method's thresholds) and puts it in the instance ``__dict__`` under ``"weight"``. Python's
attribute lookup finds an instance-dict entry before ``nn.Module.__getattr__`` consults
``_parameters``, so the module's own ``forward`` (``F.conv2d(x, self.weight, ...)``,
``F.linear``; grouped / depthwise convs and anything else reading ``self.weight``) uses the
effective weight for that call. A forward hook removes the entry again, so outside a forward
``module.weight`` is the Parameter. ``remove()`` (called by every ``finalize()``) drops both
hooks and any leftover entry: the model is plain again.

The hooks sit on the module whose forward *reads* the Parameter, which is not always its
owner: ``nn.MultiheadAttention`` reads ``out_proj.weight`` and ``in_proj_weight`` itself, so
those are substituted around the MHA forward; a tied Parameter is substituted at every module
that reads it (:func:`sites_of`).

Nothing here touches BatchNorm or biases, so BN models work unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from ..core.targets import parameter_names

WeightFn = Callable[[str, nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """Where a prunable Parameter is read: ``owner.<attr>`` during the forward of ``reader``.

    Usually ``reader is owner`` (a Linear reads ``self.weight``). ``nn.MultiheadAttention``
    reads ``self.in_proj_weight`` and ``self.out_proj.weight`` in its own forward (the
    ``out_proj`` module never runs), so for ``out_proj.weight`` the reader is the parent.
    """

    reader: nn.Module
    owner: nn.Module
    attr: str


def sites_of(model: nn.Module, names) -> Dict[str, List[Site]]:
    """``{canonical parameter name: [Site, ...]}``: every place each named Parameter is read.

    A tied Parameter has one site per name (BERT's word embeddings and its MLM decoder), so
    substituting it changes every use of it, not only the first.
    """
    modules = dict(model.named_modules())
    by_name = dict(model.named_parameters(remove_duplicate=False))
    all_names = parameter_names(model)
    sites: Dict[str, List[Site]] = {}
    for name in names:
        found = []
        for alias in all_names[id(by_name[name])]:
            owner_name, _, attr = alias.rpartition(".")
            owner = modules[owner_name]
            reader = owner
            parent_name, _, child = owner_name.rpartition(".")
            parent = modules.get(parent_name) if owner_name else None
            if isinstance(parent, nn.MultiheadAttention) and child == "out_proj":
                reader = parent
            found.append(Site(reader, owner, attr))
        sites[name] = found
    return sites


class WeightSubstitution:
    """Substitute ``fn(name, reader, weight)`` for each named Parameter during every forward
    of the modules that read it (see :func:`sites_of`), in ``model``.

    While attached to a model with attention layers, torch's fused transformer fast paths are switched off for the duration
    of each forward of ``model`` (``torch.backends.mha.set_fastpath_enabled``): in eval mode
    without grad, ``nn.TransformerEncoderLayer`` may call one fused kernel with the
    Parameters of its attention and feed-forward layers, bypassing the forwards (and so the
    hooks) of MHA and of ``linear1`` / ``linear2``. Recent torch (2.13) already refuses that
    path when hooks sit on the layer's submodules; the switch makes substitution independent
    of the torch version. MHA's own fast path reads the substituted attributes, so it would
    be correct either way. The flag is restored after the forward, also when it raises.
    """

    def __init__(self, model: nn.Module, names, fn: WeightFn):
        self.sites = sites_of(model, names)
        self.fn = fn
        self._handles: List = []
        self._fastpath_saved: List[bool] = []
        by_reader: Dict[int, Tuple[nn.Module, List[Tuple[str, Site]]]] = {}
        for name, sites in self.sites.items():
            for site in sites:
                by_reader.setdefault(id(site.reader), (site.reader, []))[1].append((name, site))
        for reader, entries in by_reader.values():
            self._handles.append(reader.register_forward_pre_hook(self._pre(entries)))
            self._handles.append(reader.register_forward_hook(self._post(entries), always_call=True))
        # only models with fused-attention layers pay for the switch (two hooks per forward)
        if any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
               for m in model.modules()):
            self._handles.append(model.register_forward_pre_hook(self._fastpath_off))
            self._handles.append(model.register_forward_hook(self._fastpath_restore, always_call=True))

    def _pre(self, entries: List[Tuple[str, "Site"]]):
        def hook(reader: nn.Module, args):
            for name, site in entries:
                weight = site.owner._parameters[site.attr]
                site.owner.__dict__[site.attr] = self.fn(name, reader, weight)
        return hook

    @staticmethod
    def _post(entries: List[Tuple[str, "Site"]]):
        def hook(reader: nn.Module, args, output):
            for _, site in entries:
                site.owner.__dict__.pop(site.attr, None)
        return hook

    def _fastpath_off(self, module: nn.Module, args) -> None:
        self._fastpath_saved.append(torch.backends.mha.get_fastpath_enabled())
        torch.backends.mha.set_fastpath_enabled(False)

    def _fastpath_restore(self, module: nn.Module, args, output) -> None:
        if self._fastpath_saved:
            torch.backends.mha.set_fastpath_enabled(self._fastpath_saved.pop())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for sites in self.sites.values():
            for site in sites:
                site.owner.__dict__.pop(site.attr, None)


class STEMask(torch.autograd.Function):
    """Forward ``w * keep`` (exact zeros), backward the identity (straight-through)."""

    @staticmethod
    def forward(ctx, w, keep):
        return w * keep.to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class STEHardShrinkBound(torch.autograd.Function):
    """``w~ = w if |w| >= b else 0`` with the gradients of ``b * STE_hardshrink(w / b)``:
    dL/dw = dL/dw~ (straight-through) and dL/db = sum((w~ - w) / b * dL/dw~) (SPEC.md section 3).
    The forward value is computed as ``w * (|w| >= b)``, so it equals the hard-pruned weight
    bit for bit (``b * (w / b)`` would not)."""

    @staticmethod
    def forward(ctx, w, b):
        out = w * (w.abs() >= b).to(w.dtype)
        ctx.save_for_backward(w, out, b)
        return out

    @staticmethod
    def backward(ctx, grad):
        w, out, b = ctx.saved_tensors
        grad_b = None
        if ctx.needs_input_grad[1]:
            grad_b = (grad * (out - w)).sum() / b
            grad_b = grad_b.reshape(b.shape)
        return grad, grad_b


def gaussian_bound(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """b = sigma * sqrt(2) * erfinv(s), sigma = std(W): the magnitude below which a fraction s
    of a zero-mean Gaussian lies."""
    s = torch.tensor(float(sparsity), dtype=weight.dtype, device=weight.device)
    return weight.detach().std() * math.sqrt(2.0) * torch.erfinv(s)


def binary_search_bound(weight: torch.Tensor, sparsity: float, eps: float = 1e-3, max_iter: int = 100) -> torch.Tensor:
    """b with |#{|w| < b} / #W - s| < eps, by bisection on [0, max|w|] (the paper's baseline).
    If ties make eps unreachable, the bound whose pruned fraction is closest to s is returned."""
    a = weight.detach().abs().reshape(-1)
    n = a.numel()
    lo = torch.zeros((), dtype=a.dtype, device=a.device)
    hi = a.max() * (1 + 1e-6) + torch.finfo(a.dtype).tiny
    best, best_err = hi, float("inf")
    for _ in range(max_iter):
        mid = (lo + hi) / 2
        frac = float((a < mid).sum()) / n
        err = abs(frac - sparsity)
        if err < best_err:
            best, best_err = mid, err
        if err < eps:
            return mid
        if frac < sparsity:
            lo = mid
        else:
            hi = mid
    return best
