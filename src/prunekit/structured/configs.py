"""The predefined target architectures of Li et al. 2017 ("Pruning Filters for Efficient
ConvNets", Table 1 and section 4.1-4.2) as reproduced in Liu et al. 2019 ("Rethinking the
Value of Network Pruning", Table 1). SPEC section 5.

VGG-16-A: conv1_1 and conv4_1 ... conv5_3 lose 50% of their filters (64 -> 32, 512 -> 256).

ResNet-56/110 A/B (option-A shortcuts): only the first conv of each basic block is pruned.
Convs are numbered from the stem = 1; block b holds convs 2b and 2b+1 (models.resnet
``conv_numbering``), so only even-numbered convs are pruned, each keeping
``int(C * (1 - p_stage))`` channels, except the *skipped* (sensitive) convs:

=========  ===============  =====================
config     p per stage      skipped convs
=========  ===============  =====================
56-A       0.1 / 0.1 / 0.1  16, 20, 38, 54
56-B       0.6 / 0.3 / 0.1  16, 18, 20, 34, 38, 54
110-A      0.5 / 0 / 0      36
110-B      0.5 / 0.4 / 0.3  36, 38, 74
=========  ===============  =====================

ResNet-34-A/B (ImageNet, torchvision's ``resnet34``; Liu et al.'s ImageNet L1-norm code):
the same rule over the four stages of basic blocks (stem = conv 1, block b = convs 2b, 2b+1,
b = 1..16), p per stage 0.3 / 0.3 / 0.3 / 0 (A) and 0.5 / 0.6 / 0.4 / 0 (B), convs 2, 8,
14, 16, 26, 28, 30, 32 skipped. This removes 7.55% (A) and 10.68% (B) of the parameters;
Liu et al.'s Table 1 reports 7.6% and 10.8% (tests/test_structured_imagenet_configs.py).

``predefined_ratios(name, model)`` gives ``{layer_name: p}``; ``kept_counts`` turns ratios into
the exact channel counts. C is the model's own width, so a width-0.5 model gets the same
ratios on its halved channels.
"""
from __future__ import annotations

from typing import Dict, Tuple

from torch import nn

from ..models.resnet import conv_numbering
from .. import params as valid
from .shrink import out_channels

# name -> (model depth, per-stage ratios, skipped conv numbers)
RESNET_CONFIGS: Dict[str, Tuple[int, Tuple[float, float, float], Tuple[int, ...]]] = {
    "resnet56-a": (56, (0.1, 0.1, 0.1), (16, 20, 38, 54)),
    "resnet56-b": (56, (0.6, 0.3, 0.1), (16, 18, 20, 34, 38, 54)),
    "resnet110-a": (110, (0.5, 0.0, 0.0), (36,)),
    "resnet110-b": (110, (0.5, 0.4, 0.3), (36, 38, 74)),
}
# ImageNet ResNet-34 (four stages of basic blocks): name -> (per-stage ratios, skipped convs)
IMAGENET_RESNET_CONFIGS: Dict[str, Tuple[Tuple[float, float, float, float], Tuple[int, ...]]] = {
    "resnet34-a": ((0.3, 0.3, 0.3, 0.0), (2, 8, 14, 16, 26, 28, 30, 32)),
    "resnet34-b": ((0.5, 0.6, 0.4, 0.0), (2, 8, 14, 16, 26, 28, 30, 32)),
}
# VGG-16-A: conv indices (0-based, in the order of the features' Conv2d modules) -> ratio
VGG16_A = {0: 0.5, **{i: 0.5 for i in range(7, 13)}}
PREDEFINED = ("vgg16-a", *RESNET_CONFIGS, *IMAGENET_RESNET_CONFIGS)


def _resnet_ratios(name: str, model: nn.Module) -> Dict[str, float]:
    depth, ratios, skipped = RESNET_CONFIGS[name]
    numbering = conv_numbering(model)
    blocks = (len(numbering) - 1) // 2
    if blocks * 2 + 2 != depth:
        raise ValueError(f"{name} needs a ResNet-{depth}, got a ResNet with {blocks} blocks (depth {blocks * 2 + 2})")
    per_stage = blocks // 3
    out: Dict[str, float] = {}
    for number, layer in numbering:
        if number % 2 or number == 1 or number in skipped:
            continue  # odd convs (block outputs) and the stem are never pruned; skipped ones are sensitive
        stage = (number // 2 - 1) // per_stage
        if ratios[stage] > 0:
            out[layer] = ratios[stage]
    return out


def _imagenet_resnet_ratios(name: str, model: nn.Module) -> Dict[str, float]:
    ratios, skipped = IMAGENET_RESNET_CONFIGS[name]
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if not all(isinstance(s, nn.Sequential) for s in stages) or [len(s) for s in stages] != [3, 4, 6, 3] \
            or not all(hasattr(block, "conv1") and hasattr(block, "conv2") and not hasattr(block, "conv3")
                       for s in stages for block in s):
        raise ValueError(f"{name} needs an ImageNet ResNet-34 (torchvision resnet34: basic blocks 3, 4, 6, 3 in "
                         f"layer1..layer4)")
    out: Dict[str, float] = {}
    b = 0
    for stage, (layer, p) in enumerate(zip(stages, ratios), start=1):
        for i in range(len(layer)):
            b += 1
            if p > 0 and 2 * b not in skipped:
                out[f"layer{stage}.{i}.conv1"] = p
    return out


def block_inner_ratios(model: nn.Module, ratio: float) -> Dict[str, float]:
    """The same pruning ratio on the first conv of every basic block of a CIFAR ResNet (the
    rule of the A/B configurations with one ratio everywhere and nothing skipped): the only
    convs an option-A ResNet can lose channels in. E.g. ResNet-20 at 0.5: about 1.9x fewer FLOPs."""
    valid.check(valid.fraction_removed, ratio, "pruning ratio")
    return {layer: ratio for number, layer in conv_numbering(model) if number % 2 == 0 and number > 1}


def _vgg16_ratios(model: nn.Module) -> Dict[str, float]:
    features = getattr(model, "features", None)
    convs = [f"features.{n}" for n, m in features.named_children() if isinstance(m, nn.Conv2d)] if features else []
    if len(convs) != 13:
        raise ValueError(f"vgg16-a needs a VGG-16 (13 convs in .features), got {len(convs)} convs")
    return {convs[i]: p for i, p in VGG16_A.items()}


def predefined_ratios(name: str, model: nn.Module) -> Dict[str, float]:
    """``{layer_name: fraction of its filters pruned}`` of predefined configuration ``name``."""
    key = name.lower()
    if key == "vgg16-a":
        return _vgg16_ratios(model)
    if key in RESNET_CONFIGS:
        return _resnet_ratios(key, model)
    if key in IMAGENET_RESNET_CONFIGS:
        return _imagenet_resnet_ratios(key, model)
    raise KeyError(f"unknown predefined configuration {name!r}; known: {', '.join(PREDEFINED)}")


def kept_counts(model: nn.Module, ratios: Dict[str, float]) -> Dict[str, int]:
    """Channels kept per layer: ``int(C * (1 - p))`` (Li et al.'s rounding), at least 1."""
    modules = dict(model.named_modules())
    out = {}
    for layer, p in ratios.items():
        valid.check(valid.fraction_removed, p, f"{layer}: pruning ratio")
        c = out_channels(modules[layer])
        out[layer] = max(1, int(c * (1.0 - p) + 1e-9))
    return out
