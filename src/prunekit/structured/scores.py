"""Channel scores: one importance value per output channel of a Conv/Linear layer.

Every score has the signature ``score(model, layer_name) -> Tensor[out_channels]`` (higher =
more important) and is registered in ``CHANNEL_SCORES``:

- ``l1_filter`` (Li et al. 2017, "Pruning Filters for Efficient ConvNets", section 3.1):
  s_j = sum |W_j|, the L1 norm of output filter j (data-free).
- ``bn_scale`` (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
  Slimming", section 4.2): s_j = |gamma_j| of the BatchNorm that normalises the layer's
  output (the BN right after it in module order); trained with the L1 penalty of
  ``prunekit.methods.get("slimming")`` so that unimportant gammas approach 0.
- ``random``: i.i.d. uniform (a baseline), seeded by the layer name's position.

The data-driven selections ThiNet and LASSO choose channels from activations and are not
per-layer scores: see ``SELECTIONS`` in ``structured.reconstruct``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..registry import Registry

CHANNEL_SCORES: Registry = Registry("channel score")


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"no module named {name!r} in the model")
    return modules[name]


def following_bn(model: nn.Module, name: str) -> Optional[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm directly after layer ``name`` in module order (None if the next
    Conv/Linear/BN module is not a BN of matching width)."""
    seen = False
    layer = _module(model, name)
    for n, m in model.named_modules():
        if n == name:
            seen = True
            continue
        if seen and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == layer.weight.shape[0]:
                return m
            return None
    return None


@CHANNEL_SCORES.register("l1_filter")
def l1_filter(model: nn.Module, name: str) -> torch.Tensor:
    """L1 norm of each output filter: ``W.abs().sum over all dims but 0``."""
    w = _module(model, name).weight.detach()
    return w.abs().reshape(w.shape[0], -1).sum(dim=1)


@CHANNEL_SCORES.register("bn_scale")
def bn_scale(model: nn.Module, name: str) -> torch.Tensor:
    """|gamma| of the BatchNorm following layer ``name`` (network slimming)."""
    bn = following_bn(model, name)
    if bn is None or bn.weight is None:
        raise ValueError(f"bn_scale: layer {name!r} is not followed by an affine BatchNorm")
    return bn.weight.detach().abs()


@CHANNEL_SCORES.register("random")
def random(model: nn.Module, name: str) -> torch.Tensor:
    """Uniform random scores, reproducible: seeded by the layer's position in the model."""
    layer = _module(model, name)  # first: an unknown name is a KeyError naming it
    names = [n for n, _ in model.named_modules()]
    g = torch.Generator().manual_seed(names.index(name))
    return torch.rand(layer.weight.shape[0], generator=g)
