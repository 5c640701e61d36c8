"""Li et al.'s sensitivity analysis (Li, Kadav, Durdanovic, Samet & Graf 2017, "Pruning Filters
for Efficient ConvNets", Sec. 3.3 / 4.1, Fig. 2(b) and 3): prune each layer *on its own*, its
lowest-L1 filters at increasing fractions, and evaluate the model without retraining. The
layers whose accuracy falls fast are sensitive (skipped or pruned little: the A/B
configurations of :mod:`prunekit.structured.configs` are the authors' outcome of this analysis
on VGG-16 / ResNet-56 / ResNet-110); flat curves mark layers that can go.

``curves[layer] = [{"fraction", "channels_removed", "top1", "top5", "loss"}, ...]``, fraction
0 being the unpruned model. Each point removes ``C - int(C (1 - fraction))`` filters of the
layer (Li et al.'s count, :func:`prunekit.structured.select.by_ratios`), together with its
dependency group (BN channels, the consumers' input slices), through ``shrink``.
"""
from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, List, Optional, Sequence

from torch import nn

from ..training import evaluate
from .plan import example_input
from .select import by_ratios
from .shrink import prunable_layers, shrink

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class _Batches:
    """The first ``n`` batches of a loader (None: all of them)."""

    def __init__(self, loader: Iterable, n: Optional[int]):
        self.loader, self.n = loader, n

    def __iter__(self):
        return iter(self.loader) if self.n is None else itertools.islice(iter(self.loader), self.n)


def sensitivity(model: nn.Module, test: Iterable, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                layers: Optional[Sequence[str]] = None, score: str = "l1_filter", device: Any = "cpu",
                max_batches: Optional[int] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Per-layer accuracy vs fraction of filters pruned (see the module docstring). ``layers``
    default to every prunable layer (in an option-A ResNet the first conv of each block);
    ``model`` is not changed."""
    for f in fractions:
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"fractions must be in (0, 1) (a fraction of the layer's filters pruned), got {f!r}")
    model = model.eval()
    names = list(layers) if layers is not None else prunable_layers(model)
    allowed = set(prunable_layers(model))
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"not prunable layers: {unknown[:3]}; prunable: {sorted(allowed)[:8]} ...")
    batches = _Batches(test, max_batches)
    base = evaluate(model, batches, device=device)
    x = example_input(model)
    curves: Dict[str, List[Dict[str, Any]]] = {}
    modules = dict(model.named_modules())
    for name in names:
        width = modules[name].weight.shape[0]
        rows = [{"fraction": 0.0, "channels_removed": 0, **{k: base[k] for k in ("top1", "top5", "loss")}}]
        for f in sorted(float(v) for v in fractions):
            plan = by_ratios(model, {name: f}, score)
            removed = len(plan.get(name, []))
            if removed == 0 or removed >= width:
                continue
            small = shrink(model, x, plan)
            result = evaluate(small, batches, device=device)
            rows.append({"fraction": f, "channels_removed": removed,
                         **{k: result[k] for k in ("top1", "top5", "loss")}})
        curves[name] = rows
    return curves
