"""Removing whole residual blocks: a block is replaced by its shortcut (SSS's zero-factor
blocks, and ``structure.json``'s ``removed_blocks`` when a shrunk model is rebuilt).

Only the registered residual block types can be removed: for each, which module ends its
residual branch and whether a ReLU follows the sum (the ReLU stays after removal).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.preresnet import PreActBasicBlock, PreActBottleneck
from ..models.resnet import BasicBlock

# Residual block class -> (last module of the residual branch, ReLU after the sum).
RESIDUAL_BLOCKS: Dict[type, Tuple[str, bool]] = {
    BasicBlock: ("bn2", True),
    PreActBasicBlock: ("conv2", False),
    PreActBottleneck: ("conv3", False),
}


def residual_relu(block: nn.Module) -> bool:
    """Whether a registered residual block applies a ReLU after its sum."""
    return RESIDUAL_BLOCKS[type(block)][1]


class RemovedBlock(nn.Module):
    """What is left of a removed residual block: its shortcut (and the ReLU)."""

    def __init__(self, shortcut: nn.Module, relu: bool):
        super().__init__()
        self.shortcut, self.relu = shortcut, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shortcut(x)
        return F.relu(out) if self.relu else out


def remove_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Replace the named residual blocks by their shortcut, in place (SSS's removed blocks)."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(f"the structure removes block {name!r}, which this model does not have")
        parent_name, _, child = name.rpartition(".")
        block = modules[name]
        modules[parent_name]._modules[child] = RemovedBlock(block.shortcut, residual_relu(block))
    return model
