"""Pre-activation ResNets for CIFAR (He et al. 2016, "Identity Mappings in Deep Residual
Networks"): BN-ReLU-conv order inside every block, a final BN-ReLU before the pool.

- ``preresnet110``: 3 stages of 18 basic blocks (16/32/64 channels), depth = 6n + 2.
- ``preresnet164``: 3 stages of 18 bottleneck blocks (16/32/64 inner channels, x4 outputs:
  64/128/256), depth = 9n + 2.

Choice: where the shape changes, the shortcut is a 1x1 conv projection applied to the
block's raw input (no BN, as the next block normalises), as in the network-slimming and
"Rethinking the Value of Network Pruning" code whose PreResNet-164 results SPEC follows.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MODELS, check_common, init_weights, scaled


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Conv2d(c_in, c_out, 1, stride, bias=False)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the shortcut (no ReLU after the sum)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out = channels * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out, 3, padding=1, bias=False)
        self.shortcut = _projection(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4), plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out = channels * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.shortcut = _projection(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + self.shortcut(x)


class PreResNet(nn.Module):
    """Stem conv3x3(16), three stages of ``n`` blocks, BN-ReLU, global average pool, fc."""

    def __init__(self, depth: int, bottleneck: bool, num_classes: int = 10,
                 in_channels: int = 3, width: float = 1.0):
        super().__init__()
        check_common(num_classes, in_channels, width)
        per_block = 3 if bottleneck else 2  # convs per block
        if (depth - 2) % (3 * per_block) or depth < 2 + 3 * per_block:
            raise ValueError(
                f"PreResNet depth must be {3 * per_block}n+2 with n >= 1, got {depth!r}"
            )
        n = (depth - 2) // (3 * per_block)
        block = PreActBottleneck if bottleneck else PreActBasicBlock
        self.input_shape = (in_channels, 32, 32)
        c = [scaled(k, width) for k in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, padding=1, bias=False)
        c_in = c[0]
        stages = []
        for i, ch in enumerate(c):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, ch, 2 if (i > 0 and j == 0) else 1))
                c_in = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c_in)  # the final pre-activation
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@MODELS.register("preresnet110")
def preresnet110(num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0) -> PreResNet:
    """PreResNet-110: 3 x 18 basic blocks."""
    return PreResNet(110, False, num_classes, in_channels, width)


@MODELS.register("preresnet164")
def preresnet164(num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0) -> PreResNet:
    """PreResNet-164: 3 x 18 bottleneck blocks."""
    return PreResNet(164, True, num_classes, in_channels, width)
