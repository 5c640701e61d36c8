"""Removing whole residual blocks: a block is replaced by its shortcut (SSS's zero-factor
blocks, and ``structure.json``'s ``removed_blocks`` when a shrunk model is rebuilt).

Only the registered residual block types can be removed: for each, which module ends its
residual branch and whether a ReLU follows the sum (the ReLU stays after removal).

torchvision's ``BasicBlock`` and ``Bottleneck`` (resnet18 ... resnet152) are registered by their
qualified class name (``TORCHVISION_BLOCKS``; torchvision is optional and never imported here),
and only when their shortcut is the identity (``downsample is None``): a block with a
downsample changes the shape, so it is never scaled nor removed (SSS takes ResNet-50 to
ResNet-41/32/26 by removing 3/6/8 of its 12 identity bottlenecks). ``block_spec`` answers for
any module, ``shortcut_of`` gives what a removed block leaves.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

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
# torchvision's blocks, by "module.ClassName": (last module of the branch, ReLU after the sum);
# registered only when ``downsample is None`` (identity shortcut).
TORCHVISION_BLOCKS: Dict[str, Tuple[str, bool]] = {
    "torchvision.models.resnet.BasicBlock": ("bn2", True),
    "torchvision.models.resnet.Bottleneck": ("bn3", True),
}


def block_spec(module: nn.Module) -> Optional[Tuple[str, bool]]:
    """(last module of the residual branch, ReLU after the sum) if ``module`` is a removable
    residual block, else None."""
    spec = RESIDUAL_BLOCKS.get(type(module))
    if spec is not None:
        return spec
    key = f"{type(module).__module__}.{type(module).__qualname__}"
    if key in TORCHVISION_BLOCKS and getattr(module, "downsample", "absent") is None:
        return TORCHVISION_BLOCKS[key]
    return None


def residual_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, block)`` of every removable residual block of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if block_spec(m) is not None]


def shortcut_of(block: nn.Module) -> nn.Module:
    """The shortcut of a removable block (torchvision's identity blocks: ``nn.Identity``)."""
    if type(block) in RESIDUAL_BLOCKS:
        return block.shortcut
    return nn.Identity()


def shortcut_prefix(block: nn.Module) -> str:
    """The name prefix of the shortcut's parameters inside the block."""
    return "shortcut" if type(block) in RESIDUAL_BLOCKS else "downsample"


def residual_relu(block: nn.Module) -> bool:
    """Whether a registered residual block applies a ReLU after its sum."""
    spec = block_spec(block)
    if spec is None:
        raise ValueError(f"{type(block).__name__} is not a removable residual block")
    return spec[1]


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
        block = modules[name]
        model.set_submodule(name, RemovedBlock(shortcut_of(block), residual_relu(block)))
    return model
