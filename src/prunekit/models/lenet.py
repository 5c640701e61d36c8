"""LeNet-300-100 and LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to
document recognition"), the MNIST / Fashion-MNIST networks of the pruning literature
(Han et al. 2015; Frankle & Carbin 2019)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ._common import MODELS, SizeArg, check_common, init_weights, pair, scaled


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-classes with ReLU (for 1x28x28 inputs)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 input_size: SizeArg = 28):
        super().__init__()
        check_common(num_classes, in_channels, width)
        h, w = pair(input_size)
        self.input_shape = (in_channels, h, w)
        h1, h2 = scaled(300, width), scaled(100, width)
        self.fc1 = nn.Linear(in_channels * h * w, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """conv 6@5x5 (pad 2) - relu - maxpool 2 - conv 16@5x5 - relu - maxpool 2 - fc 120 - fc 84 -
    fc classes. The padding of the first conv lets 28x28 inputs reach the classic 16x5x5."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 input_size: SizeArg = 28):
        super().__init__()
        check_common(num_classes, in_channels, width)
        h, w = pair(input_size)
        # conv1 keeps the size, pool halves, conv2 (no padding) removes 4, pool halves.
        fh, fw = (h // 2 - 4) // 2, (w // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise ValueError(f"lenet5 needs input_size of at least 12x12, got {(h, w)}")
        self.input_shape = (in_channels, h, w)
        c1, c2 = scaled(6, width), scaled(16, width)
        f1, f2 = scaled(120, width), scaled(84, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * fh * fw, f1), nn.ReLU(inplace=True),
            nn.Linear(f1, f2), nn.ReLU(inplace=True),
            nn.Linear(f2, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@MODELS.register("lenet_300_100")
def lenet_300_100(num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                  input_size: SizeArg = 28) -> LeNet300100:
    return LeNet300100(num_classes, in_channels, width, input_size)


@MODELS.register("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
           input_size: SizeArg = 28) -> LeNet5:
    return LeNet5(num_classes, in_channels, width, input_size)
