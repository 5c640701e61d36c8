"""Model registry: the networks of the pruning literature, built by name.

    import prunekit.models as M
    model = M.get("resnet56", num_classes=10, width=0.5, shortcut="B")
    model.input_shape            # (3, 32, 32): what forward() expects, for FLOPs and tracing

Every model takes ``num_classes``, ``in_channels`` (None = its natural default: 1 for the
LeNets, 3 for the CIFAR models) and ``width``, a multiplier applied to every hidden
channel/unit count as ``max(1, int(c * width))`` (inputs and classes are never scaled).
Pretrained and third-party sources (optional packages, see ``optional.status()``):

    M.get("resnet18")                       # torchvision, untrained (10 classes by default)
    M.get("resnet18", weights="DEFAULT")    # its weights, read from torch hub's cache only
    M.get("torchvision:vgg16")              # torchvision's, where a prunekit model has the name
    M.get("timm:resnet50d")                 # timm (pip install timm)
    M.get("hf:path/to/folder")              # transformers / sentence-transformers folder
    M.example_input(model)                  # what forward() takes: an image batch, or tokens

A missing or broken optional package is one ``OptionalDependencyError`` line (a ValueError)
saying what failed and how to fix it.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, List, Optional

import torch
import torch.nn as nn

from . import conv, densenet, hf, lenet, mobilenet, optional, preresnet, resnet, timm_models, torchvision_models, vgg, wrn
from ._common import MODELS, scaled
from .optional import OptionalDependencyError
from ..registry import UnknownNameError

__all__ = ["MODELS", "names", "build", "get", "scaled", "ModelArgumentError", "resnet", "example_input",
           "OptionalDependencyError", "sources", "check_name"]

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


def sources() -> dict:
    """``{source: None if usable else why not (one line)}`` for the optional model sources."""
    return optional.status()


def check_name(name: str) -> None:
    """Raise what ``build(name)`` would for a name it cannot build (an unknown registered or
    torchvision name, torchvision missing or broken), without building anything. ``timm:`` and
    ``hf:`` names are only checked when built (a package or folder that may live elsewhere)."""
    if not isinstance(name, str) or not name:
        raise UnknownNameError(f"a model name must be a non-empty string, got {name!r}")
    if name.startswith((hf.PREFIX, timm_models.PREFIX)) or name in MODELS:
        return
    if name.startswith(torchvision_models.PREFIX):
        _torchvision_or_raise(name[len(torchvision_models.PREFIX):], explicit=True)
    else:
        _torchvision_or_raise(name)


def build(name: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
          width: float = 1.0, **kwargs: Any) -> nn.Module:
    """Build model ``name``: a registered one (freshly initialised from the current torch RNG
    state, ``num_classes`` default 10), a torchvision name, ``torchvision:NAME`` (torchvision's
    model even where prunekit has one of that name: ``torchvision:vgg16`` is the ImageNet VGG-16,
    ``vgg16`` prunekit's CIFAR one), ``timm:NAME`` or ``hf:PATH``.

    Unknown name: ``KeyError`` listing the registered names. Unknown keyword:
    ``ModelArgumentError`` (a TypeError and a ValueError) listing the accepted ones. A source
    whose package is missing or broken: ``OptionalDependencyError`` saying how to fix it.
    """
    if isinstance(name, str) and name.startswith(hf.PREFIX):
        return hf.build(name[len(hf.PREFIX):], num_classes, in_channels, width, **kwargs)
    if isinstance(name, str) and name.startswith(timm_models.PREFIX):
        return timm_models.build(name[len(timm_models.PREFIX):], num_classes, in_channels, width, **kwargs)
    if isinstance(name, str) and name.startswith(torchvision_models.PREFIX):
        name = name[len(torchvision_models.PREFIX):]
        _torchvision_or_raise(name, explicit=True)
        return torchvision_models.build(name, num_classes, in_channels, width, **kwargs)
    if name not in MODELS:
        _torchvision_or_raise(name)
        return torchvision_models.build(name, num_classes, in_channels, width, **kwargs)
    num_classes = 10 if num_classes is None else num_classes
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


def _torchvision_or_raise(name: str, explicit: bool = False) -> None:
    """Return if torchvision knows ``name``; else raise the error that says what to do
    (``explicit``: the name came as ``torchvision:NAME``)."""
    reason = optional.reason("torchvision")
    if reason is None and torchvision_models.has(name):
        return
    if explicit:
        if reason is not None:
            raise OptionalDependencyError(f"model 'torchvision:{name}' needs torchvision: {reason}")
        known = torchvision_models.names()
        close = difflib.get_close_matches(name, known, n=5) or known[:5]
        raise UnknownNameError(f"unknown torchvision model {name!r}; choose one of torchvision's {len(known)} "
                               f"classification models, e.g. {', '.join(close)}")
    choices = (f"choose one of: {', '.join(names())}, a torchvision name, torchvision:NAME, timm:NAME "
               "or hf:PATH")
    if reason is not None and "not installed" not in reason:  # installed but broken: that is the news
        raise OptionalDependencyError(f"model {name!r} is not one of prunekit's, and torchvision's models are "
                                      f"unavailable: {reason}")
    hint = f" (torchvision names need: pip install torchvision)" if reason is not None else ""
    raise UnknownNameError(f"unknown model {name!r}; {choices}{hint}")


def example_input(model: nn.Module, batch_size: int = 1, seq_len: int = 128) -> Any:
    """What ``model`` is called with, for FLOPs, tracing and export: a random
    ``(batch_size, *model.input_shape)`` batch, or for a Hugging Face model ``batch_size``
    sequences of ``seq_len`` tokens (``hf.example_input``: a dict of keyword arguments, or a
    1-tuple for sentence-transformers). ValueError when the model carries neither."""
    shape = getattr(model, "input_shape", None)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if shape is not None:
        return torch.randn(batch_size, *shape, device=device)
    if hf.is_hf(model):
        return hf.example_input(model, batch_size=batch_size, seq_len=seq_len)
    raise ValueError(f"{type(model).__name__} has no input_shape and is not a Hugging Face model; "
                     "pass an example input")


# ``get`` builds, unlike the other registries' ``get`` (which return the registered entry):
# it is the call every example since the first release uses, so it stays, as an alias.
get = build
