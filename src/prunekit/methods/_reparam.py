"""Forward-time weight substitution shared by the threshold methods (ste_fixed, sparsity_loss, ltp).

Mechanism. The module keeps its ``weight`` :class:`~torch.nn.Parameter` (the dense, trained
tensor) in ``module._parameters`` all the time, so ``state_dict()`` keys, ``named_parameters()``
and the optimizer see the dense model. A forward *pre-hook* computes the effective weight
``fn(module, weight)`` (with autograd, so gradients flow back to the dense weight and to the
method's thresholds) and puts it in the instance ``__dict__`` under ``"weight"``. Python's
attribute lookup finds an instance-dict entry before ``nn.Module.__getattr__`` consults
``_parameters``, so the module's own ``forward`` (``F.conv2d(x, self.weight, ...)``,
``F.linear``; grouped / depthwise convs and anything else reading ``self.weight``) uses the
effective weight for that call. A forward hook removes the entry again, so outside a forward
``module.weight`` is the Parameter. ``remove()`` (called by every ``finalize()``) drops both
hooks and any leftover entry: the model is plain again.

Nothing here touches BatchNorm or biases, so BN models work unchanged.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import torch
from torch import nn

WeightFn = Callable[[str, nn.Module, torch.Tensor], torch.Tensor]


class WeightSubstitution:
    """Substitute ``fn(name, module, module.weight)`` for ``module.weight`` during every forward
    of each module in ``modules`` (``{parameter name: module}``)."""

    def __init__(self, modules: Dict[str, nn.Module], fn: WeightFn):
        self.modules = dict(modules)
        self.fn = fn
        self._handles: List = []
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, name: str):
        def hook(module: nn.Module, args):
            weight = module._parameters["weight"]
            module.__dict__["weight"] = self.fn(name, module, weight)
        return hook

    @staticmethod
    def _post(module: nn.Module, args, output):
        module.__dict__.pop("weight", None)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for module in self.modules.values():
            module.__dict__.pop("weight", None)


def modules_of(model: nn.Module, names) -> Dict[str, nn.Module]:
    """``{"a.b.weight": module a.b}`` for parameter names of module weights."""
    mods = dict(model.named_modules())
    return {n: mods[n.rsplit(".", 1)[0] if "." in n else ""] for n in names}


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
