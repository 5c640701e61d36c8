"""timm models by name: ``pk.models.get("timm:resnet50d")``. timm is optional; without it the
error says ``pip install timm``. Pretrained weights (``pretrained=True``) come from timm's own
cache/download logic."""
from __future__ import annotations

from typing import Any, Optional

import torch.nn as nn

from .optional import require

PREFIX = "timm:"


def build(name: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
          width: float = 1.0, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, ...)`` (``name`` without the ``timm:`` prefix) with an
    ``input_shape`` attribute taken from the model's pretrained config (default 3x224x224)."""
    timm = require("timm")
    if width != 1.0:
        raise ValueError(f"timm model {name!r} has no width multiplier here, got width={width!r}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    try:
        model = timm.create_model(name, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model (...)"
        raise ValueError(f"timm cannot build {name!r}: {err}") from err
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    shape = tuple(config.get("input_size", (3, 224, 224)))
    model.input_shape = (in_channels or shape[0],) + shape[1:]
    return model
