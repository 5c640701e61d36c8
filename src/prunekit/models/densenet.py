"""DenseNet-40 for CIFAR (Huang et al. 2017, "Densely Connected Convolutional Networks"):
growth rate k = 12, no bottleneck and no compression, three dense blocks of
(40 - 4) / 3 = 12 layers each.

- stem: conv3x3 with 16 channels (the paper's choice for non-BC DenseNets);
- dense layer: BN-ReLU-conv3x3(k), output concatenated to its input;
- transition: BN-ReLU-conv1x1 (channels unchanged) then 2x2 average pool;
- head: BN-ReLU, global average pool, Linear.
Channels: 16 -> 160 -> 304 -> 448. Dropout is not used (the paper drops it with data
augmentation).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import MODELS, check_common, init_weights, scaled


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.bn(x))))


class DenseNet(nn.Module):
    """Non-bottleneck CIFAR DenseNet of ``depth`` = 3L + 4 (L layers per block)."""

    def __init__(self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10,
                 in_channels: int = 3, width: float = 1.0):
        super().__init__()
        check_common(num_classes, in_channels, width)
        if not isinstance(depth, int) or depth < 7 or (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3L+4 with L >= 1, got {depth!r}")
        layers_per_block = (depth - 4) // 3
        growth = scaled(growth_rate, width)
        self.input_shape = (in_channels, 32, 32)
        c = scaled(16, width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        # Modules are created in forward order so that parameter order follows the data.
        self.dense1, c = self._block(c, growth, layers_per_block)
        self.trans1 = Transition(c, c)
        self.dense2, c = self._block(c, growth, layers_per_block)
        self.trans2 = Transition(c, c)
        self.dense3, c = self._block(c, growth, layers_per_block)
        self.bn = nn.BatchNorm2d(c)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    @staticmethod
    def _block(c: int, growth: int, n: int):
        layers = []
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        return nn.Sequential(*layers), c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = F.relu(self.bn(self.dense3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@MODELS.register("densenet40")
def densenet40(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> DenseNet:
    """DenseNet-40 (k = 12)."""
    return DenseNet(40, 12, num_classes, in_channels, width)
