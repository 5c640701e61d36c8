"""Model registry: the networks of the pruning literature, built by name.

    import prunekit.models as M
    model = M.get("resnet56", num_classes=10, width=0.5, shortcut="B")
    model.input_shape            # (3, 32, 32): what forward() expects, for FLOPs and tracing

Every model takes ``num_classes``, ``in_channels`` (None = its natural default: 1 for the
LeNets, 3 for the CIFAR models) and ``width``, a multiplier applied to every hidden
channel/unit count as ``max(1, int(c * width))`` (inputs and classes are never scaled).
Names not registered here but known to torchvision (when it is installed) are built with
``torchvision.models.get_model(name, num_classes=..., weights=None)``.
"""
from __future__ import annotations

import inspect
from typing import Any, List, Optional

import torch.nn as nn

from . import conv, densenet, lenet, mobilenet, preresnet, resnet, torchvision_models, vgg, wrn
from ._common import MODELS, scaled

__all__ = ["MODELS", "names", "build", "get", "scaled", "ModelArgumentError", "resnet"]

_COMMON = ("num_classes", "in_channels", "width")


class ModelArgumentError(TypeError, ValueError):
    """A keyword argument the model does not take. Both a TypeError (what Python raises
    for a bad keyword) and a ValueError (what the CLI reports as a user error)."""


def names() -> List[str]:
    """The registered model names (torchvision's are not listed)."""
    return MODELS.names()


def accepted_kwargs(name: str) -> List[str]:
    """The keyword arguments model ``name`` accepts, the common ones first."""
    params = inspect.signature(MODELS.get(name)).parameters
    return list(_COMMON) + [p for p in params if p not in _COMMON]


def build(name: str, num_classes: int = 10, in_channels: Optional[int] = None,
          width: float = 1.0, **kwargs: Any) -> nn.Module:
    """Build model ``name``, freshly initialised from the current torch RNG state.

    Unknown name: ``KeyError`` listing the registered names. Unknown keyword:
    ``ModelArgumentError`` (a TypeError and a ValueError) listing the accepted ones.
    """
    if name not in MODELS and torchvision_models.has(name):
        return torchvision_models.build(name, num_classes, in_channels, width, **kwargs)
    builder = MODELS.get(name)
    accepted = accepted_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelArgumentError(
            f"model {name!r} got unexpected argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    args = dict(kwargs, num_classes=num_classes, width=width)
    if in_channels is not None:  # otherwise the builder's natural default applies
        args["in_channels"] = in_channels
    return builder(**args)


# ``get`` builds, unlike the other registries' ``get`` (which return the registered entry):
# it is the call every example since the first release uses, so it stays, as an alias.
get = build
