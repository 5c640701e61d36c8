"""Shared fixtures: tiny models whose counts can be checked by hand."""
import multiprocessing
import os

import pytest
import torch
from torch import nn

import _torchvision_shim

# torchvision's model definitions (and transformers, which imports torchvision when it is
# installed) import here only with this test-only shim: see _torchvision_shim.py.
TORCHVISION = _torchvision_shim.install()
# ... and in DataLoader workers, which start from multiprocessing's forkserver, not by fork.
# Python 3.11's forkserver ignores the sys.path it is handed, so this folder goes to PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)),
                                                         os.environ.get("PYTHONPATH")]))
multiprocessing.set_forkserver_preload(["_torchvision_shim_installed"])


class TinyNet(nn.Module):
    """conv -> depthwise conv -> BN -> linear -> linear: every kind of prunable tensor."""

    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.bn(self.depthwise(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run side by side with other work on 2 cores; one thread keeps timings stable.
    torch.set_num_threads(1)
    yield
