"""Pick the heads and FFN channels to remove for a FLOPs budget: ``select_for_flops``.

Cost of a unit (from :func:`prunekit.core.accounting.flops_per_module` of the dense model,
at the example input's shape): a head of layer l costs its share of the l's q/k/v/output
projections (their FLOPs / heads) plus its share of the attention products (QKᵀ and AV:
the counted FLOPs no weight owns, split evenly over all heads -- every layer sees the same
sequence length); an FFN channel costs its share of the two FFN Linears. Removing units
lowers the FLOPs by exactly the sum of their costs, so the prediction is checked against
the recount of the shrunk model (``shrink_for_flops`` reports both).

Which units: heads are ranked among heads and channels among channels, over all layers.
Weight-norm scores are first divided by the mean score of their layer (weights differ in
scale from layer to layer); calibration scores are not, since they measure what a unit
writes into the residual stream, in the same units in every layer. (In
benchmarks/bench_minilm_shrink.py, all-MiniLM-L6-v2 at 0.5x FLOPs: held-out cosine to the
dense embeddings 0.49 vs 0.43 for L2/L1 with vs without the division, 0.65 vs 0.76 for the
calibration scores.) The two rankings are merged so that heads and channels lose the same
fraction of their counts as the budget tightens. Units are taken in that order -- skipping any
that would leave a layer without heads or channels -- until the FLOPs reach the budget;
the last unit is kept if that lands closer. So the achieved ratio is within one unit's
cost (one head or one channel) of the request, unless the minimum per layer stops it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ..core.accounting import flops_per_module
from .transformer_layers import TransformerLayer, transformer_layers
from .transformer_scores import ffn_importance, head_importance
from .transformer_shrink import shrink_transformer

__all__ = ["TransformerPlan", "unit_costs", "select_for_flops", "shrink_for_flops"]


@dataclass
class TransformerPlan:
    """What to remove (``heads`` / ``ffn``: {layer position: [indices]}) and its FLOPs."""

    heads: Dict[int, List[int]] = field(default_factory=dict)
    ffn: Dict[int, List[int]] = field(default_factory=dict)
    flops_dense: int = 0
    flops_predicted: int = 0
    requested_ratio: float = 1.0
    max_unit_flops: int = 0  # the costliest single unit: the budget's resolution

    @property
    def predicted_ratio(self) -> float:
        return self.flops_predicted / self.flops_dense


def _flops_of(per_module: Dict[str, int], names: Iterable[str]) -> int:
    return sum(per_module.get(n, 0) for n in names)


def _projection_names(name_of: Dict[nn.Module, str], layer: TransformerLayer) -> List[str]:
    if layer.packed:
        return [name_of[layer.attention] + ".in_proj_weight", name_of[layer.attention.out_proj]]
    return [name_of[m] for m in layer.projections()]


def unit_costs(model: nn.Module, example_input) -> Tuple[Dict[int, float], Dict[int, float], int]:
    """({layer: FLOPs of one head}, {layer: FLOPs of one FFN channel}, dense total FLOPs)."""
    per_module, total = flops_per_module(model, example_input=example_input)
    layers = transformer_layers(model)
    name_of = {m: n for n, m in model.named_modules()}
    unowned = total - sum(per_module.values())  # the attention products (QKᵀ, AV)
    all_heads = sum(layer.num_heads for layer in layers)
    head, channel = {}, {}
    for pos, layer in enumerate(layers):
        proj = _flops_of(per_module, _projection_names(name_of, layer))
        head[pos] = proj / layer.num_heads + unowned / all_heads
        channel[pos] = _flops_of(per_module, [name_of[m] for m in layer.ffn()]) / layer.intermediate_size
    return head, channel, total


CALIBRATED = {"output", "activation"}  # scores in residual-stream units: comparable across layers


def _ranked(scores: Dict[int, torch.Tensor], per_layer: bool) -> List[Tuple[int, int]]:
    """(layer, index) of every unit, least important first (``per_layer``: score / its
    layer's mean score)."""
    units = []
    for pos, s in scores.items():
        s = s.double()
        rel = s / s.mean() if per_layer and float(s.mean()) > 0 else s
        units += [(float(v), pos, i) for i, v in enumerate(rel.tolist())]
    units.sort()
    return [(pos, i) for _, pos, i in units]


def select_for_flops(model: nn.Module, example_input, flops_ratio: float, head_score: str = "l2",
                     ffn_score: str = "l1", calib: Optional[Iterable] = None,
                     per_layer: Optional[bool] = None) -> TransformerPlan:
    """The heads and FFN channels whose removal leaves about ``flops_ratio`` of the dense
    FLOPs (at ``example_input``'s shape), least important first (see module doc).
    ``per_layer``: divide scores by their layer's mean before ranking (default: for the
    weight-norm scores, not for the calibration ones)."""
    if not 0.0 < flops_ratio <= 1.0:
        raise ValueError(f"flops_ratio must be in (0, 1], got {flops_ratio!r}")
    calib = list(calib) if calib is not None else None  # used twice
    head_cost, channel_cost, total = unit_costs(model, example_input)
    layers = transformer_layers(model)
    heads = _ranked(head_importance(model, head_score, calib),
                    head_score not in CALIBRATED if per_layer is None else per_layer)
    channels = _ranked(ffn_importance(model, ffn_score, calib),
                       ffn_score not in CALIBRATED if per_layer is None else per_layer)
    # Merge: the k-th head goes at fraction k/len(heads), the k-th channel at k/len(channels).
    order = sorted([((k + 1) / len(heads), "heads", u) for k, u in enumerate(heads)]
                   + [((k + 1) / len(channels), "ffn", u) for k, u in enumerate(channels)])
    left = {"heads": [layer.num_heads for layer in layers], "ffn": [layer.intermediate_size for layer in layers]}
    cost = {"heads": head_cost, "ffn": channel_cost}
    plan = TransformerPlan(flops_dense=total, requested_ratio=flops_ratio,
                           max_unit_flops=int(max(max(head_cost.values()), max(channel_cost.values()))))
    target, flops = flops_ratio * total, float(total)
    for _, kind, (pos, idx) in order:
        if flops <= target:
            break
        if left[kind][pos] <= 1:
            continue  # every layer keeps a head and an FFN channel
        step = cost[kind][pos]
        if flops - step < target and target - (flops - step) > flops - target:
            break  # stopping here lands closer to the budget
        getattr(plan, kind).setdefault(pos, []).append(idx)
        left[kind][pos] -= 1
        flops -= step
    plan.heads = {p: sorted(v) for p, v in sorted(plan.heads.items())}
    plan.ffn = {p: sorted(v) for p, v in sorted(plan.ffn.items())}
    plan.flops_predicted = int(round(flops))
    return plan


def shrink_for_flops(model: nn.Module, example_input, flops_ratio: float, head_score: str = "l2",
                     ffn_score: str = "l1", calib: Optional[Iterable] = None, per_layer: Optional[bool] = None):
    """``(shrunk model, plan, report)``: ``select_for_flops`` then ``shrink_transformer``;
    the report gives the requested, predicted and achieved (recounted) FLOPs ratios."""
    plan = select_for_flops(model, example_input, flops_ratio, head_score, ffn_score, calib, per_layer)
    small = shrink_transformer(model, example_input, heads=plan.heads, ffn=plan.ffn)
    achieved = flops_per_module(small, example_input=example_input)[1]
    report = {"flops_dense": plan.flops_dense, "flops_shrunk": achieved, "requested_ratio": flops_ratio,
              "predicted_ratio": plan.predicted_ratio, "achieved_ratio": achieved / plan.flops_dense,
              "unit_step_ratio": plan.max_unit_flops / plan.flops_dense,
              "heads_removed": sum(map(len, plan.heads.values())),
              "ffn_channels_removed": sum(map(len, plan.ffn.values())),
              "params_dense": sum(p.numel() for p in model.parameters()),
              "params_shrunk": sum(p.numel() for p in small.parameters())}
    return small, plan, report
