"""ResNet-20/32/44/56/110 for CIFAR (He et al. 2016, "Deep Residual Learning for Image
Recognition", section 4.2): a 3x3 stem with 16 channels, three stages of n BasicBlocks with
16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2), global average pool
and one Linear; depth = 6n + 2.

Shortcuts where the shape changes:
- ``"A"`` (default, the paper's CIFAR choice): parameter-free, subsample by the stride and
  zero-pad the new channels;
- ``"B"``: a 1x1 conv + BN projection.

Module names: ``conv1, bn1, layer1, layer2, layer3, fc``; each block has
``conv1, bn1, conv2, bn2, shortcut``. ``conv_numbering`` numbers the convs the way Li et al.
(2017) index them for L1-filter pruning.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MODELS, check_common, init_weights, scaled

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A: ``x[:, :, ::s, ::s]`` then zeros around the channels (half before, the
    rest after, as in the usual CIFAR code), so ``in_channels`` become ``out_channels``.
    No parameters.

    The padding couples the residual streams of consecutive stages in a way torch-pruning's
    dependency graph does not see: with option A, prune the blocks' inner channels (their
    ``conv1``, as Li et al. do) but not the stem/stage outputs.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut can only add channels")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride == 1 and in_channels == channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The 6n+2 CIFAR ResNet; see the module docstring."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0, shortcut: str = "A"):
        super().__init__()
        check_common(num_classes, in_channels, width)
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        n = (depth - 2) // 6
        self.input_shape = (in_channels, 32, 32)
        self.depth, self.shortcut_type = depth, shortcut
        c = [scaled(k, width) for k in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.layer1 = self._stage(c[0], c[0], n, 1, shortcut)
        self.layer2 = self._stage(c[0], c[1], n, 2, shortcut)
        self.layer3 = self._stage(c[1], c[2], n, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c[2], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(c_in: int, c: int, n: int, stride: int, shortcut: str) -> nn.Sequential:
        blocks = [BasicBlock(c_in, c, stride, shortcut)]
        blocks += [BasicBlock(c, c, 1, shortcut) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def conv_numbering(model: nn.Module) -> List[Tuple[int, str]]:
    """``[(number, module_name), ...]`` for the convs of a CIFAR ResNet, numbered as in
    Li et al. 2017 (and SPEC section 5): the stem is 1 and the b-th block (counted across
    all stages from 1) holds convs 2b (its ``conv1``) and 2b+1 (its ``conv2``). Projection
    convs of option-B shortcuts are not numbered. Works on thinned models too, since it
    only looks at module names.
    """
    numbering = [(1, "conv1")]
    b = 0
    for stage in ("layer1", "layer2", "layer3"):
        layer = getattr(model, stage, None)
        if not isinstance(layer, nn.Sequential):
            raise ValueError(f"not a CIFAR ResNet: it has no nn.Sequential {stage!r}")
        for i in range(len(layer)):
            b += 1
            numbering += [(2 * b, f"{stage}.{i}.conv1"), (2 * b + 1, f"{stage}.{i}.conv2")]
    return numbering


def _builder(depth: int):
    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
              shortcut: str = "A") -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels, width, shortcut)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} for CIFAR (n = {(depth - 2) // 6}); shortcut 'A' or 'B'."
    return build


resnet20 = MODELS.register("resnet20")(_builder(20))
resnet32 = MODELS.register("resnet32")(_builder(32))
resnet44 = MODELS.register("resnet44")(_builder(44))
resnet56 = MODELS.register("resnet56")(_builder(56))
resnet110 = MODELS.register("resnet110")(_builder(110))
