"""Fallback to torchvision's ImageNet classification models when torchvision is installed.

torchvision is optional: it is imported only when a name is not in prunekit's own registry,
and its absence just means those names are unknown. Models are built untrained
(``weights=None``) with ``torchvision.models.get_model``.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch.nn as nn

# Inputs other than 3x224x224 that a model needs.
_INPUT_SHAPES = {"inception_v3": (3, 299, 299)}


def _models_module() -> Optional[Any]:
    try:
        import torchvision  # noqa: PLC0415 - optional and slow to import
    except ImportError:
        return None
    return torchvision.models


def names() -> List[str]:
    """torchvision's classification model names ([] when torchvision is not importable)."""
    tvm = _models_module()
    if tvm is None:
        return []
    # module=tvm keeps detection/segmentation/video models out: they take other arguments.
    return sorted(tvm.list_models(module=tvm))


def has(name: str) -> bool:
    return isinstance(name, str) and name in names()


def build(name: str, num_classes: int = 1000, in_channels: Optional[int] = None,
          width: float = 1.0, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, num_classes=..., weights=None, **kwargs)`` with an
    ``input_shape`` attribute. torchvision models have fixed 3-channel stems and no width
    multiplier, so other values are refused rather than ignored."""
    tvm = _models_module()
    if tvm is None or not has(name):
        raise ValueError(f"{name!r} is not a torchvision classification model")
    if in_channels not in (None, 3):
        raise ValueError(f"torchvision model {name!r} takes in_channels=3 only, got {in_channels!r}")
    if width != 1.0:
        raise ValueError(f"torchvision model {name!r} has no width multiplier, got width={width!r}")
    if "weights" in kwargs:
        raise ValueError("prunekit builds torchvision models untrained; 'weights' is not accepted")
    model = tvm.get_model(name, num_classes=num_classes, weights=None, **kwargs)
    model.input_shape = _INPUT_SHAPES.get(name, (3, 224, 224))
    return model
