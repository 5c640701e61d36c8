"""Conv-2, Conv-4 and Conv-6: the VGG-like CIFAR-10 networks of Frankle & Carbin 2019,
"The Lottery Ticket Hypothesis" (Figure 2): 3x3 convs with ReLU and no BatchNorm,
64,64,pool, [128,128,pool], [256,256,pool], then fc 256 - fc 256 - fc classes."""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ._common import MODELS, SizeArg, check_common, init_weights, pair, scaled

# Channels of each conv stage; each stage is two 3x3 convs followed by a 2x2 max-pool.
_STAGES = [64, 128, 256]


class ConvNet(nn.Module):
    """``num_stages`` conv stages (1, 2 or 3 -> Conv-2/4/6) then three linear layers."""

    def __init__(self, num_stages: int, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0, input_size: SizeArg = 32):
        super().__init__()
        check_common(num_classes, in_channels, width)
        h, w = pair(input_size)
        fh, fw = h >> num_stages, w >> num_stages  # each stage halves (floor) the size
        if fh < 1 or fw < 1:
            raise ValueError(
                f"conv{2 * num_stages} needs input_size of at least {2 ** num_stages}, "
                f"got {(h, w)}"
            )
        self.input_shape = (in_channels, h, w)
        layers: List[nn.Module] = []
        c_in = in_channels
        for c in _STAGES[:num_stages]:
            c = scaled(c, width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        hidden = scaled(256, width)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * fh * fw, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@MODELS.register("conv2")
def conv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
          input_size: SizeArg = 32) -> ConvNet:
    return ConvNet(1, num_classes, in_channels, width, input_size)


@MODELS.register("conv4")
def conv4(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
          input_size: SizeArg = 32) -> ConvNet:
    return ConvNet(2, num_classes, in_channels, width, input_size)


@MODELS.register("conv6")
def conv6(num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
          input_size: SizeArg = 32) -> ConvNet:
    return ConvNet(3, num_classes, in_channels, width, input_size)
