"""Physical channel removal: ``shrink(model, example_input, channels_to_remove)``.

Removing output channel ``c`` of a conv is only correct if every tensor that touches channel
``c`` loses it too: the filter and its bias, the BatchNorm's gamma, beta and running stats,
and the input slice of every consumer -- across residual additions (all convs feeding the
same sum), concatenations (DenseNet: an offset into the consumer's input) and grouped /
depthwise convs (the depthwise filter of that channel goes too). That set is the channel's
*dependency group*; torch-pruning's ``DependencyGraph`` traces the model once and returns it
(``get_pruning_group``), and ``group.prune()`` does the surgery in place.

``channels_to_remove`` maps a Conv/Linear module name to the *original* indices of the output
channels to remove. Two requested layers may share one group (two convs adding into the same
residual stream): the first of them (in the mapping's order) decides which channels the
group loses, and the later requests for that group are ignored.

Option-A ResNets (prunekit.models.resnet.PadShortcut): the zero-padding shortcut couples the
residual streams of consecutive stages in a way the dependency graph does not trace, so only
the first conv of each block (not the stem or the stage outputs) may be pruned there; other
requests raise ``ValueError`` (use shortcut "B", or prune block-inner convs as Li et al. do).

``zero_channels`` zeroes the same groups in place without removing anything: the masked
model computes exactly what the shrunk one does (the tests check it), because zeroing gamma
*and* beta makes a BN output exactly 0 (zeroing the filter alone leaks beta downstream).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ..models.resnet import PadShortcut

__all__ = ["shrink", "zero_channels", "out_channels", "prunable_layers", "ChannelGroup", "channel_groups"]


def _tp():
    try:
        pass
    except ImportError as err:  # pragma: no cover - a dependency, but say what is missing
        raise ImportError("structured pruning needs torch-pruning: pip install torch-pruning") from err
    return tp


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise ValueError(f"only Conv and Linear layers have prunable output channels, got {type(module).__name__}")


def _pad_shortcut_types() -> tuple:
    return (PadShortcut,)


def _outputs_module(model: nn.Module) -> set:
    """Names of the Linear layers that produce the model's output (never prunable)."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {linears[-1]} if linears else set()


def prunable_layers(model: nn.Module) -> List[str]:
    """The Conv/Linear layers whose output channels ``shrink`` may remove: all but the
    classifier; in an option-A ResNet only the ``conv1`` of each block (see module doc)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    names = [n for n in names if n not in _outputs_module(model)]
    if any(isinstance(m, _pad_shortcut_types()) for m in model.modules()):
        names = [n for n in names if n.endswith(".conv1") and n.count(".") == 2 and n.startswith("layer")]
    return names


def _check_request(model: nn.Module, channels: Mapping[str, Iterable[int]]) -> Dict[str, List[int]]:
    modules = dict(model.named_modules())
    allowed = set(prunable_layers(model))
    clean: Dict[str, List[int]] = {}
    for name, idxs in channels.items():
        if name not in modules:
            raise KeyError(f"no module named {name!r} in the model")
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            continue
        n = out_channels(modules[name])
        if idxs[0] < 0 or idxs[-1] >= n:
            raise ValueError(f"{name}: channel indices must be in [0, {n}), got {idxs[0]}..{idxs[-1]}")
        if len(idxs) >= n:
            raise ValueError(f"{name}: removing all {n} channels would cut the network; keep at least one")
        if name not in allowed:
            why = ("option-A ResNets (PadShortcut) only allow the first conv of each block"
                   if any(isinstance(m, _pad_shortcut_types()) for m in model.modules())
                   else "the classifier's outputs are the classes")
            raise ValueError(f"{name}: its output channels cannot be removed ({why}); prunable: {sorted(allowed)}")
        clean[name] = idxs
    return clean


def _graph(model: nn.Module, example_input: torch.Tensor):
    tp = _tp()
    # PadShortcut has no parameters and pads by a fixed count computed at forward time;
    # treating it as an element-wise op is only safe when its channels are left alone,
    # which _check_request guarantees.
    with torch.enable_grad():  # the tracer follows autograd's graph
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)


def _groups_for(model: nn.Module, example_input: torch.Tensor, request: Dict[str, List[int]], apply: bool):
    tp = _tp()
    dg = _graph(model, example_input)
    modules = dict(model.named_modules())
    name_of = {m: n for n, m in modules.items()}
    # kept[name]: the original indices of the channels still present in layer ``name``
    kept = {name: list(range(out_channels(modules[name]))) for name in request}
    original = {name: len(k) for name, k in kept.items()}  # tp shrinks the modules in place
    groups = []
    for name, idxs in request.items():
        if len(kept[name]) < original[name]:
            # An earlier request's group already pruned this layer (e.g. two convs adding
            # into one residual stream): the first requested layer decides for the group.
            continue
        current = list(idxs)
        module = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        group = dg.get_pruning_group(module, fn, idxs=current)
        if not dg.check_pruning_group(group):
            raise ValueError(f"{name}: removing channels {idxs} would leave a layer in its group with no channels")
        # Track what this group removes from the other requested layers.
        for dep, gidxs in group:
            other = name_of.get(dep.target.module)
            if other in kept and _is_out(dep) and other != name:
                gone = set(gidxs)
                kept[other] = [o for i, o in enumerate(kept[other]) if i not in gone]
        kept[name] = [o for i, o in enumerate(kept[name]) if i not in set(current)]
        if apply:
            group.prune()
        else:
            groups.append(group)
    return groups


def _is_out(dep) -> bool:
    return getattr(dep.handler, "__name__", "") == "prune_out_channels"


@dataclass
class ChannelGroup:
    """What removing output channels of one layer touches (its torch-pruning dependency group).

    ``members``: every Conv/Linear whose *output* channels go with the layer's (the layer
    itself, the other convs adding into the same residual stream, a depthwise conv following
    it), each with the member's channel index for each of the layer's channels (``[i]`` = the
    member channel removed with the layer's channel ``i``). ``readers``: the Conv/Linear layers
    whose *input* channels go (the consumers; a depthwise member is not a reader)."""

    members: Dict[str, List[int]]
    readers: List[str]

    @property
    def coupled(self) -> bool:
        """True when other layers' outputs are tied to this one (a residual stream, depthwise)."""
        return len(self.members) > 1


def channel_groups(model: nn.Module, example_input: torch.Tensor, layers: Sequence[str]) -> Dict[str, ChannelGroup]:
    """The :class:`ChannelGroup` of each Conv/Linear in ``layers`` (one trace of the model).
    Residual additions tie the convs that add into one stream: they can only lose the same
    channels, so a budget treats them as one unit and a reconstruction has no single consumer."""
    modules = dict(model.named_modules())
    name_of = {m: n for n, m in modules.items()}
    was_training = model.training
    model.eval()  # tracing must not update BN running stats
    try:
        dg = _graph(model, example_input)
    finally:
        model.train(was_training)
    out = {}
    for name in layers:
        module = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        group = dg.get_pruning_group(module, fn, idxs=list(range(out_channels(module))))
        members, readers = {name: list(range(out_channels(module)))}, []
        for dep, idxs in group:
            other = name_of.get(dep.target.module)
            if other is None or not isinstance(dep.target.module, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            if _is_out(dep):
                members.setdefault(other, [int(i) for i in idxs])
            elif other not in readers:
                readers.append(other)
        out[name] = ChannelGroup(members, [r for r in readers if r not in members])
    return out


def shrink(model: nn.Module, example_input: torch.Tensor, channels_to_remove: Mapping[str, Iterable[int]],
           inplace: bool = False) -> nn.Module:
    """Return ``model`` with the given output channels physically removed (a smaller
    ``nn.Module`` with fewer channels; BatchNorms and consumers updated).

    ``channels_to_remove``: ``{conv_or_linear_name: [original channel indices]}``.
    ``example_input``: a batch the model accepts, used once to trace the dependency graph.
    The model is copied first unless ``inplace``. Works in eval and train mode alike.
    """
    request = _check_request(model, channels_to_remove)
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    model.eval()  # tracing must not update BN running stats
    _groups_for(model, example_input, request, apply=True)
    model.train(was_training)
    return model


@torch.no_grad()
def zero_channels(model: nn.Module, example_input: torch.Tensor, channels_to_remove: Mapping[str, Iterable[int]]) -> nn.Module:
    """Zero, in place, everything ``shrink`` would remove: filters, biases, BN gamma and beta
    (and BN running mean, so eval-mode BN outputs exactly 0), and consumers' input slices.
    Returns ``model`` (same architecture, same state_dict keys)."""
    request = _check_request(model, channels_to_remove)
    was_training = model.training
    model.eval()
    for group in _groups_for(model, example_input, request, apply=False):
        for dep, idxs in group:
            module = dep.target.module
            if not isinstance(module, nn.Module) or not idxs:
                continue
            idx = torch.as_tensor(list(idxs), dtype=torch.long)
            if _is_out(dep):
                for attr in ("weight", "bias", "running_mean"):
                    t = getattr(module, attr, None)
                    if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] > int(idx.max()):
                        t.index_fill_(0, idx, 0.0)
            elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and getattr(module, "groups", 1) == 1:
                if module.weight.shape[1] > int(idx.max()):
                    module.weight.index_fill_(1, idx, 0.0)
    model.train(was_training)
    return model
