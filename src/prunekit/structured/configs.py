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

ThiNet ResNet-50 (Luo et al. 2017; seed 001, "predefined target architecture 2": ResNet50-30%,
-50%, -70%): ThiNet prunes only the first two convs of every bottleneck (``conv1``, ``conv2``
of torchvision's ``resnet50``; ``conv3``, the block outputs and the shortcuts keep their width,
the residual sums must match), all 16 blocks at one rate. **The percentage is the fraction of
filters KEPT**, not removed: the seed's ThiNet objective removes ``|T| = C x (1 - r)``
channels with r "the compression rate", so r channels of C remain, and in the seed's table
ResNet50-30% loses the most accuracy (-6.72 fine-tuned vs -3.10 for 70%): it is the smallest
model. So ``resnet50-thinet-30`` removes 70% of the filters of each conv1/conv2 (64 -> 19).
Measured on torchvision's resnet50 (25.56M parameters, 8.18 GFLOPs at 224x224, 2 FLOPs per
multiply-add) versus the ThiNet paper's Table (Luo et al. 2017, not in the seed: 25.56M / 7.72
GFLOPs; ThiNet-70 16.94M / 4.88G, ThiNet-50 12.38M / 3.41G, ThiNet-30 8.66M / 2.20G):

==================  =============  ===================  =====================
config              conv1/2 width  params: here (paper)  FLOPs kept: here (paper)
==================  =============  ===================  =====================
resnet50-thinet-70  64 -> 44       16.95M (16.94M)       63.6% (4.88/7.72 = 63.2%)
resnet50-thinet-50  64 -> 32       12.38M (12.38M)       44.6% (3.41/7.72 = 44.2%)
resnet50-thinet-30  64 -> 19       8.67M (8.66M)         28.5% (2.20/7.72 = 28.5%)
==================  =============  ===================  =====================

(widths of layer1; the other stages scale alike). The parameter counts agree with the paper's
to 0.01M, which confirms the kept-fraction reading (the removed-fraction reading would give
ThiNet-30 the largest model); tests/test_structured_imagenet_configs.py checks them.

Channel pruning (He et al. 2017; seed 001, "predefined target architecture 3": VGG-16-5x,
ResNet-50-2x) are FLOPs targets, not per-layer widths: the name is the speed-up, 5x (FLOPs
kept 1/5) and 2x (1/2). He et al. choose the channels per layer by LASSO regression; what
prunekit fixes is *where* and *how much*: ``FLOPS_TARGETS`` gives the layers He et al. prune
and the FLOPs fraction, and ``select.flops_target_ratios`` finds the one ratio over those
layers whose shrunk model keeps that fraction of the FLOPs (``uniform_for_flops``'s
bisection); the channels are then chosen by a score or by ``selection="lasso"``:

- vgg16-5x: conv1_1 ... conv4_3 (the first 10 convs); conv5_x and the classifier keep their
  width. This is a reading (the seed names only the target): He et al. keep conv5_x, and the
  VGG-16-5x widths of a public PyTorch re-implementation used for training it from scratch,
  24 22 41 51 108 89 111 184 276 228 | 512 512 512, leave conv5_x at 512 too. On torchvision's vgg16
  at 224x224 the bisection removes 63.2% of each: widths 23 23 47 47 94 94 94 188 188 188,
  130.26M parameters (of 138.36M), 20.1% of the FLOPs (those published widths: 130.88M, 22.7%);
- resnet50-2x: conv1 and conv2 of every bottleneck (He et al.'s branch2a and branch2b;
  branch2c and the shortcuts keep their width, as for ThiNet). On torchvision's resnet50 at
  224x224: 43.7% removed (64 -> 36 in layer1), 13.72M parameters, 50.3% of the FLOPs.
  (The seed gives no parameter or FLOPs figures for these two, only accuracies.)

The FLOPs fraction is that of the whole model at the given input (use 224x224: VGG's
classifier FLOPs do not shrink with the image, so at a smaller input it weighs more).

``predefined_ratios(name, model)`` gives ``{layer_name: p}``; ``kept_counts`` turns ratios into
the exact channel counts. C is the model's own width, so a width-0.5 model gets the same
ratios on its halved channels.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

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
# ThiNet ResNet-50: name -> fraction of the filters of each bottleneck's conv1 and conv2 KEPT
THINET_CONFIGS: Dict[str, float] = {"resnet50-thinet-30": 0.3, "resnet50-thinet-50": 0.5, "resnet50-thinet-70": 0.7}
# He et al.'s channel pruning: name -> fraction of the FLOPs kept (layers: ``flops_target_layers``)
FLOPS_TARGETS: Dict[str, float] = {"vgg16-5x": 1 / 5, "resnet50-2x": 1 / 2}
# VGG-16-A: conv indices (0-based, in the order of the features' Conv2d modules) -> ratio
VGG16_A = {0: 0.5, **{i: 0.5 for i in range(7, 13)}}
PREDEFINED = ("vgg16-a", *RESNET_CONFIGS, *IMAGENET_RESNET_CONFIGS, *THINET_CONFIGS)


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


def _resnet50_inner_convs(name: str, model: nn.Module) -> List[str]:
    """conv1 and conv2 of every bottleneck of a torchvision-style ResNet-50."""
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if not all(isinstance(s, nn.Sequential) for s in stages) or [len(s) for s in stages] != [3, 4, 6, 3] \
            or not all(all(isinstance(getattr(block, c, None), nn.Conv2d) for c in ("conv1", "conv2", "conv3"))
                       for s in stages for block in s):
        raise ValueError(f"{name} needs an ImageNet ResNet-50 (torchvision resnet50: bottlenecks 3, 4, 6, 3 in "
                         f"layer1..layer4)")
    return [f"layer{stage}.{i}.{conv}" for stage, s in enumerate(stages, start=1) for i in range(len(s))
            for conv in ("conv1", "conv2")]


def _thinet_ratios(name: str, model: nn.Module) -> Dict[str, float]:
    removed = round(1.0 - THINET_CONFIGS[name], 10)   # the name gives the fraction kept
    return {layer: removed for layer in _resnet50_inner_convs(name, model)}


def _vgg16_convs(name: str, model: nn.Module) -> List[str]:
    features = getattr(model, "features", None)
    convs = [f"features.{n}" for n, m in features.named_children() if isinstance(m, nn.Conv2d)] if features else []
    if len(convs) != 13:
        raise ValueError(f"{name} needs a VGG-16 (13 convs in .features), got {len(convs)} convs")
    return convs


def flops_target_layers(name: str, model: nn.Module) -> Tuple[float, List[str]]:
    """(fraction of the FLOPs kept, layers pruned) of He et al.'s target ``name``."""
    key = name.lower()
    if key == "vgg16-5x":
        return FLOPS_TARGETS[key], _vgg16_convs(key, model)[:10]   # conv1_1 ... conv4_3
    if key == "resnet50-2x":
        return FLOPS_TARGETS[key], _resnet50_inner_convs(key, model)
    raise KeyError(f"unknown FLOPs target {name!r}; known: {', '.join(FLOPS_TARGETS)}")


def block_inner_ratios(model: nn.Module, ratio: float) -> Dict[str, float]:
    """The same pruning ratio on the first conv of every basic block of a CIFAR ResNet (the
    rule of the A/B configurations with one ratio everywhere and nothing skipped): the only
    convs an option-A ResNet can lose channels in. E.g. ResNet-20 at 0.5: about 1.9x fewer FLOPs."""
    valid.check(valid.fraction_removed, ratio, "pruning ratio")
    return {layer: ratio for number, layer in conv_numbering(model) if number % 2 == 0 and number > 1}


def _vgg16_ratios(model: nn.Module) -> Dict[str, float]:
    convs = _vgg16_convs("vgg16-a", model)
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
    if key in THINET_CONFIGS:
        return _thinet_ratios(key, model)
    if key in FLOPS_TARGETS:
        raise KeyError(f"{name!r} is a FLOPs target: its ratios depend on the input size, use "
                       f"structured.select.flops_target_ratios(name, model, example_input)")
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
