"""Sparse structure selection (SSS): Huang & Wang 2018, "Data-Driven Sparse Structure Selection
for Deep Neural Networks", sections 3.1-3.3 (SPEC section 5).

A scaling factor lambda_b multiplies the residual branch of every residual block::

    out = shortcut(x) + lambda_b * F(x)        (ResNet: then ReLU)

The factors are trained with the network (their own param group: learning rate ``lr``, no
weight decay, no momentum in the optimizer) under the sparsity regulariser
``gamma * sum_b |lambda_b|``, applied by a proximal step after every optimizer step with the
soft-threshold S_a(z) = sign(z) max(|z| - a, 0), a = lr * gamma, so factors reach exactly 0
(a plain subgradient would only make them oscillate around 0). ``factor_update``:

- ``"apg"`` (default, the paper's Sec. 3.3: accelerated proximal gradient in its NAG-style
  reformulation, Eq. 10-12, as the authors' MXNet ``APGNAG`` optimizer), with lambda' the
  extrapolated factors the network uses and mu the momentum (``apg_momentum``, 0.9)::

      z_t      = lambda'_{t-1} - lr * grad(lambda'_{t-1})        (the optimizer's SGD step)
      v_t      = S_{lr gamma}(z_t) - lambda'_{t-1} + mu v_{t-1}
      lambda'_t = S_{lr gamma}(z_t) + mu v_t

  the solution lambda_t = S_{lr gamma}(z_t) (exact zeros) is what ``zeroed()`` and
  ``finalize()`` read;
- ``"proximal"``: plain proximal SGD, ``lambda <- S_{lr gamma}(lambda - lr grad)``: the
  behaviour before issue #15 (its ``legacy`` value).

On a model without residual blocks the factors sit on channels instead (one per output
channel of every BatchNorm, the paper's "neuron" structure), which makes SSS a
network-slimming variant with exact zeros.

``finalize()`` folds each factor into the weights (the last BN's gamma and beta, or the last
conv of a pre-activation block), zeroes the branches / channels whose factor is 0, removes the
hooks and returns the Mask; ``shrunk()`` then returns a physically smaller model: blocks whose
factor is 0 are replaced by their shortcut (``RemovedBlock``), channels removed by ``shrink``.

Blocks: prunekit's ResNet / PreResNet blocks and torchvision's BasicBlock / Bottleneck whose
shortcut is the identity (``structured.blocks``): on torchvision's resnet50 that is 12 of the 16
bottlenecks, so removing 3 / 6 / 8 of them gives the paper's ResNet-41 / 32 / 26
(tests/test_sss_torchvision.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .. import params as valid
from ..core.mask import Mask
from ..core.targets import prunable_parameters
from ..params import param
# The block surgery lives in structured/ (it also rebuilds saved shrunk models); its names
# stay importable from here.
from ..structured.blocks import (RESIDUAL_BLOCKS, RemovedBlock, block_spec, remove_blocks,  # noqa: F401
                                residual_blocks, residual_relu, shortcut_prefix)
from ..structured.scores import following_bn
from ..structured.shrink import prunable_layers, shrink, zero_channels
from .base import METHODS, Method

STRUCTURES = ("auto", "blocks", "channels")
OPTIMIZERS = ("apg", "proximal")


@METHODS.register("sss")
class SSS(Method):
    """Scaling factors with a proximal L1 step on residual blocks (or BN channels).

    - ``gamma``: sparsity strength (per step, ``lr * gamma`` is the soft threshold);
    - ``lr``: learning rate of the factors (init 1);
    - ``structure``: "auto" (blocks if the model has registered residual blocks, else
      channels), "blocks" or "channels".

    Its ``Params`` call the factors' learning rate ``factor_lr`` (the constructor's ``lr``).
    """

    @dataclass(kw_only=True)
    class Params:
        gamma: float = param(1e-2, check=valid.nonnegative,
                             doc="sparsity strength on the factors (soft threshold lr * gamma)")
        factor_lr: float = param(0.1, check=valid.positive, doc="learning rate of the scaling factors")
        structure: str = param("auto", choices=STRUCTURES,
                               doc="factors on residual blocks or on BN channels (auto: blocks when the model has them)")
        # Issue #15 point 6: the paper's APG (was plain proximal SGD).
        factor_update: str = param("apg", legacy="proximal", choices=OPTIMIZERS,
                               doc="apg: accelerated proximal gradient (paper Eq. 10-12); proximal: plain proximal SGD")
        apg_momentum: float = param(0.9, check=valid.nonnegative, doc="mu of APG")

    @classmethod
    def from_params(cls, params: Any, **runtime: Any) -> "SSS":
        return cls(gamma=params.gamma, lr=params.factor_lr, structure=params.structure, factor_update=params.factor_update,
                   apg_momentum=params.apg_momentum, **runtime)

    def __init__(self, gamma: float = 1e-2, lr: float = 0.1, structure: str = "auto",
                 input_shape: Optional[Sequence[int]] = None, factor_update: str = "apg", apg_momentum: float = 0.9):
        super().__init__()
        valid.check_arguments(self.Params, "sss", gamma=gamma, structure=structure, factor_update=factor_update,
                              apg_momentum=apg_momentum)
        valid.check(valid.positive, lr, "sss: lr")
        self.gamma, self.lr, self.structure = float(gamma), float(lr), structure
        self.optimizer_kind, self.mu = factor_update, float(apg_momentum)
        self._prev: List[torch.Tensor] = []   # APG: lambda'_{t-1}
        self._v: List[torch.Tensor] = []      # APG: v_{t-1}
        self._solution: List[torch.Tensor] = []  # APG: lambda_t = S(z_t), exact zeros
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.targets: List[Tuple[str, nn.Module, bool]] = []  # (name, module scaled, relu) per factor set
        self.factors: List[nn.Parameter] = []
        self._hooks: list = []
        self._pending: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "SSS":
        super().attach(model, optimizer)
        blocks = residual_blocks(model)
        if self.structure == "blocks" and not blocks:
            raise ValueError("sss: structure='blocks' needs residual blocks (prunekit ResNet/PreResNet, "
                             "torchvision BasicBlock/Bottleneck with an identity shortcut); use 'channels'")
        self.kind = "blocks" if blocks and self.structure != "channels" else "channels"
        if self.kind == "blocks":
            for name, block in blocks:
                last, relu = block_spec(block)
                self.targets.append((name, getattr(block, last), relu))
                self.factors.append(nn.Parameter(torch.ones(())))
        else:
            for name, m in model.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                    self.targets.append((name, m, False))
                    self.factors.append(nn.Parameter(torch.ones(m.num_features)))
            if not self.targets:
                raise ValueError("sss: the model has neither residual blocks nor BatchNorm channels")
        device = next(model.parameters()).device
        for f in self.factors:
            f.data = f.data.to(device)
        self._prev = [f.detach().clone() for f in self.factors]
        self._v = [torch.zeros_like(f) for f in self.factors]
        self._solution = [f.detach().clone() for f in self.factors]
        optimizer.add_param_group({"params": self.factors, "lr": self.lr, "weight_decay": 0.0, "momentum": 0.0})
        for (_, module, _), f in zip(self.targets, self.factors):
            self._hooks.append(module.register_forward_hook(self._scale_hook(f)))
        if self._pending is not None:
            self._restore(self._pending)
        return self

    @staticmethod
    def _scale_hook(factor: nn.Parameter):
        def hook(module, args, out):
            return out * (factor.view(1, -1, *([1] * (out.dim() - 2))) if factor.dim() else factor)
        return hook

    def step(self) -> None:
        """Count the step, then the proximal (soft-threshold) step of the L1 regulariser."""
        self._require_attached()
        super().step()
        threshold = self._lr() * self.gamma
        with torch.no_grad():
            for i, f in enumerate(self.factors):
                s = torch.sign(f) * (f.abs() - threshold).clamp_min(0.0)   # S(z_t), z_t = f after SGD
                if self.optimizer_kind == "apg":
                    v = s - self._prev[i] + self.mu * self._v[i]
                    self._v[i] = v
                    self._solution[i] = s.clone()
                    f.copy_(s + self.mu * v)
                    self._prev[i] = f.detach().clone()
                else:
                    f.copy_(s)
                    self._solution[i] = s.clone()

    def _lr(self) -> float:
        for group in self.optimizer.param_groups:  # an LR scheduler may have changed it
            if any(p is self.factors[0] for p in group["params"]):
                return float(group["lr"])
        return self.lr

    def solution(self) -> List[torch.Tensor]:
        """The factors' current values as a solution: with APG the last S(z_t) (exact zeros)
        rather than the extrapolated lambda' the network runs with; a factor set by hand
        since the last step is taken as it is."""
        out = []
        for i, f in enumerate(self.factors):
            untouched = i < len(self._prev) and torch.equal(f.detach(), self._prev[i])
            out.append(self._solution[i] if untouched and i < len(self._solution) else f.detach())
        return out

    def zeroed(self) -> List[str]:
        """Names of the blocks (or BNs with a zero channel) whose factor reached 0 (APG: the
        solution S(z_t), not the extrapolated factor)."""
        return [n for (n, _, _), f in zip(self.targets, self.solution()) if bool((f == 0).any())]

    def finalize(self) -> Mask:
        """Fold the factors into the weights, zero what reached 0, remove the hooks."""
        self._require_attached()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        with torch.no_grad():
            for f, sol in zip(self.factors, self.solution()):  # APG: keep the solution, not lambda'
                f.copy_(sol)
            for (_, module, _), f in zip(self.targets, self.factors):
                scale = f.detach()
                # (BN: gamma and beta both scale; a conv: its weight and bias)
                for attr in ("weight", "bias"):
                    t = getattr(module, attr, None)
                    if t is not None:
                        t.mul_(scale.view(-1, *([1] * (t.dim() - 1))) if scale.dim() else scale)
            if self.kind == "blocks":
                zeroed = set(self.zeroed())   # the factors do not change in this loop
                for name, _, _ in self.targets:
                    if name in zeroed:
                        block = dict(self.model.named_modules())[name]
                        for pname, p in block.named_parameters():
                            if not pname.startswith(shortcut_prefix(block)):
                                p.zero_()
        if self.kind == "channels":
            zero_channels(self.model, self._example_input(), self._channel_plan(self.model))
        return Mask.from_model(self.model, list(prunable_parameters(self.model)))

    def shrunk(self) -> nn.Module:
        """A physically smaller copy: zero-factor blocks replaced by their shortcut; zero
        channels removed (call after ``finalize``)."""
        self._require_attached()
        model = copy.deepcopy(self.model)
        if self.kind == "blocks":
            return remove_blocks(model, self.zeroed())
        return shrink(model, self._example_input(), self._channel_plan(model))

    def removal(self) -> Dict[str, Any]:
        """What ``shrunk()`` removes, as ``structure.json`` records it: the removed blocks
        (block structure) or the channel plan (channel structure). Call after ``finalize``."""
        self._require_attached()
        if self.kind == "blocks":
            return {"plan": {}, "removed_blocks": self.zeroed()}
        return {"plan": self._channel_plan(self.model), "removed_blocks": []}

    def _example_input(self) -> torch.Tensor:
        shape = self.input_shape or getattr(self.model, "input_shape", None)
        if shape is None:
            raise ValueError("sss: pass input_shape= (the model has no .input_shape)")
        return torch.randn(1, *shape, device=next(self.model.parameters()).device)

    @staticmethod
    def _channel_plan(model: nn.Module) -> Dict[str, List[int]]:
        """Channels whose BN gamma and beta are both 0 (a zero factor folded in), per layer.
        A layer whose channels all died keeps them (its output is 0 anyway): a layer cannot
        be emptied without cutting the network."""
        plan = {}
        for layer in prunable_layers(model):
            bn = following_bn(model, layer)
            if bn is not None:
                dead = (bn.weight == 0) & (bn.bias == 0)
                if 0 < int(dead.sum()) < dead.numel():
                    plan[layer] = torch.nonzero(dead).flatten().tolist()
        return plan

    def metrics(self) -> Dict[str, Any]:
        if not self.factors:
            return {}
        values = torch.cat([f.flatten() for f in self.solution()])
        return {"sss_zero_factors": int((values == 0).sum()), "sss_factors": int(values.numel())}

    def state_dict(self) -> Dict[str, Any]:
        out = {"steps": self.steps, "factors": [f.detach().clone() for f in self.factors]}
        if self.optimizer_kind == "apg":
            out.update(apg_prev=[t.clone() for t in self._prev], apg_v=[t.clone() for t in self._v],
                       apg_solution=[t.clone() for t in self._solution])
        return out

    def _restore(self, state: Dict[str, Any]) -> None:
        self._pending = None
        self.steps = int(state.get("steps", 0))
        with torch.no_grad():
            for f, v in zip(self.factors, state.get("factors") or []):
                f.copy_(v)
        for key, attr in (("apg_prev", "_prev"), ("apg_v", "_v"), ("apg_solution", "_solution")):
            if state.get(key) is not None:
                setattr(self, attr, [t.clone().to(f.device) for t, f in zip(state[key], self.factors)])
        if state.get("apg_solution") is None and self.factors:  # a proximal state: the factors are the solution
            self._solution = [f.detach().clone() for f in self.factors]
