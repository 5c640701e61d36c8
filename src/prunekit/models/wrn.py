"""Wide residual networks for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks"):
WRN-depth-k has a 3x3 stem with 16 channels, three groups of n = (depth - 4) / 6
pre-activation basic blocks with 16k, 32k and 64k channels, BN-ReLU, pool and fc.

As in the authors' code, a block whose shape changes gets a 1x1 conv shortcut that reads
the block's pre-activated input (BN-ReLU shared with the residual branch). Dropout between
the two convs is off by default (``dropout=0.0``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MODELS, check_common, init_weights, scaled


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.equal = stride == 1 and in_channels == channels
        self.shortcut = (
            nn.Identity() if self.equal
            else nn.Conv2d(in_channels, channels, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # Identity shortcuts carry the raw input; projections read the pre-activation.
        return out + (x if self.equal else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 16, widen_factor: int = 4, dropout: float = 0.0,
                 num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        check_common(num_classes, in_channels, width)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth!r}")
        if not isinstance(widen_factor, (int, float)) or widen_factor <= 0:
            raise ValueError(f"widen_factor must be positive, got {widen_factor!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 4) // 6
        self.input_shape = (in_channels, 32, 32)
        self.depth, self.widen_factor = depth, widen_factor
        c = [scaled(16, width)] + [scaled(int(k * widen_factor), width) for k in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        c_in = c[0]
        stages = []
        for i, ch in enumerate(c[1:]):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(c_in, ch, 2 if (i > 0 and j == 0) else 1, dropout))
                c_in = ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@MODELS.register("wrn")
def wrn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: int = 16,
        widen_factor: int = 4, dropout: float = 0.0) -> WideResNet:
    """WRN-depth-widen_factor (default WRN-16-4)."""
    return WideResNet(depth, widen_factor, dropout, num_classes, in_channels, width)
