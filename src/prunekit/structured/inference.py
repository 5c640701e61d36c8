"""Make a (shrunk or dense) CNN cheaper to run for inference, without changing its outputs.

- ``fold_batchnorm(model)``: every ``Conv -> BatchNorm`` pair whose convolution feeds only that
  BatchNorm becomes one convolution with a bias. In eval mode BN is the per-channel affine map
  ``y = gamma * (z - mu) / sqrt(var + eps) + beta``; with ``s = gamma / sqrt(var + eps)`` the
  folded convolution has ``W' = s[:, None, ...] * W`` and ``b' = s * (b - mu) + beta``
  (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", section 3.2; the arithmetic is torch's
  ``torch.nn.utils.fusion.fuse_conv_bn_eval``). The pairs are found on the ``torch.fx`` graph
  of the model; the model keeps its class and forward (the folded BN becomes ``nn.Identity``),
  so it is still the eager model, one memory pass per BN cheaper.
- ``choose_memory_format(model, x)``: ``contiguous`` (NCHW) or ``channels_last`` (NHWC),
  whichever runs the model faster on ``x``, by measurement (interleaved medians,
  ``prunekit.timing``); which one wins depends on the widths, the batch and the CPU's
  convolution kernels, so it is measured rather than assumed. ``to_memory_format`` applies a
  choice (the 4-D weights change layout; a convolution with a channels-last weight gives a
  channels-last output, so inputs need no conversion).
- ``prepare_for_inference``: both, in eval mode; what ``compare`` and the thin export time.

Exact up to float rounding: the folded model matches the eval-mode original to ~1e-6.
"""
from __future__ import annotations

import copy
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..timing import time_interleaved

__all__ = ["fold_batchnorm", "foldable_pairs", "MEMORY_FORMATS", "to_memory_format", "choose_memory_format",
           "MemoryFormatChoice", "prepare_for_inference", "Prepared"]

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm

# timer(candidates) -> {name: seconds per call}; injectable so the choice logic is testable
# without timing anything.
Timer = Callable[[Mapping[str, Callable[[], object]]], Mapping[str, float]]


def foldable_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """``[(conv name, bn name), ...]``: the BatchNorms (with running statistics) that read the
    output of a convolution nothing else reads, each module called once in the forward.
    Raises ValueError when ``torch.fx`` cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...) on dynamic code
        raise ValueError(f"fold_batchnorm needs a model torch.fx can trace ({type(model).__name__}: "
                         f"{type(err).__name__}: {err})") from err
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN) or len(node.args) != 1:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or not isinstance(modules.get(src.target), _CONV):
            continue
        conv, bn = modules[src.target], modules[node.target]
        # Folding rewrites the conv's output, so nothing else may read it; a BN without running
        # statistics normalises with batch statistics even in eval mode (not a fixed affine map).
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1 or bn.running_mean is None:
            continue
        if conv.out_channels != bn.num_features:
            continue
        pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` in eval mode with every foldable Conv -> BN pair (``foldable_pairs``) merged
    into the convolution (see the module docstring); the BNs become ``nn.Identity``. For
    inference only: training the result would no longer normalise. Copies unless ``inplace``."""
    if not inplace:
        model = copy.deepcopy(model)
    return _fold(model.eval(), foldable_pairs(model))


def _fold(model: nn.Module, pairs: List[Tuple[str, str]]) -> nn.Module:
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        model.set_submodule(conv_name, fuse_conv_bn_eval(modules[conv_name], modules[bn_name]))
        model.set_submodule(bn_name, nn.Identity())
    return model


def to_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """``model`` with its 4-D parameters and buffers in ``memory_format`` (a ``MEMORY_FORMATS``
    name), in place."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return model.to(memory_format=MEMORY_FORMATS[memory_format])


def _has_4d_weights(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


@dataclass(frozen=True)
class MemoryFormatChoice:
    """The faster memory format and the seconds per forward of each candidate (empty when
    there was nothing to choose: a model without 4-D weights stays contiguous)."""

    memory_format: str
    seconds: Dict[str, float] = field(default_factory=dict)


def _default_timer(repeats: int) -> Timer:
    def timer(fns):
        with torch.inference_mode():
            return {name: t.median for name, t in time_interleaved(fns, repeats=repeats, warmup=2).items()}
    return timer


def choose_memory_format(model: nn.Module, example_input: torch.Tensor, timer: Optional[Timer] = None,
                         repeats: int = 7) -> MemoryFormatChoice:
    """Run ``model`` on ``example_input`` (the batch size you will use) in each memory format,
    interleaved, and return the faster one. ``timer`` (default: medians of ``repeats``
    interleaved runs) maps ``{format: callable}`` to ``{format: seconds}``. ``model`` is not
    changed (the candidates are copies). A tie keeps ``contiguous`` (no conversion)."""
    if not _has_4d_weights(model) or example_input.dim() != 4:
        return MemoryFormatChoice("contiguous")
    candidates = {name: to_memory_format(copy.deepcopy(model).eval(), name) for name in MEMORY_FORMATS}
    fns = {name: functools.partial(m, example_input) for name, m in candidates.items()}
    seconds = dict((timer or _default_timer(repeats))(fns))
    missing = set(MEMORY_FORMATS) - set(seconds)
    if missing:
        raise ValueError(f"the timer must return seconds for {sorted(MEMORY_FORMATS)}; missing {sorted(missing)}")
    best = min(MEMORY_FORMATS, key=lambda name: (seconds[name], name != "contiguous"))
    return MemoryFormatChoice(best, seconds)


@dataclass
class Prepared:
    """``prepare_for_inference``'s result: the model to run and what was done to it."""

    module: nn.Module
    folded: List[Tuple[str, str]]
    memory_format: MemoryFormatChoice

    def describe(self) -> str:
        fmt = self.memory_format.memory_format
        return f"{len(self.folded)} BN folded, {fmt}"


def prepare_for_inference(model: nn.Module, example_input: Optional[torch.Tensor] = None, *, fold: bool = True,
                          memory_format: str = "auto", timer: Optional[Timer] = None, repeats: int = 7) -> Prepared:
    """A copy of ``model`` in eval mode with BN folded (``fold``) and in ``memory_format``
    (``"auto"``: ``choose_memory_format`` on ``example_input``, which is then required)."""
    if memory_format != "auto" and memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be auto, {' or '.join(MEMORY_FORMATS)}; got {memory_format!r}")
    module = copy.deepcopy(model).eval()
    folded = foldable_pairs(module) if fold else []
    _fold(module, folded)
    if memory_format == "auto":
        if example_input is None:
            raise ValueError("memory_format='auto' measures the model: pass example_input (a batch of the size you use)")
        choice = choose_memory_format(module, example_input, timer=timer, repeats=repeats)
    else:
        choice = MemoryFormatChoice(memory_format)
    to_memory_format(module, choice.memory_format)
    return Prepared(module, folded, choice)
