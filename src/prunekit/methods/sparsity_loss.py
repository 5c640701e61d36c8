"""Adaptive sparsity loss (seed 002, Retsinas et al., "adaptive" variants; SPEC.md section 3).

One trainable scalar r_i per layer sets the bound b_i = r_i sigma_i (sigma_i = std of the
layer's weights, detached; r_i clamped to [0, 5] where used as a bound, and projected back
into [0, 5] after every step). The forward weight is

    w~ = r sigma STE_hardshrink(w / (r sigma))       (value: w if |w| >= b else 0)

so dL/dw = dL/dw~ (straight-through) and dL/dr = sum_k ((w~_k - w_k) / r) dL/dw~_k. With
``recenter`` (default on, as in the authors' code) w is first re-centred to zero mean.

Under a Gaussian assumption layer i's sparsity is s_i = erf(r_i / sqrt 2); the predicted
density is L_s(c) = 1 - sum_i c_i s_i with sum c_i = 1 over the *pruned* layers, c_i = 1/N
(``avg``), #W_i / sum #W (``wavg``, default) or FLOPs_i / sum FLOPs (``flops``): the layers
skipped for having fewer than ``min_weights`` weights are left out of c, as the authors' code
builds c from the pruned layers only (issue #15 point 8; ``c_layers="all"`` counts them with
s_i = 0, the behaviour before, its ``legacy`` value). The penalty (``variant``):

- ``unconstrained``:  lambda L_s(c)                                                  (Eq. 8)
- ``budget``:         lambda_p (L_s(c_p) - B_p)^2 + lambda_f (L_s(c_f) - B_f)^2      (Eq. 10)
- ``hinge``:          lambda_p max(L_s(c_p) - B_p, 0) + lambda_f max(L_s(c_f) - B_f, 0) (Eq. 11)

c_p uses ``weights``, c_f always the FLOPs weights; ``budget`` = B_p, ``budget_flops`` = B_f
(fractions *kept*: 0.15 = 85% sparsity); either or both. Authors' defaults: lambda = 10;
r_0 = sqrt(2) erfinv(0.6 s_target), s_target = 1 - B_p (else 1 - B_f, else 0.5); r trained
at lr/100 (of the optimizer's first group) with no weight decay; layers with fewer than 1000
weights skipped. ``finalize()`` hard-prunes at b_i (the re-centred weights are what is kept).

Polarisation (opt-in, off by default): seed 002, section 3.4.4 ("Possible Extensions"), suggests
requiring "either very sparse or very dense layers, while approximating an overall target
sparsity s_t ... while s_i < s_l or s_i > s_u". The paper only states this constraint; the
penalty form is ours. With ``polar_low`` = s_l and ``polar_high`` = s_u (both, 0 <= s_l < s_u <= 1)
the variant's penalty above (which approximates the overall target) gets the extra term

    lambda_polar * (1/N) sum_i min(s_i - s_l, s_u - s_i)_+ ^2        (N = the trained layers)

on each trained layer's Gaussian-predicted sparsity s_i = erf(r_i / sqrt 2): zero for
s_i <= s_l or s_i >= s_u, positive in between, and its gradient pushes s_i towards the nearer
bound (down to s_l below the midpoint (s_l + s_u) / 2, up to s_u above it). Skipped layers
(s_i = 0, not trainable) are left out. ``lam_polar`` defaults to 10 (the paper's lambda).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import params as valid
from ..core.flops import count_flops
from ..core.mask import Mask
from ..core.targets import prunable_parameters
from ..params import param
from ._reparam import STEHardShrinkBound, WeightSubstitution
from .base import METHODS, Method

VARIANTS = ("unconstrained", "budget", "hinge")
WEIGHTS = ("avg", "wavg", "flops")
R_MAX = 5.0


def unit_interval(value: Any) -> None:
    """A sparsity threshold in [0, 1]."""
    if value is not None and not (not isinstance(value, bool) and isinstance(value, (int, float))
                                  and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"must be a sparsity in [0, 1], got {value!r}")

_R_MIN = 1e-6  # keeps the bound > 0 (division by b in the gradient)


@METHODS.register("sparsity_loss")
class SparsityLoss(Method):
    """Per-layer trainable bounds r_i with the adaptive sparsity loss (see the module docstring).

    Constructor-only arguments (not in ``Params``): ``r_lr`` (an absolute lr of r) and
    ``input_shape`` (for FLOPs weights, when the model has no ``.input_shape``).
    """

    @dataclass(kw_only=True)
    class Params:
        budget: Optional[float] = param(None, check=valid.fraction_kept,
                                        doc="B_p: fraction of the prunable parameters kept (0.15 = 85% sparsity)")
        budget_flops: Optional[float] = param(None, check=valid.fraction_kept, doc="B_f: fraction of the FLOPs kept")
        variant: Optional[str] = param(None, choices=VARIANTS,
                                       doc="unconstrained, budget (squared) or hinge (None: budget if one is set)")
        weights: str = param("wavg", choices=WEIGHTS, doc="layer weights c_i: avg, wavg (by parameters), flops")
        lam: float = param(10.0, check=valid.nonnegative, doc="lambda (also lambda_p / lambda_f unless given)")
        lam_p: Optional[float] = param(None, check=valid.nonnegative, doc="lambda_p of the parameter budget")
        lam_f: Optional[float] = param(None, check=valid.nonnegative, doc="lambda_f of the FLOPs budget")
        r_init: Optional[float] = param(None, check=valid.nonnegative,
                                        doc="initial r (None: sqrt(2) erfinv(0.6 s_target))")
        r_lr_factor: float = param(0.01, check=valid.nonnegative, doc="lr of r = this x the recipe's lr")
        min_weights: int = param(1000, check=valid.int_at_least(0), doc="layers with fewer weights are not pruned")
        c_layers: str = param("pruned", legacy="all", choices=("pruned", "all"),
                              doc="layers c_i runs over: pruned (authors' code) or all (skipped ones with s_i = 0)")
        recenter: bool = param(True, doc="re-centre each weight tensor to zero mean every forward")
        polar_low: Optional[float] = param(None, check=unit_interval,
                                           doc="s_l: layers pushed to sparsity <= s_l or >= s_u (with polar_high; off: None)")
        polar_high: Optional[float] = param(None, check=unit_interval,
                                            doc="s_u: the upper threshold of the polarisation penalty (with polar_low)")
        lam_polar: float = param(10.0, check=valid.nonnegative, doc="lambda of the polarisation penalty")
        include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
        exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")

    @classmethod
    def requested_sparsity(cls, params: Any) -> Optional[float]:
        """1 - B_p when a parameter budget is set."""
        return 1.0 - params.budget if params.budget is not None else None

    def __init__(self, budget: Optional[float] = None, budget_flops: Optional[float] = None,
                 variant: Optional[str] = None, weights: str = "wavg", lam: float = 10.0,
                 lam_p: Optional[float] = None, lam_f: Optional[float] = None,
                 r_init: Optional[float] = None, r_lr: Optional[float] = None, r_lr_factor: float = 0.01,
                 min_weights: int = 1000, recenter: bool = True, input_shape: Optional[Sequence[int]] = None,
                 c_layers: str = "pruned", polar_low: Optional[float] = None, polar_high: Optional[float] = None,
                 lam_polar: float = 10.0, include: Optional[Sequence[str]] = None,
                 exclude: Optional[Sequence[str]] = None):
        super().__init__()
        valid.check_arguments(self.Params, "sparsity_loss", budget=budget, budget_flops=budget_flops, variant=variant,
                              weights=weights, lam=lam, lam_p=lam_p, lam_f=lam_f, r_init=r_init,
                              r_lr_factor=r_lr_factor, min_weights=min_weights, c_layers=c_layers,
                              polar_low=polar_low, polar_high=polar_high, lam_polar=lam_polar)
        if (polar_low is None) != (polar_high is None):
            raise ValueError("sparsity_loss: polar_low and polar_high go together (layers sparser than polar_high "
                             f"or denser than polar_low), got polar_low={polar_low!r}, polar_high={polar_high!r}")
        if polar_low is not None and not float(polar_low) < float(polar_high):
            raise ValueError(f"sparsity_loss: polar_low must be < polar_high, got polar_low={polar_low!r}, "
                             f"polar_high={polar_high!r}")
        self.polar_low = float(polar_low) if polar_low is not None else None
        self.polar_high = float(polar_high) if polar_high is not None else None
        self.lam_polar = float(lam_polar)
        valid.check(valid.nonnegative, r_lr, "sparsity_loss: r_lr")
        if r_init is not None and not float(r_init) <= R_MAX:
            raise ValueError(f"sparsity_loss: r_init must be in [0, {R_MAX}], got {r_init!r}")
        self.budget = float(budget) if budget is not None else None
        self.budget_flops = float(budget_flops) if budget_flops is not None else None
        if variant is None:
            variant = "unconstrained" if self.budget is None and self.budget_flops is None else "budget"
        if variant != "unconstrained" and self.budget is None and self.budget_flops is None:
            raise ValueError(f"variant {variant!r} needs budget=... (parameters kept) and/or budget_flops=...")
        self.variant, self.weights = variant, weights
        self.lam = float(lam)
        self.lam_p = float(lam_p) if lam_p is not None else self.lam
        self.lam_f = float(lam_f) if lam_f is not None else self.lam
        self.r_init = r_init if r_init is not None else self.default_r_init()
        self.r_lr, self.r_lr_factor = r_lr, float(r_lr_factor)
        self.min_weights, self.recenter, self.c_layers = min_weights, bool(recenter), c_layers
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.include, self.exclude = include, exclude
        self.params: Dict[str, nn.Parameter] = {}
        self.r = nn.ParameterDict()
        self.names: List[str] = []          # prunable tensors, model order
        self.trained: List[str] = []        # those with a trainable r (not skipped)
        self._c: Dict[str, torch.Tensor] = {}
        self._sub: Optional[WeightSubstitution] = None
        self._pending: Optional[Dict[str, Any]] = None

    def default_r_init(self) -> float:
        if self.budget is not None:
            s_target = 1.0 - self.budget
        elif self.budget_flops is not None:
            s_target = 1.0 - self.budget_flops
        else:
            s_target = 0.5
        return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(0.6 * s_target, dtype=torch.float64)))

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "SparsityLoss":
        super().attach(model, optimizer)
        self.params = prunable_parameters(model, include=self.include, exclude=self.exclude)
        self.names = list(self.params)
        self.trained = [n for n in self.names if self.params[n].numel() >= self.min_weights]
        if not self.trained:
            raise ValueError(f"every prunable tensor has fewer than min_weights={self.min_weights} weights: "
                             "nothing to prune (lower min_weights)")
        first = next(iter(self.params.values()))
        device, dtype = first.device, first.dtype
        self.r = nn.ParameterDict({self._key(n): nn.Parameter(torch.tensor(float(self.r_init), device=device, dtype=dtype))
                                   for n in self.trained})
        self._c = self._contribution_weights(model, device, dtype)
        self._warn_unreachable_budgets()
        lr = self.r_lr if self.r_lr is not None else optimizer.param_groups[0]["lr"] * self.r_lr_factor
        group = {"params": list(self.r.values()), "lr": lr, "weight_decay": 0.0}
        if "momentum" in optimizer.param_groups[0]:
            group["momentum"] = optimizer.param_groups[0]["momentum"]
        optimizer.add_param_group(group)
        self._sub = WeightSubstitution(model, [n for n in self.trained], self._effective)
        if self._pending is not None:
            self._restore(self._pending)
        return self

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def density_floor(self, weights: Optional[str] = None) -> float:
        """The lowest predicted density L_s(c) reachable: the skipped layers' share sum c_i
        (they keep every weight) plus the trained layers' share at r = 5 (erf(5/sqrt 2) ~ 1)."""
        c = self._c[weights or self.weights]
        s_max = math.erf(R_MAX / math.sqrt(2.0))
        return float(sum(c[i] * (1.0 if n not in self.trained else 1.0 - s_max) for i, n in enumerate(self.names)))

    def _warn_unreachable_budgets(self) -> None:
        # A budget below the skipped layers' share can never be met: the loss would keep pulling
        # the trained layers towards r = 5 instead of settling at the budget.
        checks = [(self.budget, self.weights, "budget"), (self.budget_flops, "flops", "budget_flops")]
        for budget, weights, what in checks:
            if budget is None or self.variant == "unconstrained":
                continue
            floor = self.density_floor(weights)
            if budget < floor:
                skipped = len(self.names) - len(self.trained)
                warnings.warn(f"sparsity_loss: {what}={budget:g} is below what can be reached ({floor:.3f}): "
                              f"{skipped} layer(s) with fewer than min_weights={self.min_weights} weights are "
                              f"skipped and keep all their weights; lower min_weights or raise the budget",
                              stacklevel=3)

    def _contribution_weights(self, model: nn.Module, device, dtype) -> Dict[str, torch.Tensor]:
        n = len(self.names)
        sizes = torch.tensor([float(self.params[k].numel()) for k in self.names], dtype=torch.float64)
        c = {"avg": torch.full((n,), 1.0 / n, dtype=torch.float64), "wavg": sizes / sizes.sum()}
        if self.weights == "flops" or self.budget_flops is not None:
            shape = self.input_shape if self.input_shape is not None else getattr(model, "input_shape", None)
            if shape is None:
                raise ValueError("FLOPs weights need the input shape: pass input_shape=(C, H, W) "
                                 "(models from pk.models carry .input_shape)")
            example = torch.zeros((1, *shape), device=device, dtype=dtype)
            # FLOPs per prunable tensor by name (MHA's in_proj_weight and tied weights included)
            dense = count_flops(model, example, params=self.params).dense
            f = torch.tensor([float(dense.get(k, 0)) for k in self.names], dtype=torch.float64)
            if f.sum() <= 0:
                raise ValueError("could not count the FLOPs of the prunable layers (pass input_shape=...)")
            c["flops"] = f / f.sum()
        if self.c_layers == "pruned":  # the authors' code: c over the pruned layers only
            keep = torch.tensor([1.0 if k in self.trained else 0.0 for k in self.names], dtype=torch.float64)
            c = {k: v * keep / (v * keep).sum() for k, v in c.items()}
        return {k: v.to(device=device, dtype=dtype) for k, v in c.items()}

    def _r(self, name: str) -> torch.Tensor:
        return self.r[self._key(name)]

    def _centred(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - weight.mean() if self.recenter else weight

    def bound(self, name: str) -> torch.Tensor:
        """b_i = clamp(r_i, 0, 5) sigma_i (differentiable in r, sigma detached)."""
        w = self._centred(self.params[name].detach())
        return self._r(name).clamp(_R_MIN, R_MAX) * w.std()

    def _effective(self, name: str, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        w = self._centred(weight)
        b = self._r(name).clamp(_R_MIN, R_MAX) * w.detach().std()
        return STEHardShrinkBound.apply(w, b)

    def predicted_sparsities(self) -> torch.Tensor:
        """s_i = erf(r_i / sqrt 2) per prunable tensor (0 for skipped ones), differentiable."""
        first = next(iter(self.params.values()))
        zero = torch.zeros((), device=first.device, dtype=first.dtype)
        return torch.stack([torch.erf(self._r(n) / math.sqrt(2.0)) if n in self.trained else zero
                            for n in self.names])

    def predicted_density(self, weights: Optional[str] = None) -> torch.Tensor:
        """L_s(c) = 1 - sum_i c_i s_i."""
        return 1.0 - (self._c[weights or self.weights] * self.predicted_sparsities()).sum()

    def polar_penalty(self) -> torch.Tensor:
        """lambda_polar * mean over the trained layers of min(s_i - s_l, s_u - s_i)_+ ^2 (see the
        module docstring; zero when polarisation is off)."""
        self._require_attached()
        if self.polar_low is None:
            first = next(iter(self.params.values()))
            return torch.zeros((), device=first.device, dtype=first.dtype)
        # s_i of the trained layers only, straight from their r_i (no mask, no device copy)
        s = torch.stack([torch.erf(self._r(n) / math.sqrt(2.0)) for n in self.names if n in self.trained])
        inside = torch.minimum(s - self.polar_low, self.polar_high - s).clamp(min=0)
        return self.lam_polar * (inside ** 2).mean()

    def penalty(self) -> torch.Tensor:
        self._require_attached()
        total = self._budget_penalty()
        if self.polar_low is not None:
            total = total + self.polar_penalty()
        return total

    def _budget_penalty(self) -> torch.Tensor:
        if self.variant == "unconstrained":
            return self.lam * self.predicted_density()
        s = self.predicted_sparsities()
        total = torch.zeros((), device=s.device)
        terms = []
        if self.budget is not None:
            terms.append((self.lam_p, 1.0 - (self._c[self.weights] * s).sum(), self.budget))
        if self.budget_flops is not None:
            terms.append((self.lam_f, 1.0 - (self._c["flops"] * s).sum(), self.budget_flops))
        for lam, density, budget in terms:
            gap = density - budget
            total = total + lam * (gap ** 2 if self.variant == "budget" else gap.clamp(min=0))
        return total

    def step(self) -> None:
        self._require_attached()
        super().step()
        with torch.no_grad():
            for r in self.r.values():
                r.clamp_(0.0, R_MAX)

    @torch.no_grad()
    def keep_masks(self) -> Dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            if n in self.trained:
                out[n] = self._centred(self.params[n]).abs() >= self.bound(n)
            else:
                out[n] = torch.ones_like(self.params[n], dtype=torch.bool)
        return out

    def finalize(self) -> Mask:
        """Hard-prune at b_i (re-centred weights), remove the hooks; plain model, exact zeros."""
        self._require_attached()
        with torch.no_grad():
            masks = self.keep_masks()
            for n in self.trained:
                p = self.params[n]
                p.copy_(self._centred(p) * masks[n].to(p.dtype))
        if self._sub is not None:
            self._sub.remove()
            self._sub = None
        for r in self.r.values():
            r.requires_grad_(False)
        mask = Mask(masks, self.model)
        mask.apply()   # the weights are zero there already; this marks them as carrying a mask
        return mask

    def metrics(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"budget": self.budget, "budget_flops": self.budget_flops}
        if self.model is None or not self.names:
            return out
        masks = self.keep_masks()
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        out["sparsity"] = 1.0 - kept / total
        with torch.no_grad():
            out["predicted_density"] = float(self.predicted_density("wavg"))
            if "flops" in self._c:
                dens = torch.tensor([float(masks[n].float().mean()) for n in self.names], device=self._c["flops"].device)
                out["flops_density"] = float((self._c["flops"] * dens).sum())
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "r": {n: float(self._r(n).detach()) for n in self.trained}}

    def _restore(self, state: Dict[str, Any]) -> None:
        self._pending = None
        self.steps = int(state.get("steps", 0))
        with torch.no_grad():
            for n, v in (state.get("r") or {}).items():
                if self._key(n) in self.r:
                    self.r[self._key(n)].fill_(float(v))
