"""Learned threshold pruning, LTP (seed 000, Azarian et al.; SPEC.md section 4).

Training forward (soft pruning), one trainable threshold tau_l per layer:

    v = w * sigmoid((w^2 - tau_l) / T_l),      T_l = T0 * var(w_l)   (var detached, T0 = 1e-3)

Backward: the sigmoid factor is a constant w.r.t. w (dv/dw = the mask value, which avoids
premature stopping of pruning) while tau_l gets the full gradient. The penalty is the
differentiable L0 norm, normalised by the number of prunable weights N:

    lambda / N * sum_l sum_k sigmoid((w_k^2 - tau_l) / T_l)      (gradient reaches w and tau)

Evaluation (``model.eval()``) uses the hard mask w^2 >= tau_l, the same as ``finalize()``,
so the finalized model's accuracy equals the last one evaluated. Then fine-tune with the
fixed mask (``prunekit.core.enforce(mask, optimizer)``).

Choices (documented, configurable): tau_l >= 0 (projected after every step); initialised to
0 (nothing pruned) or to the value giving ``init_sparsity`` per layer; trained with its own
learning rate ``tau_lr`` and no weight decay. ``relative=False`` (default, the paper: Azarian
et al. Eq. 4-6 train tau_l itself, SPEC section 4) trains tau_l directly; ``relative=True``
stores the threshold in units of the layer's variance, tau_l = t_l var(w_l) (var detached), so
that the trainable t_l, its learning rate and lambda mean the same for every layer and under
BatchNorm rescaling. ``relative=True`` was the default before issue #15; the field carries
``legacy=True``, so run ids made then keep their meaning (see ``prunekit.params``).

Trail of checkpoints: whenever the hard sparsity first reaches each of ``trail`` (default
50/70/80/90/95/98%), a checkpoint of the hard-pruned model is taken: written to
``trail_dir/ltp_s{level}.pt`` (a plain state_dict, the mask, the sparsity and the step) when
``trail_dir`` is set, else kept in memory; ``method.trail`` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import distributed
from .. import params as valid
from ..core.mask import Mask
from ..core.prune import check_sparsity
from ..core.targets import parameter_names, prunable_parameters
from ..io import atomic_torch_save
from ..params import param
from ._reparam import WeightSubstitution
from .base import METHODS, Method

DEFAULT_TRAIL = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@METHODS.register("ltp")
class LTP(Method):
    """Learned threshold pruning (see the module docstring).

    - ``lam``: weight of the normalised L0 penalty; ``T0``: temperature factor;
    - ``tau_lr``: learning rate of the thresholds (None: the optimizer's first group's lr, times
      min_l var(w_l)^2 for absolute tau: see ``_tau_lr``);
    - ``init_sparsity``: per-layer starting sparsity the thresholds are set to (0: tau = 0);
    - ``relative``: threshold in units of var(w), or absolute (default, as in the paper);
    - ``trail``: sparsity levels at which a checkpoint is taken; ``trail_dir``: where to write them;
    - ``trail_every``: check the sparsity every this many steps.

    ``trail_dir`` and ``trail_every`` are constructor-only (not in ``Params``): where and how
    often, not what is trained.
    """

    @dataclass(kw_only=True)
    class Params:
        lam: float = param(1.0, check=valid.nonnegative, doc="weight of the L0 penalty (normalised by the weight count)")
        T0: float = param(1e-3, check=valid.positive, doc="temperature T_l = T0 var(w_l)")
        tau_lr: Optional[float] = param(None, check=valid.nonnegative,
                                        doc="lr of the thresholds (None: the recipe's; for absolute tau "
                                            "times min_l var(w_l)^2)")
        init_sparsity: float = param(0.0, check=valid.sparsity, doc="per-layer sparsity the thresholds start at")
        relative: bool = param(False, legacy=True, flag="--relative-tau",
                               doc="threshold in units of var(w) (scale invariant); default: tau itself, as the paper")
        trail: List[float] = param(list(DEFAULT_TRAIL), check=valid.each(valid.sparsity),
                                   doc="sparsity levels at which a checkpoint is taken")
        include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
        exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")

    def __init__(self, lam: float = 1.0, T0: float = 1e-3, tau_lr: Optional[float] = None,
                 init_sparsity: float = 0.0, relative: bool = False, trail: Sequence[float] = DEFAULT_TRAIL,
                 trail_dir: Optional[str] = None, trail_every: int = 1,
                 include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None):
        super().__init__()
        valid.check_arguments(self.Params, "ltp", lam=lam, T0=T0, tau_lr=tau_lr)
        valid.check(valid.int_at_least(1), trail_every, "ltp: trail_every")
        self.lam, self.T0, self.tau_lr = float(lam), float(T0), tau_lr
        self.init_sparsity = check_sparsity(init_sparsity, "ltp: init_sparsity")
        self.relative = bool(relative)
        self.levels = sorted(check_sparsity(s, "ltp: trail") for s in trail)
        self.trail_dir = Path(trail_dir) if trail_dir is not None else None
        self.trail_every = trail_every
        self.include, self.exclude = include, exclude
        self.params: Dict[str, nn.Parameter] = {}
        self.tau = nn.ParameterDict()
        self.trail: List[Dict[str, Any]] = []
        self._sub: Optional[WeightSubstitution] = None
        self._pending: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ thresholds
    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _scale(self, name: str) -> torch.Tensor:
        return self.params[name].detach().var() if self.relative else torch.ones((), device=self.params[name].device)

    def threshold(self, name: str) -> torch.Tensor:
        """tau_l (>= 0), differentiable in the trained parameter."""
        return self.tau[self._key(name)].clamp(min=0.0) * self._scale(name)

    def temperature(self, name: str) -> torch.Tensor:
        return self.T0 * self.params[name].detach().var()

    def _init_value(self, weight: torch.Tensor) -> float:
        if self.init_sparsity == 0.0:
            return 0.0
        sq = weight.detach().reshape(-1) ** 2
        k = int(round(self.init_sparsity * sq.numel()))
        if k == 0:
            return 0.0
        # midway between the k-th and (k+1)-th smallest squares: exactly k below the threshold
        srt = torch.sort(sq).values
        t = float(srt[k - 1] + srt[min(k, sq.numel() - 1)]) / 2
        scale = float(weight.detach().var()) if self.relative else 1.0
        return t / scale if scale > 0 else 0.0

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "LTP":
        super().attach(model, optimizer)
        self.params = prunable_parameters(model, include=self.include, exclude=self.exclude)
        self.tau = nn.ParameterDict({
            self._key(n): nn.Parameter(torch.tensor(self._init_value(p), device=p.device, dtype=p.dtype))
            for n, p in self.params.items()})
        optimizer.add_param_group({"params": list(self.tau.values()), "lr": self._tau_lr(optimizer),
                                   "weight_decay": 0.0})
        self._sub = WeightSubstitution(model, self.params, self._effective)
        if self._pending is not None:
            self._restore(self._pending)
        return self

    def _tau_lr(self, optimizer: torch.optim.Optimizer) -> float:
        """The thresholds' learning rate: ``tau_lr`` when given, else derived from the
        optimizer's lr. One lr for every layer's tau, as in the paper. Absolute tau lives on the
        scale of w^2, so the weights' lr would move it orders of magnitude too far (measured on
        LeNet-300-100: every weight pruned in 2 epochs); the default is lr x min_l var(w_l)^2,
        the step the relative form gives its most finely scaled layer, so that no layer's
        threshold moves faster, relative to its weights, than in the relative form."""
        if self.tau_lr is not None:
            return float(self.tau_lr)
        lr = float(optimizer.param_groups[0]["lr"])
        if self.relative:
            return lr
        variances = [float(p.detach().var()) for p in self.params.values() if p.numel() > 1]
        return lr * min(variances) ** 2 if variances else lr

    def _effective(self, name: str, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        tau = self.threshold(name)
        if not module.training:
            return weight * (weight.detach() ** 2 >= tau.detach()).to(weight.dtype)
        # sigmoid of the detached weight: constant w.r.t. w, full gradient w.r.t. tau
        gate = torch.sigmoid((weight.detach() ** 2 - tau) / self.temperature(name))
        return weight * gate

    def penalty(self) -> torch.Tensor:
        self._require_attached()
        total = sum(p.numel() for p in self.params.values())
        l0 = sum(torch.sigmoid((p ** 2 - self.threshold(n)) / self.temperature(n)).sum()
                 for n, p in self.params.items())
        return self.lam * l0 / total

    @torch.no_grad()
    def keep_masks(self) -> Dict[str, torch.Tensor]:
        return {n: p ** 2 >= self.threshold(n) for n, p in self.params.items()}

    def hard_sparsity(self) -> float:
        masks = self.keep_masks()
        return 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())

    def step(self) -> None:
        self._require_attached()
        super().step()
        with torch.no_grad():
            for t in self.tau.values():
                t.clamp_(min=0.0)
        if self.levels and self.steps % self.trail_every == 0:
            self._check_trail()

    def _check_trail(self) -> None:
        done = {row["level"] for row in self.trail}
        pending = [lv for lv in self.levels if lv not in done]
        if not pending:
            return
        s = self.hard_sparsity()
        reached = [lv for lv in pending if s >= lv]
        if not reached:
            return
        masks = self.keep_masks()
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        names = parameter_names(self.model)
        for n, m in masks.items():
            for key in names[id(self.params[n])]:   # a tied weight is in the state_dict under each name
                state[key] = state[key] * m.to(state[key].dtype)
        mask_state = {n: m.cpu().clone() for n, m in masks.items()}
        for lv in reached:
            row: Dict[str, Any] = {"level": lv, "sparsity": s, "step": self.steps}
            if self.trail_dir is not None:
                path = self.trail_dir / f"ltp_s{lv:.4f}.pt"
                if distributed.is_main():  # under torchrun the ranks hold the same snapshot
                    atomic_torch_save({"model": {k: v.cpu() for k, v in state.items()}, "mask": mask_state,
                                       "sparsity": s, "step": self.steps, "level": lv}, path)
                row["path"] = str(path)
            else:
                row["model"], row["mask"] = state, mask_state
            self.trail.append(row)

    def finalize(self) -> Mask:
        """Hard-prune at tau_l (w^2 < tau_l -> 0), remove the hooks; plain model, exact zeros."""
        self._require_attached()
        masks = self.keep_masks()
        if self._sub is not None:
            self._sub.remove()
            self._sub = None
        for t in self.tau.values():
            t.requires_grad_(False)
        mask = Mask(masks, self.model)
        mask.apply()
        return mask

    def metrics(self) -> Dict[str, Any]:
        if self.model is None or not self.params:
            return {}
        return {"sparsity": self.hard_sparsity(), "trail_points": len(self.trail)}

    def state_dict(self) -> Dict[str, Any]:
        trail = [{k: v for k, v in row.items() if k in ("level", "sparsity", "step", "path")} for row in self.trail]
        return {"steps": self.steps, "tau": {n: float(self.tau[self._key(n)].detach()) for n in self.params}, "trail": trail}

    def _restore(self, state: Dict[str, Any]) -> None:
        self._pending = None
        self.steps = int(state.get("steps", 0))
        with torch.no_grad():
            for n, v in (state.get("tau") or {}).items():
                if self._key(n) in self.tau:
                    self.tau[self._key(n)].fill_(float(v))
        # trail points taken before the interruption are not taken again
        kept = [row for row in self.trail if row["level"] not in {r["level"] for r in state.get("trail") or []}]
        self.trail = [dict(r) for r in state.get("trail") or []] + kept
