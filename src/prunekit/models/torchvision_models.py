"""torchvision's ImageNet classification models, untrained or with their pretrained weights.

torchvision is optional: it is imported (``optional.require``) only when a name is not in
prunekit's own registry, or when it is named explicitly as ``torchvision:NAME``: the way to
reach a torchvision model whose name a prunekit model shadows (``"vgg16"`` is prunekit's
CIFAR VGG-16, ``"torchvision:vgg16"`` torchvision's ImageNet one with its 3-layer classifier). Models are built with ``torchvision.models.get_model``. Pretrained
weights (``weights="DEFAULT"`` or an enum name such as ``"IMAGENET1K_V1"``) are read from
torch hub's cache only -- the file torchvision itself would download to, under
``$TORCH_HOME/hub/checkpoints`` -- so building never touches the network; a missing file is
an error naming that path and how to get it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional
from urllib.parse import urlparse

import torch
import torch.nn as nn

from .optional import OptionalDependencyError, require

PREFIX = "torchvision:"
# Inputs other than 3x224x224 that a model needs.
_INPUT_SHAPES = {"inception_v3": (3, 299, 299)}
#: The class count of untrained models when the caller gives none (prunekit's default).
DEFAULT_CLASSES = 10


def _models_module() -> Any:
    """``torchvision.models``; OptionalDependencyError (one line: why, how to fix) otherwise."""
    return require("torchvision").models


def names() -> List[str]:
    """torchvision's classification model names ([] when torchvision is unavailable; ``prunekit
    list`` says why)."""
    try:
        tvm = _models_module()
    except OptionalDependencyError:
        return []
    # module=tvm keeps detection/segmentation/video models out: they take other arguments.
    return sorted(tvm.list_models(module=tvm))


def has(name: str) -> bool:
    return isinstance(name, str) and name in names()


def weights_file(weights: Any) -> Path:
    """Where torchvision keeps the file of a weights enum: torch hub's checkpoint folder."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(name: str, weights: str) -> Any:
    """The weights enum member of model ``name`` called ``weights`` ("DEFAULT", "IMAGENET1K_V1"
    or the full "ResNet18_Weights.IMAGENET1K_V1")."""
    tvm = _models_module()
    enum = tvm.get_model_weights(name)
    short = weights.rpartition(".")[2] if isinstance(weights, str) else weights
    try:
        return enum[short] if short != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ValueError(f"unknown weights {weights!r} for torchvision model {name!r}; "
                         f"choose one of: DEFAULT, {', '.join(m.name for m in enum)}") from None


def build(name: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
          width: float = 1.0, weights: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, num_classes=..., weights=..., **kwargs)`` with an
    ``input_shape`` attribute. torchvision models have fixed 3-channel stems and no width
    multiplier, so other values are refused rather than ignored. With ``weights`` the class
    count is the weights' own (another ``num_classes`` is refused)."""
    tvm = _models_module()
    if name not in tvm.list_models(module=tvm):
        raise ValueError(f"{name!r} is not a torchvision classification model")
    if in_channels not in (None, 3):
        raise ValueError(f"torchvision model {name!r} takes in_channels=3 only, got {in_channels!r}")
    if width != 1.0:
        raise ValueError(f"torchvision model {name!r} has no width multiplier, got width={width!r}")
    if weights is None:
        model = tvm.get_model(name, num_classes=num_classes or DEFAULT_CLASSES, weights=None, **kwargs)
    else:
        member = resolve_weights(name, weights)
        classes = len(member.meta["categories"])
        if num_classes not in (None, classes):
            raise ValueError(f"weights {member} have {classes} classes, not num_classes={num_classes}; "
                             "omit num_classes (a new head would not be pretrained)")
        path = weights_file(member)
        if not path.is_file():  # load_state_dict_from_url would download: prunekit stays offline
            raise FileNotFoundError(
                f"pretrained weights {member} are not in torch hub's cache: expected {path}; download "
                f"{member.url} to that path (or run torchvision.models.get_model({name!r}, weights="
                f"{weights!r}) once online; $TORCH_HOME moves the cache)")
        model = tvm.get_model(name, weights=member, **kwargs)
    model.input_shape = _INPUT_SHAPES.get(name, (3, 224, 224))
    return model
