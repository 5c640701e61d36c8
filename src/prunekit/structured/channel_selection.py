"""Channel selection inside pre-activation blocks (Liu et al. 2017, "Learning Efficient
Convolutional Networks through Network Slimming", Sec. 4 "Handling cross layer connections and
pre-activation structure", and their code's ``channel_selection`` layer in
``models/preresnet.py`` / ``models/densenet.py``).

In a pre-activation ResNet or a DenseNet the BN that opens a block (``bn1`` of a PreAct block,
``bn`` of a dense layer or transition) normalises the residual stream / the concatenation,
which other blocks also read. Liu et al. do not prune that stream: a channel-selection layer
after the BN keeps the channels whose gamma survives the threshold, and only the block's
first conv reads fewer inputs. Channels of the convs *inside* a block (a bottleneck's conv1
and conv2, a basic block's conv1) are removed as usual, by the BN that follows them; the
convs that write the stream (a block's last conv, the stem, projections, dense-layer convs,
transitions' outputs) keep every channel.

Physically, the selected conv becomes a :class:`SelectedConv2d`: a Conv2d with fewer input
channels and a buffer of the kept input indices (``x.index_select(1, kept)`` first), so
parameter names, FLOP counting and prunable-layer discovery stay those of a Conv2d.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..models.densenet import DenseLayer, Transition
from ..models.preresnet import PreActBasicBlock, PreActBottleneck

# block type -> (the BN opening it, the conv reading that BN's output)
SELECTIONS = {PreActBasicBlock: ("bn1", "conv1"), PreActBottleneck: ("bn1", "conv1"),
              DenseLayer: ("bn", "conv"), Transition: ("bn", "conv")}
# block type -> the convs whose outputs stay inside the block (pruned by their following BN)
IN_BLOCK = {PreActBasicBlock: ("conv1",), PreActBottleneck: ("conv1", "conv2")}


class SelectedConv2d(nn.Conv2d):
    """A Conv2d that first keeps the input channels ``kept`` (Liu et al.'s channel selection)."""

    def __init__(self, *args, kept: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("kept", torch.as_tensor(list(kept), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(1, self.kept.to(x.device)))


def is_preactivation(model: nn.Module) -> bool:
    return any(type(m) in SELECTIONS for m in model.modules())


def preactivation_groups(model: nn.Module) -> Tuple[List[str], List[Tuple[str, str]]]:
    """``(in-block layers, [(opening BN, conv it feeds)])`` of a pre-activation model, with
    full module names."""
    layers, selections = [], []
    for name, m in model.named_modules():
        kind = type(m)
        if kind in SELECTIONS:
            bn, conv = SELECTIONS[kind]
            selections.append((f"{name}.{bn}", f"{name}.{conv}"))
            layers += [f"{name}.{c}" for c in IN_BLOCK.get(kind, ())]
    return layers, selections


def zero_inputs(model: nn.Module, removed: Dict[str, List[int]]) -> nn.Module:
    """Zero the input slices ``removed[conv]`` of each conv (what the selection drops), in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for conv, idx in removed.items():
            if idx:
                modules[conv].weight[:, list(idx)] = 0.0
    return model


def select_inputs(model: nn.Module, removed: Dict[str, List[int]]) -> nn.Module:
    """Replace each conv of ``removed`` by a :class:`SelectedConv2d` reading only the other
    input channels (weights sliced), in place; returns ``model``."""
    modules = dict(model.named_modules())
    for conv_name, idx in removed.items():
        if not idx:
            continue
        conv = modules[conv_name]
        drop = set(int(i) for i in idx)
        kept = [i for i in range(conv.in_channels) if i not in drop]
        if not kept:
            raise ValueError(f"{conv_name}: the selection keeps none of its inputs")
        if conv.groups != 1:
            raise ValueError(f"{conv_name}: channel selection needs an ungrouped conv")
        new = SelectedConv2d(len(kept), conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, 1, conv.bias is not None, conv.padding_mode, kept=kept,
                             device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight[:, kept])
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        parent, _, child = conv_name.rpartition(".")
        (modules[parent] if parent else model)._modules[child] = new
    return model
