"""Fixed per-layer sparsity with a straight-through estimator (seed 002, Retsinas et al., the
"fixed" variants; SPEC.md section 3).

Every forward pass prunes each layer to sparsity ``s`` with a bound ``b`` recomputed from the
current weights: ``w~ = w if |w| >= b else 0``. The bound comes from

- ``"binary_search"`` (BS, the paper's baseline): bisection until |#{|w| < b}/#W - s| < eps;
- ``"gaussian"`` (GA): b = sigma sqrt(2) erfinv(s), sigma = std(W);
- ``"topk"``: exact top-k by magnitude (exactly round(s #W) pruned, ties to the lower index).

The backward pass is straight-through (identity), so pruned weights keep receiving gradients
and can come back. ``ste=False`` is seed 002's ablation (Sec. 3.3.3, Fig. 3a): back-propagate
through the hard-shrink itself, so pruned weights get no gradient; with GA the weight
distribution stops being bell-shaped and the sparsity overshoots (paper: 85% requested ->
93.2% without STE, 85.6% with).

Layers with fewer than ``min_weights`` weights (default 1000) stay dense, as in the authors'
code for every variant and as the sparsity loss does (SPEC section 3); ``min_weights=0``
prunes every layer, the behaviour before issue #15 (its ``legacy`` value, so old run ids keep
their meaning). The forward weight is substituted by a forward pre-hook
(:mod:`prunekit.methods._reparam`); state_dict keys stay the dense model's. The mask is
recomputed only when the weight changed (its version counter), i.e. once per optimizer step.

    method = prunekit.methods.get("ste_fixed")(sparsity=0.85, bound="gaussian")
    method.attach(model, optimizer)
    ...  # train
    mask = method.finalize()     # hard-prunes at the current bounds; plain model

Learning rate: pruned weights keep receiving gradients they have no effect on, so at very high
sparsity they drift, the kept set churns and one large step can kill every ReLU of a layer; the
network then outputs a constant and never recovers (``fit`` warns: ``CollapseWarning``). On
Fashion-MNIST LeNet-5 (no BatchNorm) at 98-99%, SGD lr 0.05 left 5 of 12 leaderboard runs at
chance, lr 0.01 none (10 epochs, 98 / 99%: 87.11 / 85.32% top-1 against 85.89 / 32.14% at lr
0.05; BENCHMARKS.md, "Leaderboard" and "ste_fixed at 99% on LeNet-5"). Give it a lower lr than
magnitude methods need there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import params as valid
from ..core.mask import Mask
from ..core.prune import check_sparsity
from ..core.targets import prunable_parameters
from ..core.thresholds import topk_mask
from ..params import param
from ._reparam import STEMask, WeightSubstitution, binary_search_bound, gaussian_bound
from .base import METHODS, Method

BOUNDS = ("binary_search", "gaussian", "topk")


def fixed_keep_mask(weight: torch.Tensor, sparsity: float, bound: str, eps: float = 1e-3) -> torch.Tensor:
    """The keep-mask of one layer at ``sparsity`` under the bound rule ``bound``."""
    w = weight.detach()
    if bound == "topk":
        keep = int(round((1.0 - sparsity) * w.numel()))
        return topk_mask(w.abs(), keep)
    if bound == "gaussian":
        b = gaussian_bound(w, sparsity)
    elif bound == "binary_search":
        b = binary_search_bound(w, sparsity, eps)
    else:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    return w.abs() >= b


@METHODS.register("ste_fixed")
class STEFixed(Method):
    """Fixed sparsity per layer, pruned in the forward pass, straight-through backward.

    - ``sparsity``: the fraction of every prunable layer's weights pruned, in [0, 1);
    - ``bound``: ``"binary_search"`` (tolerance ``eps``), ``"gaussian"`` or ``"topk"``;
    - ``min_weights``: smaller layers stay dense; ``ste``: straight-through backward;
    - ``include`` / ``exclude``: name patterns of the prunable tensors (as ``prunekit.prune``).

    ``metrics()`` reports the achieved ``sparsity`` (over all prunable weights) and
    ``requested_sparsity``.
    """

    @dataclass(kw_only=True)
    class Params:
        sparsity: float = param(check=valid.sparsity, example=0.7,
                                doc="fraction of every prunable layer's weights pruned")
        bound: str = param("binary_search", choices=BOUNDS, doc="how the bound is found: binary_search, gaussian, topk")
        eps: float = param(1e-3, check=valid.open_unit, doc="binary search tolerance on the pruned fraction")
        min_weights: int = param(1000, legacy=0, check=valid.int_at_least(0),
                                 doc="layers with fewer weights are not pruned (authors' code; 0: prune all)")
        ste: bool = param(True, doc="straight-through backward (off: seed 002's ablation, no gradient to pruned weights)")
        include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
        exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")

    @classmethod
    def requested_sparsity(cls, params: Any) -> Optional[float]:
        return params.sparsity

    def __init__(self, sparsity: float, bound: str = "binary_search", eps: float = 1e-3,
                 min_weights: int = 1000, ste: bool = True,
                 include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None):
        super().__init__()
        self.sparsity = check_sparsity(sparsity, "ste_fixed: sparsity")
        valid.check_arguments(self.Params, "ste_fixed", bound=bound, eps=eps, min_weights=min_weights)
        self.bound, self.eps = bound, float(eps)
        self.min_weights, self.ste = int(min_weights), bool(ste)
        self.include, self.exclude = include, exclude
        self.params: Dict[str, nn.Parameter] = {}
        self._cache: Dict[str, Any] = {}
        self._sub: Optional[WeightSubstitution] = None

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "STEFixed":
        super().attach(model, optimizer)
        every = prunable_parameters(model, include=self.include, exclude=self.exclude)
        self.params = {n: p for n, p in every.items() if p.numel() >= self.min_weights}
        if not self.params:
            raise ValueError(f"ste_fixed: every prunable tensor has fewer than min_weights={self.min_weights} "
                             "weights: nothing to prune (lower min_weights)")
        self.skipped = [n for n in every if n not in self.params]
        self._sub = WeightSubstitution(model, self.params, self._effective)
        return self

    def keep_mask(self, name: str) -> torch.Tensor:
        """The current keep-mask of tensor ``name`` (cached per weight version)."""
        w = self.params[name]
        key = (w._version, w.data_ptr())
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, fixed_keep_mask(w, self.sparsity, self.bound, self.eps))
            self._cache[name] = cached
        return cached[1]

    def _effective(self, name: str, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        keep = self.keep_mask(name)
        if not self.ste:  # the plain hard-shrink: pruned weights get no gradient
            return weight * keep.to(weight.dtype)
        return STEMask.apply(weight, keep)

    def current_mask(self) -> Mask:
        """Skipped (small) layers are all ones: the mask covers every prunable tensor."""
        every = prunable_parameters(self.model, include=self.include, exclude=self.exclude)
        return Mask({n: self.keep_mask(n).clone() if n in self.params else torch.ones_like(p, dtype=torch.bool)
                     for n, p in every.items()}, self.model)

    def finalize(self) -> Mask:
        """Hard-prune at the current bounds, remove the hooks, return the Mask."""
        self._require_attached()
        mask = self.current_mask()
        if self._sub is not None:
            self._sub.remove()
            self._sub = None
        mask.apply()
        self._cache.clear()
        return mask

    def metrics(self) -> Dict[str, Any]:
        if self.model is None or self._sub is None:
            return {"requested_sparsity": self.sparsity}
        every = prunable_parameters(self.model, include=self.include, exclude=self.exclude)
        kept = sum(int(self.keep_mask(n).sum()) if n in self.params else p.numel() for n, p in every.items())
        total = sum(p.numel() for p in every.values())
        return {"requested_sparsity": self.sparsity, "sparsity": 1.0 - kept / total}
