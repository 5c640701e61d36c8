"""VGG-11/13/16/19 with BatchNorm for CIFAR (Simonyan & Zisserman 2015, configurations
A/B/D/E), in the form used by network slimming (Liu et al. 2017) and "Rethinking the Value
of Network Pruning" (Liu et al. 2019).

Choice: the classifier is a global average pool to 1x1 followed by a single
Linear(512, classes), as in the network-slimming code. (Li et al.'s L1-filter VGG-16 and the
Rethinking l1-norm-pruning code put a Linear(512, 512)-BN-ReLU before it; that adds ~0.26M
parameters and changes nothing about which convs exist.) The last max-pool of each
configuration is dropped, as in those codes: on 32x32 inputs the features are 2x2 and the
average pool makes them 1x1.

All convs, with their BN and ReLU, sit in one ``nn.Sequential`` called ``features``, so the
order of the ``Conv2d`` modules in it is the conv numbering (conv1_1 is the first).
"""
from __future__ import annotations

from typing import Dict, List, Union

import torch
import torch.nn as nn

from ._common import MODELS, check_common, init_weights, scaled

# "M" is a 2x2 max-pool; the trailing pool of the ImageNet configurations is left out.
CONFIGS: Dict[int, List[Union[int, str]]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stack of configuration ``depth``, global average pool, one Linear."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0):
        super().__init__()
        check_common(num_classes, in_channels, width)
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth!r}")
        self.input_shape = (in_channels, 32, 32)
        layers: List[nn.Module] = []
        c_in = in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c = scaled(int(v), width)
                # No conv bias: the following BN's beta plays that role.
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _builder(depth: int):
    def build(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> VGG:
        return VGG(depth, num_classes, in_channels, width)

    build.__name__ = build.__qualname__ = f"vgg{depth}"
    build.__doc__ = f"VGG-{depth} with BatchNorm for CIFAR (see module docstring)."
    return build


vgg11 = MODELS.register("vgg11")(_builder(11))
vgg13 = MODELS.register("vgg13")(_builder(13))
vgg16 = MODELS.register("vgg16")(_builder(16))
vgg19 = MODELS.register("vgg19")(_builder(19))
