"""Structured pruning at a budget: one entry point for every channel method (issue #19).

    res = prune_to_budget(model, x, flops_ratio=0.5, method="thinet", images=calib)
    res.model, res.plan, res.requested, res.achieved, res.memory

``flops_ratio`` / ``params_ratio`` are the fractions of the dense model's FLOPs / parameters
**kept** (as in ``uniform_for_flops``); the dense / pruned speedup is ``1 / achieved``.

**Which channels, how many.** ``method`` is a channel score of ``CHANNEL_SCORES`` (l1_filter,
bn_scale, random) or a data-driven selection of ``RECONSTRUCTIONS`` (thinet, lasso).
``allocation`` decides how many channels each layer loses:

- ``uniform``: every layer at the same ratio (Li et al. / ThiNet / He et al. prune each layer
  at one ratio); the channels leave one at a time in the order in which a growing uniform ratio
  would remove them (entry ``j`` of a layer of ``c`` channels at ratio ``j / c``);
- ``global``: one threshold over the scores of all layers (network slimming, Liu et al. 2017
  section 4.2), the lowest-scored channel first.

Walking that removal order one channel at a time, the entry point bisects the number of
removed channels so that the shrunk model's FLOPs (or parameters) are the closest to the
target on either side: the target is met **within one channel step** (the FLOPs of one more or
one fewer channel), and ``achieved`` vs ``requested`` is reported. Per-layer floors are exact:
a layer of ``c`` channels keeps at least ``max(min_channels, c - floor(max_ratio * c))``.
When the floors make the target unreachable, every layer stops at its floor, a warning says so
and ``met`` is False.

**Which layers.** Every prunable Conv/Linear of ``prunable_layers`` (all but the classifier),
including convs feeding a Linear through a flatten and depthwise convs: the surgery is
torch-pruning's dependency groups (``shrink``), which removes a depthwise filter with its
channel and the Linear's input columns with the channel they read. A grouped conv that is not
depthwise (1 < groups < channels) and its producer are left whole (their widths must stay
multiples of the groups; removing whole groups is not implemented).

**Residual streams.** The convs adding into one residual stream (a ResNet's stem, every
block's last conv and the projection shortcut of a stage, option B) can only lose the same
channels; so can a conv and the depthwise conv after it. ``shrink.channel_groups`` finds them
in the dependency graph and the budget walks each such group as **one unit** (represented by
its first layer in module order; its score per channel is the mean of its members' scores,
torch-pruning's group importance with mean reduction), so a stream is counted and removed
once. Option-A ResNets (zero-padding shortcut) only expose each block's first conv
(``prunable_layers``), which every method prunes as He et al. / ThiNet do on ResNets.

**Reconstruction** (``method`` thinet / lasso, structured/reconstruct.py's selections) prunes
the layers one after another in module order, each on the activations of the model pruned so
far, and refits the layer's consumer (the next ungrouped Conv2d, or the Linear that reads the
flattened channels: each channel owns ``H*W`` of its input columns). Statistics are streamed:

- ``locations`` sampled output positions per calibration image (ThiNet section 3.2: 10 per
  image, and 10 images per class are sampled by the pipelines), a random output filter per
  position for the channel-contribution Gram matrix ``Z^T Z`` and ``Z^T y`` (``C x C``);
- with ``scale="full"`` also the normal equations of the least-squares refit ``P^T P`` and
  ``P^T Y`` (``C*K x C*K`` and ``C*K x O``, ``K`` kernel taps or columns per channel);
- images are processed in chunks so that the statistics plus one chunk's activations stay within
  ``memory_bytes``; the statistics do not grow with the number of images. ``res.memory``
  reports the bytes of the statistics, of one chunk and their sum (the peak this code holds).

``target="dense"`` (default) reconstructs towards the **unpruned** model's consumer output, as
He et al. 2017 (section 3.1, the accumulated error is reduced); ``target="pruned"`` towards the
pruned-so-far model's own output (the former behaviour). ``scale="channel"`` (ThiNet's default)
is ThiNet's per-channel scaling (Luo et al. 2017, Eq. 6: one scalar per kept channel, least
squares on the contributions); ``scale="full"`` (LASSO's default) refits the whole consumer
filter on the kept channels (He et al.'s reconstruction, section 3.1); either is available to
both by name. ``after_layer(model, name)`` is called after each
layer is pruned (ThiNet's layer-wise fine-tuning; the ``budget`` pipeline passes a few
minibatches of SGD at a small lr).

A consumer that is grouped (e.g. a depthwise conv), or a layer whose channels no single
consumer reads (a residual stream: several convs produce it, several layers and the identity
path read it), has no reconstruction: that unit falls back to the l1_filter choice (mean over
its members) without a refit and is listed in ``res.fallbacks``. A consumer whose own outputs
lost channels with such a stream is reconstructed towards the dense output at the channels it
kept.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import params as valid
from ..core.accounting import flops_per_module
from ..registry import Registry
from .reconstruct import SELECTIONS, capture
from .scores import CHANNEL_SCORES
from .shrink import ChannelGroup, channel_groups, out_channels, prunable_layers, shrink

__all__ = ["prune_to_budget", "BudgetResult", "RECONSTRUCTIONS", "ALLOCATIONS", "channel_methods",
           "find_consumer", "layer_floor", "calibration_images", "reconstruct"]

# The data-driven selections on streamed normal equations (thinet, lasso): reconstruct.SELECTIONS.
RECONSTRUCTIONS: Registry = SELECTIONS
ALLOCATIONS = ("uniform", "global")
SCALES = ("channel", "full")
DEFAULT_SCALE = {"thinet": "channel", "lasso": "full"}  # each paper's own reconstruction
TARGETS = ("dense", "pruned")


def channel_methods() -> List[str]:
    """Every method ``prune_to_budget`` accepts: the channel scores, then the reconstructions."""
    return list(CHANNEL_SCORES.names()) + list(RECONSTRUCTIONS.names())


@dataclass
class BudgetResult:
    """What ``prune_to_budget`` did. ``requested`` / ``achieved``: kept fraction of ``metric``."""

    model: nn.Module
    plan: Dict[str, List[int]]
    metric: str
    requested: float
    achieved: float
    met: bool
    step: float  # the kept fraction one channel moves at the achieved point (the tolerance)
    dense: int
    pruned: int
    widths: Dict[str, Tuple[int, int]]  # layer -> (dense, kept) output channels
    memory: Dict[str, int] = field(default_factory=dict)
    fallbacks: List[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.dense / max(self.pruned, 1)

    def summary(self) -> Dict:
        return {"metric": self.metric, "requested": self.requested, "achieved": self.achieved, "met": self.met,
                "step": self.step, "dense": self.dense, "pruned": self.pruned, "speedup": self.speedup,
                "widths": {k: list(v) for k, v in self.widths.items()}, "memory": dict(self.memory),
                "fallbacks": list(self.fallbacks)}


def calibration_images(batches, per_class: int = 10, classes: Optional[int] = None) -> torch.Tensor:
    """The first ``per_class`` images of every class in ``batches`` (``(x, y)`` pairs, e.g. a
    seeded training loader): ThiNet's calibration set (Luo et al. 2017 section 4.1: 10 images
    per class, 10 sampled locations each). Stops as soon as every class seen is complete and
    ``classes`` (if given) have been seen."""
    valid.check(valid.int_at_least(1), per_class, "per_class")
    taken: Dict[int, List[torch.Tensor]] = {}
    for x, y in batches:
        for xi, yi in zip(x, y.tolist()):
            if len(taken.setdefault(int(yi), [])) < per_class:
                taken[int(yi)].append(xi)
        full = all(len(v) == per_class for v in taken.values())
        if full and (classes is None or len(taken) >= classes):
            break
    if not taken:
        raise ValueError("calibration_images: no batches")
    return torch.stack([xi for c in sorted(taken) for xi in taken[c]])


def layer_floor(channels: int, min_channels: int = 1, max_ratio: float = 1.0) -> int:
    """The fewest channels a layer of ``channels`` may keep: ``max(min_channels, c -
    floor(max_ratio * c))``, at most ``c``."""
    return min(channels, max(min_channels, channels - int(math.floor(max_ratio * channels + 1e-9))))


def _count(model: nn.Module, metric: str, x: torch.Tensor) -> int:
    if metric == "params":
        return sum(p.numel() for p in model.parameters())
    return flops_per_module(model, example_input=x)[1]


def _order_scores(model: nn.Module, layers: Sequence[str], method: str) -> Dict[str, torch.Tensor]:
    """Per-layer scores deciding which channels go first (higher = keep). Reconstructions
    choose their channels from data later; their counts use l1_filter here."""
    name = method if method in CHANNEL_SCORES.names() else "l1_filter"
    return {n: CHANNEL_SCORES.get(name)(model, n).float() for n in layers}


def _units(layers: Sequence[str], groups: Dict[str, ChannelGroup]) -> Dict[str, List[str]]:
    """Coupled layers as one unit: ``{representative: [its members among layers]}``, the first
    layer of each group (in ``layers``' order) representing it. The convs adding into one
    residual stream (or a conv and the depthwise conv after it) can only lose the same
    channels: planning them separately would count (and, layer by layer, remove) them twice."""
    units: Dict[str, List[str]] = {}
    taken = set()
    for name in layers:
        if name in taken:
            continue
        members = [n for n in layers if n in groups[name].members]
        units[name] = members
        taken.update(members)
    return units


def _unit_scores(model: nn.Module, units: Dict[str, List[str]], groups: Dict[str, ChannelGroup],
                 method: str) -> Dict[str, torch.Tensor]:
    """A unit's score per channel: the mean of its members' scores of that channel
    (torch-pruning's group importance with mean reduction), so that one global threshold
    compares a residual stream with single layers on the same scale."""
    out = {}
    for rep, members in units.items():
        per = _order_scores(model, members, method)
        out[rep] = torch.stack([per[m][groups[rep].members[m]] for m in members]).mean(dim=0)
    return out


def _removal_order(layers, widths, floors, scores, allocation) -> List[Tuple[str, int]]:
    """The sequence of (layer, channel) removals the budget walks, one channel at a time."""
    entries = []
    for pos, name in enumerate(layers):
        c = widths[name]
        ascending = torch.sort(scores[name], stable=True).indices.tolist()
        for j, ch in enumerate(ascending[: c - floors[name]]):
            key = ((j + 1) / c, pos, j) if allocation == "uniform" else (float(scores[name][ch]), pos, j)
            entries.append((key, name, ch))
    entries.sort(key=lambda e: e[0])
    return [(name, ch) for _, name, ch in entries]


def _plan_of(order: Sequence[Tuple[str, int]], k: int) -> Dict[str, List[int]]:
    plan: Dict[str, List[int]] = {}
    for name, ch in order[:k]:
        plan.setdefault(name, []).append(ch)
    return {n: sorted(v) for n, v in plan.items()}


def _removable_one_at_a_time(model: nn.Module, name: str, x: torch.Tensor) -> bool:
    """Whether removing one channel of ``name`` leaves a model that runs: not so for a grouped
    (not depthwise) conv or its producer, whose widths must stay multiples of the groups."""
    try:
        with torch.no_grad():
            shrink(model, x, {name: [0]}).eval()(x)
    except (RuntimeError, ValueError):
        return False
    return True


def _applicable_layers(model: nn.Module, method: str, x: torch.Tensor) -> List[str]:
    layers = []
    for name in prunable_layers(model):
        try:
            _order_scores(model, [name], method)
        except ValueError:
            continue  # e.g. bn_scale on a layer without its own BN
        if _removable_one_at_a_time(model, name, x):
            layers.append(name)
    return layers


def prune_to_budget(model: nn.Module, example_input: torch.Tensor, *, flops_ratio: Optional[float] = None,
                    params_ratio: Optional[float] = None, method: str = "l1_filter",
                    allocation: Optional[str] = None, min_channels: int = 1, max_ratio: float = 1.0,
                    layers: Optional[Sequence[str]] = None, images: Optional[torch.Tensor] = None,
                    locations: int = 10, scale: Optional[str] = None, target: str = "dense",
                    memory_bytes: int = 256 * 2 ** 20, ridge: float = 1e-6, seed: int = 0,
                    after_layer: Optional[Callable[[nn.Module, str], None]] = None) -> BudgetResult:
    """Shrink ``model`` to ``flops_ratio`` of its FLOPs or ``params_ratio`` of its parameters
    (exactly one; fractions **kept**) with ``method`` (see the module doc); returns a
    :class:`BudgetResult` with the new model (``model`` is left untouched)."""
    _check_arguments(flops_ratio, params_ratio, method, allocation, min_channels, max_ratio, images,
                     locations, scale, target, memory_bytes)
    metric, requested = ("flops", flops_ratio) if flops_ratio is not None else ("params", params_ratio)
    scale = scale or DEFAULT_SCALE.get(method, "channel")
    allocation = allocation or ("global" if method == "bn_scale" else "uniform")
    modules = dict(model.named_modules())
    layers = list(layers) if layers is not None else _applicable_layers(model, method, example_input)
    if not layers:
        raise ValueError(f"method {method!r} applies to no prunable layer of this model"
                         f"{' (bn_scale needs a BatchNorm right after the layer)' if method == 'bn_scale' else ''}")
    unknown = [n for n in layers if n not in set(prunable_layers(model))]
    if unknown:
        raise ValueError(f"layers {unknown} are not prunable; prunable: {prunable_layers(model)}")
    layers = [n for n in modules if n in set(layers)]  # module order: a unit's representative comes first
    widths = {n: out_channels(modules[n]) for n in layers}
    groups = channel_groups(model, example_input, layers)
    units = _units(layers, groups)  # the budget walks units: a residual stream counts once
    floors = {n: layer_floor(widths[n], min_channels, max_ratio) for n in units}
    order = _removal_order(list(units), widths, floors, _unit_scores(model, units, groups, method), allocation)

    dense = _count(model, metric, example_input)
    goal = requested * dense
    cache: Dict[int, int] = {}

    def count(k: int) -> int:
        if k not in cache:
            cache[k] = _count(shrink(model, example_input, _plan_of(order, k)), metric, example_input) if k else dense
        return cache[k]

    # The count falls (weakly) as k grows: the smallest k at or below the goal, then the closer side.
    lo, hi = 0, len(order)
    if count(hi) > goal:
        k = hi
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if count(mid) <= goal:
                hi = mid
            else:
                lo = mid + 1
        k = lo
        if k > 0 and abs(count(k - 1) - goal) < abs(count(k) - goal):
            k -= 1
    steps = [abs(count(j) - count(j + d)) for j, d in ((k, 1), (k, -1)) if 0 <= j + d <= len(order)]
    step = max(steps) / dense if steps else 0.0
    met = abs(count(k) - goal) <= max(steps or [0])
    if not met:
        warnings.warn(f"prune_to_budget: {metric}_ratio={requested} is out of reach with the floors "
                      f"(min_channels={min_channels}, max_ratio={max_ratio}): every layer stops at its floor, "
                      f"{count(k) / dense:.4f} of the {metric} kept", UserWarning, stacklevel=2)
    counts_plan = _plan_of(order, k)

    memory: Dict[str, int] = {}
    fallbacks: List[str] = []
    if method in RECONSTRUCTIONS.names():
        removes = {n: len(counts_plan.get(n, [])) for n in units}
        small, plan, memory, fallbacks = _reconstruct(model, example_input, removes, images, method, locations,
                                                      scale, target, memory_bytes, ridge, seed, after_layer)
    else:
        plan = counts_plan
        small = shrink(model, example_input, plan)
    pruned = _count(small, metric, example_input)
    small_modules = dict(small.named_modules())
    kept_widths = {n: (widths[n], out_channels(small_modules[n])) for n in layers}
    return BudgetResult(small, plan, metric, float(requested), pruned / dense, met, step, dense, pruned, kept_widths,
                        memory, fallbacks)


def _check_arguments(flops_ratio, params_ratio, method, allocation, min_channels, max_ratio, images, locations,
                     scale, target, memory_bytes) -> None:
    if (flops_ratio is None) == (params_ratio is None):
        raise ValueError("prune_to_budget: give exactly one of flops_ratio= or params_ratio= "
                         "(the fraction of FLOPs / parameters kept, in (0, 1])")
    valid.check(valid.fraction_kept, flops_ratio if flops_ratio is not None else params_ratio,
                "flops_ratio" if flops_ratio is not None else "params_ratio")
    if method not in channel_methods():
        raise KeyError(f"unknown channel method {method!r}; known: {', '.join(channel_methods())}")
    if allocation is not None and allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    valid.check(valid.int_at_least(1), min_channels, "min_channels")
    if not isinstance(max_ratio, (int, float)) or not 0.0 <= max_ratio <= 1.0:
        raise ValueError(f"max_ratio (the largest share of a layer's channels removed) must be in [0, 1], "
                         f"got {max_ratio!r}")
    if scale is not None and scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if method in RECONSTRUCTIONS.names():
        if not isinstance(images, torch.Tensor) or images.dim() < 2 or images.shape[0] < 1:
            raise ValueError(f"method {method!r} chooses channels from activations: pass images= "
                             "(a batch of calibration inputs, e.g. 10 per class)")
        valid.check(valid.int_at_least(1), locations, "locations (sampled positions per image)")
        valid.check(valid.int_at_least(1), memory_bytes, "memory_bytes")


# --------------------------------------------------------------------------- reconstruction


def find_consumer(model: nn.Module, name: str,
                  example_input: Optional[torch.Tensor] = None) -> Optional[Tuple[str, int]]:
    """``(consumer name, K)`` for the one layer that reads ``name``'s channels: an ungrouped
    Conv2d with as many input channels (K = its kernel taps) or a Linear whose input is those
    channels flattened (K = in_features / channels). None when there is no single consumer
    to refit: the channels belong to a residual stream (other convs add into them and several
    layers read them), a depthwise conv follows, or the reader is grouped. Traced through the
    dependency graph with ``example_input`` (default: zeros of ``model.input_shape``)."""
    if example_input is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError("find_consumer: pass example_input= (the model has no .input_shape to trace it with)")
        example_input = torch.zeros(1, *shape)
    return _consumer_of(model, name, channel_groups(model, example_input, [name])[name])


def _consumer_of(model: nn.Module, name: str, group: ChannelGroup) -> Optional[Tuple[str, int]]:
    if group.coupled or len(group.readers) != 1:
        return None
    modules = dict(model.named_modules())
    c = out_channels(modules[name])
    reader = modules[group.readers[0]]
    if isinstance(reader, nn.Conv2d) and reader.groups == 1 and reader.in_channels == c:
        return group.readers[0], reader.kernel_size[0] * reader.kernel_size[1]
    if isinstance(reader, nn.Linear) and reader.in_features % c == 0:
        return group.readers[0], reader.in_features // c
    return None


def _group_l1(model: nn.Module, name: str, group: ChannelGroup) -> torch.Tensor:
    """l1_filter of a unit: the mean over its members of each channel's filter L1 norm."""
    return _unit_scores(model, {name: list(group.members)}, {name: group}, "l1_filter")[name]


def _rows(consumer: nn.Module, k: int, x: torch.Tensor, locations: int, g: torch.Generator):
    """Input patches ``P`` (R, C, K) at sampled output positions and their (image, h, w) indices.
    A Linear consumer has one position per image (its input row, C channels x K columns)."""
    if isinstance(consumer, nn.Linear):
        n = x.shape[0]
        return x.reshape(n, -1, k).double(), (torch.arange(n), None, None)
    n, c, h, w = x.shape
    kh, kw = consumer.kernel_size
    sh, sw = consumer.stride
    dh, dw = consumer.dilation
    ph, pw = consumer.padding
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    ni = torch.arange(n).repeat_interleave(locations)
    hi = torch.randint(0, oh, (n * locations,), generator=g)
    wi = torch.randint(0, ow, (n * locations,), generator=g)
    xp = F.pad(x, (pw, pw, ph, ph))
    rr = hi[:, None, None] * sh + torch.arange(kh)[None, :, None] * dh  # (R, kh, 1)
    cc = wi[:, None, None] * sw + torch.arange(kw)[None, None, :] * dw  # (R, 1, kw)
    p = xp.permute(0, 2, 3, 1)[ni[:, None, None], rr, cc]  # (R, kh, kw, C)
    return p.reshape(p.shape[0], kh * kw, c).transpose(1, 2).double(), (ni, hi, wi)


def _targets(y: torch.Tensor, consumer: nn.Module, idx) -> torch.Tensor:
    """The consumer's output without bias at the sampled rows: (R, O)."""
    ni, hi, wi = idx
    rows = y[ni] if hi is None else y[ni, :, hi, wi]
    if consumer.bias is not None:
        rows = rows - consumer.bias.detach()
    return rows.double()


def _weight3(consumer: nn.Module, c: int, k: int) -> torch.Tensor:
    return consumer.weight.detach().double().reshape(consumer.weight.shape[0], c, k)


class _Stats:
    """Streamed statistics of one layer: Z^T Z, Z^T y (C x C, C) and, for a full refit, P^T P,
    P^T Y (CK x CK, CK x O). Their size does not depend on the number of images."""

    def __init__(self, c: int, k: int, o: int, full: bool):
        self.zz = torch.zeros(c, c, dtype=torch.float64)
        self.zy = torch.zeros(c, dtype=torch.float64)
        self.pp = torch.zeros(c * k, c * k, dtype=torch.float64) if full else None
        self.py = torch.zeros(c * k, o, dtype=torch.float64) if full else None

    @staticmethod
    def nbytes(c: int, k: int, o: int, full: bool) -> int:
        return 8 * (c * c + c + ((c * k) ** 2 + c * k * o if full else 0))

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.zz, self.zy, self.pp, self.py) if t is not None)

    def add(self, p: torch.Tensor, y: torch.Tensor, w: torch.Tensor, g: torch.Generator) -> None:
        r = p.shape[0]
        o = torch.randint(0, w.shape[0], (r,), generator=g)  # one random output filter per row
        z = (p * w[o]).sum(dim=2)  # (R, C): channel c's contribution to output o at the row
        self.zz += z.T @ z
        self.zy += z.T @ y[torch.arange(r), o]
        if self.pp is not None:
            flat = p.reshape(r, -1)
            self.pp += flat.T @ flat
            self.py += flat.T @ y


def _ridge_solve(a: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    a = a + ridge * a.diagonal().mean().clamp_min(1e-12) * torch.eye(a.shape[0], dtype=a.dtype)
    return torch.linalg.solve(a, b)


def reconstruct(model: nn.Module, example_input: torch.Tensor, removes: Dict[str, int], images: torch.Tensor,
                method: str = "thinet", locations: int = 10, scale: Optional[str] = None, target: str = "dense",
                memory_bytes: int = 256 * 2 ** 20, ridge: float = 1e-6, seed: int = 0,
                after_layer: Optional[Callable[[nn.Module, str], None]] = None):
    """Remove ``removes[layer]`` channels of each layer by ``method`` (thinet / lasso) with the
    streamed reconstruction above, for per-layer counts chosen elsewhere (e.g. Li et al.'s
    configurations). Returns ``(model, plan, memory, fallbacks)``; ``model`` is left untouched."""
    if method not in RECONSTRUCTIONS.names():
        raise KeyError(f"unknown reconstruction {method!r}; known: {', '.join(RECONSTRUCTIONS.names())}")
    scale = scale or DEFAULT_SCALE[method]
    _check_arguments(1.0, None, method, None, 1, 1.0, images, locations, scale, target, memory_bytes)
    return _reconstruct(model, example_input, removes, images, method, locations, scale, target, memory_bytes,
                        ridge, seed, after_layer)


def _shrink_tracked(model, x0, name, removed, group: ChannelGroup, alive: Dict[str, List[int]]):
    """``shrink`` one layer's channels and record which original output channels every member
    of its group keeps (a later consumer in a pruned residual stream compares its output with
    the dense model's at those channels)."""
    modules = dict(model.named_modules())
    for member, index in group.members.items():
        have = alive.get(member, list(range(out_channels(modules[member]))))
        gone = {index[i] for i in removed}
        alive[member] = [o for j, o in enumerate(have) if j not in gone]
    return shrink(model, x0, {name: removed})


def _reconstruct(model, x0, removes, images, method, locations, scale, target, memory_bytes, ridge, seed,
                 after_layer):
    """Layer by layer in module order: stream statistics, select, shrink, refit the consumer."""
    g = torch.Generator().manual_seed(seed)
    dense = model
    current = model
    plan: Dict[str, List[int]] = {}
    fallbacks: List[str] = []
    memory = {"memory_bytes": memory_bytes, "stats_bytes": 0, "chunk_bytes": 0, "peak_bytes": 0, "chunk_images": 0}
    order = [n for n, _ in model.named_modules() if n in removes and removes[n] > 0]
    tied = channel_groups(model, x0, order)
    for i, name in enumerate(order):
        clash = [o for o in order[:i] if name in tied[o].members]
        if clash:  # removing both would take the stream's channels twice
            raise ValueError(f"reconstruct: {clash[0]} and {name} share their channels (a residual stream or a "
                             f"depthwise pair); request one layer per channel group")
    alive: Dict[str, List[int]] = {}  # layer -> its original output channels still present
    for name in order:
        r = removes[name]
        group = channel_groups(current, x0, [name])[name]
        found = _consumer_of(current, name, group)
        if found is None:
            scores = _group_l1(current, name, group)
            removed = sorted(torch.sort(scores, stable=True).indices[:r].tolist())
            current = _shrink_tracked(current, x0, name, removed, group, alive)
            plan[name] = removed
            fallbacks.append(name)
            continue
        cname, k = found
        consumer = dict(current.named_modules())[cname]
        c = out_channels(dict(current.named_modules())[name])
        o = consumer.weight.shape[0]
        full = scale == "full"
        stats_bytes = _Stats.nbytes(c, k, o, full)
        # one image's share: the consumer's input (float32) and, in float64, its sampled rows
        x1 = capture(current, cname, images[:1], output=False)
        rows_per_image = 1 if isinstance(consumer, nn.Linear) else locations
        per_image = 4 * x1.numel() + 8 * rows_per_image * (c * k + o + c) + 4 * o * max(1, x1[0, 0].numel())
        if stats_bytes + per_image > memory_bytes:
            raise ValueError(f"{name}: memory_bytes={memory_bytes} is below the {stats_bytes + per_image} bytes "
                             f"one image needs ({stats_bytes} of statistics"
                             f"{' for the full refit: use scale=channel' if full else ''})")
        chunk = max(1, min(images.shape[0], (memory_bytes - stats_bytes) // per_image))
        stats = _Stats(c, k, o, full)
        w = _weight3(consumer, c, k)
        for start in range(0, images.shape[0], chunk):
            batch = images[start:start + chunk]
            xin = capture(current, cname, batch, output=False)
            if target == "dense":
                yout = capture(dense, cname, batch, output=True)
                if cname in alive:  # the consumer's outputs lost channels with a residual stream
                    yout = yout[:, alive[cname]]
            else:
                yout = capture(current, cname, batch, output=True)
            p, idx = _rows(consumer, k, xin, locations, g)
            stats.add(p, _targets(yout, consumer, idx), w, g)
            del xin, yout, p
        memory["stats_bytes"] = max(memory["stats_bytes"], stats.bytes())
        memory["chunk_bytes"] = max(memory["chunk_bytes"], chunk * per_image)
        memory["chunk_images"] = max(memory["chunk_images"], chunk)
        memory["peak_bytes"] = max(memory["peak_bytes"], stats.bytes() + chunk * per_image)
        removed = RECONSTRUCTIONS.get(method)(stats.zz, stats.zy, r)
        gone = set(removed)
        kept = [i for i in range(c) if i not in gone]
        if full:
            cols = torch.tensor([ci * k + t for ci in kept for t in range(k)])
            sol = _ridge_solve(stats.pp[cols][:, cols], stats.py[cols], ridge)  # (kept*K, O)
            new_w = sol.T.reshape(o, len(kept), k)
        else:
            s = _ridge_solve(stats.zz[kept][:, kept], stats.zy[kept], ridge)  # ThiNet Eq. 6
            new_w = w[:, kept] * s[None, :, None]
        current = _shrink_tracked(current, x0, name, removed, group, alive)
        with torch.no_grad():
            target_w = dict(current.named_modules())[cname].weight
            target_w.copy_(new_w.reshape(target_w.shape).to(target_w.dtype))
        plan[name] = removed
        if after_layer is not None:
            after_layer(current, name)
    if current is model:
        current = shrink(model, x0, {})
    return current, plan, memory, fallbacks
