"""MobileNetV2 for CIFAR (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks"), with the usual CIFAR stride layout: the stem conv has stride 1 and so does
the first 24-channel stage, leaving three stride-2 stages (32x32 -> 4x4).

Inverted residual block: 1x1 expand (t x) - BN - ReLU6 - 3x3 depthwise (groups = channels) -
BN - ReLU6 - 1x1 linear projection - BN; the input is added back only when the stride is 1 and
the channel count is unchanged (as in the paper; blocks with t = 1 have no expand conv).
Head: 1x1 conv to 1280 - BN - ReLU6, global average pool, Linear. The width multiplier
scales every channel count, the 1280 included, by floor (prunekit's convention, not the
paper's rounding to multiples of 8).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ._common import MODELS, check_common, init_weights, scaled

# (expansion t, output channels c, blocks n, stride of the first block s)
CIFAR_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet; 1 keeps 32x32 CIFAR inputs from shrinking early
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
            relu: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers: List[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn(c_in, hidden, 1))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            conv_bn(hidden, c_out, 1, relu=False),  # linear bottleneck: no ReLU
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        check_common(num_classes, in_channels, width)
        self.input_shape = (in_channels, 32, 32)
        c = scaled(32, width)
        layers: List[nn.Module] = [conv_bn(in_channels, c, 3, stride=1)]
        for t, c_out, n, s in CIFAR_SETTINGS:
            c_out = scaled(c_out, width)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        last = scaled(1280, width)
        layers.append(conv_bn(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@MODELS.register("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int = 10, in_channels: int = 3,
                      width: float = 1.0) -> MobileNetV2Cifar:
    """MobileNetV2 with the CIFAR stride layout (see module docstring)."""
    return MobileNetV2Cifar(num_classes, in_channels, width)
