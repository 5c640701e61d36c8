"""Network slimming: Liu et al. 2017, "Learning Efficient Convolutional Networks through
Network Slimming", sections 3-4 (SPEC section 5).

Training adds an L1 penalty on every BatchNorm scale gamma, so that the gradient of each gamma
gains ``s * sign(gamma)`` (the paper's subgradient; the authors' code adds exactly that)::

    loss = task_loss + s * sum_BN sum_j |gamma_j|        s = 1e-4 (VGG), 1e-5 (ResNet, DenseNet)

Afterwards one *global* threshold over all |gamma| removes ``fraction`` of the channels
(structured.global_fraction with the ``bn_scale`` score).

Pre-activation ResNets and DenseNets (``scope="block"``, the default; Liu et al. Sec. 4 and
their ``channel_selection`` layer, :mod:`prunekit.structured.channel_selection`): the
threshold runs over the BNs inside blocks (which remove their producing conv's channels) and
the BNs that open a block (which remove only the inputs their block's first conv reads); the
residual stream / the concatenation keeps every channel. ``scope="stream"`` pairs a block's
last conv with the next block's bn1 and lets the threshold cut stream channels across a
stage: the behaviour before issue #15 (its ``legacy`` value). Models without pre-activation
blocks (VGG, post-activation ResNets) are pruned the same way in both scopes. ``finalize()`` zeroes those channels'
whole dependency group (filters, BN gamma and beta, consumers' input slices) and returns the
Mask of the zeroed weights; ``channels()`` gives the plan for :func:`prunekit.structured.shrink`,
and ``shrunk()`` the physically smaller model, which is what the paper deploys.

    method = prunekit.methods.get("slimming")(s=1e-4, fraction=0.4)
    method.attach(model, optimizer)
    ... plain loop with loss + method.penalty() ...
    mask = method.finalize()
    small = method.shrunk()          # fewer channels, same outputs as the masked model
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import params as valid
from ..core.mask import Mask
from ..core.targets import prunable_parameters
from ..params import param
from ..structured.channel_selection import is_preactivation, preactivation_groups, select_inputs, zero_inputs
from ..structured.scores import following_bn
from ..structured.select import global_fraction, lowest_fraction
from ..structured.shrink import shrink, zero_channels
from .base import METHODS, Method


def _bn_gammas(model: nn.Module) -> List[nn.Parameter]:
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]


@METHODS.register("slimming")
class Slimming(Method):
    """L1 on BN gammas during training, then one global |gamma| threshold.

    - ``s``: penalty strength (the gradient of each gamma gains ``s * sign(gamma)``);
    - ``fraction``: share of the channels (over the layers followed by a BN) removed at
      ``finalize``; 0 removes nothing;
    - ``input_shape``: the model's input without batch (default: ``model.input_shape``),
      needed to trace channel dependencies.
    """

    @dataclass(kw_only=True)
    class Params:
        fraction: float = param(0.4, check=valid.fraction_removed,
                                doc="share of channels removed by the global |gamma| threshold")
        s: float = param(1e-4, check=valid.nonnegative, doc="L1 strength on BN gammas (1e-4 VGG, 1e-5 ResNet/DenseNet)")
        # Issue #15 point 2: Liu et al. select channels inside pre-activation blocks.
        scope: str = param("block", legacy="stream", choices=("block", "stream"),
                           doc="pre-activation models: block (channel selection, residual stream whole, as Liu et al.)"
                               " or stream (the last conv paired with the next block's bn1)")

    def __init__(self, s: float = 1e-4, fraction: float = 0.4, input_shape: Optional[Sequence[int]] = None,
                 scope: str = "block"):
        super().__init__()
        valid.check_arguments(self.Params, "slimming", s=s, fraction=fraction, scope=scope)
        self.s, self.fraction, self.scope = float(s), float(fraction), scope
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.plan: Optional[Dict[str, List[int]]] = None
        self.removed_inputs: Optional[Dict[str, List[int]]] = None

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "Slimming":
        super().attach(model, optimizer)
        if not _bn_gammas(model):
            raise ValueError("slimming needs a model with affine BatchNorm layers")
        return self

    def penalty(self) -> torch.Tensor:
        """``s * sum |gamma|``: autograd gives each gamma ``s * sign(gamma)`` (0 at gamma = 0)."""
        self._require_attached()
        gammas = _bn_gammas(self.model)
        return self.s * torch.stack([g.abs().sum() for g in gammas]).sum()

    def example_input(self) -> torch.Tensor:
        shape = self.input_shape or getattr(self.model, "input_shape", None)
        if shape is None:
            raise ValueError("slimming: pass input_shape= (the model has no .input_shape)")
        device = next(self.model.parameters()).device
        return torch.randn(1, *shape, device=device)

    def channels(self) -> Dict[str, List[int]]:
        """``{layer: channels to remove}`` from the global |gamma| threshold (fixed at the
        first call after training, i.e. by ``finalize``)."""
        self._require_attached()
        if self.plan is None:
            if self.scope == "block" and is_preactivation(self.model):
                self.plan, self.removed_inputs = self._block_selection()
            else:
                self.plan, self.removed_inputs = global_fraction(self.model, self.fraction, score="bn_scale"), {}
        return self.plan

    def inputs(self) -> Dict[str, List[int]]:
        """``{conv: input channels its channel selection drops}`` (pre-activation models,
        scope "block"; empty otherwise)."""
        self.channels()
        return dict(self.removed_inputs or {})

    def _block_selection(self):
        """One global |gamma| threshold over the in-block BNs and the block-opening BNs:
        ``round(fraction * their channels)`` lowest, at least one channel kept per BN."""
        modules = dict(self.model.named_modules())
        layers, selections = preactivation_groups(self.model)
        sets = []  # (kind, target name, gammas)
        for layer in layers:
            bn = following_bn(self.model, layer)
            if bn is not None and bn.weight is not None:
                sets.append(("out", layer, bn.weight.detach().abs()))
        for bn_name, conv in selections:
            bn = modules[bn_name]
            if bn.weight is not None:
                sets.append(("in", conv, bn.weight.detach().abs()))
        plan: Dict[str, List[int]] = {}
        inputs: Dict[str, List[int]] = {}
        for i, c in lowest_fraction([g for _, _, g in sets], self.fraction):
            kind, name, _ = sets[i]
            (plan if kind == "out" else inputs).setdefault(name, []).append(c)
        return {k: sorted(v) for k, v in plan.items()}, {k: sorted(v) for k, v in inputs.items()}

    def finalize(self) -> Mask:
        """Zero the selected channels' dependency groups; return the Mask of the prunable weights."""
        self._require_attached()
        zero_channels(self.model, self.example_input(), self.channels())
        zero_inputs(self.model, self.inputs())
        return Mask.from_model(self.model, list(prunable_parameters(self.model)))

    def shrunk(self) -> nn.Module:
        """The physically smaller copy of the model (call after ``finalize``)."""
        small = shrink(self.model, self.example_input(), self.channels())
        return select_inputs(small, self.inputs())

    def metrics(self) -> Dict[str, Any]:
        if self.model is None:
            return {}
        gammas = torch.cat([g.detach().abs().flatten() for g in _bn_gammas(self.model)])
        return {"bn_gamma_l1": float(gammas.sum()), "bn_gamma_below_1e-2": float((gammas < 1e-2).float().mean())}

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "plan": self.plan, "removed_inputs": self.removed_inputs}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.plan = state.get("plan")
        self.removed_inputs = state.get("removed_inputs")
        if self.plan is not None and self.removed_inputs is None:
            self.removed_inputs = {}
