"""Helpers shared by every model family: width scaling, input sizes and initialisation."""
from __future__ import annotations

from typing import Tuple, Union

import torch.nn as nn

# The registry lives here (not in __init__) so that the family modules can register
# themselves without importing the package __init__ (no import cycle).
from prunekit.registry import Registry

MODELS: Registry = Registry("model")

SizeArg = Union[int, Tuple[int, int]]


def scaled(channels: int, width: float) -> int:
    """Hidden channel/unit count under a width multiplier: ``max(1, int(c * width))``.

    Floor, not round, so that a width of sqrt(kept fraction) never gives a "dense-equivalent"
    model more parameters than the pruned one it is compared against.
    """
    return max(1, int(channels * width))


def check_common(num_classes: int, in_channels: int, width: float) -> None:
    """Reject nonsensical values of the arguments every model takes."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number, got {width!r}")


def pair(size: SizeArg, name: str = "input_size") -> Tuple[int, int]:
    """``28`` -> ``(28, 28)``; ``(28, 32)`` stays; anything else is a ValueError."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{name} must be a positive int or a pair (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def init_weights(model: nn.Module) -> nn.Module:
    """The standard initialisation of prunekit's models.

    Convolutions: Kaiming normal with mode="fan_out" (He et al. 2015, as in the CIFAR ResNet
    literature and torchvision), biases zero. Linear layers keep PyTorch's default init.
    BatchNorm: weight 1, bias 0. Modules are visited in registration order, so the result
    is a deterministic function of the torch seed.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
