"""Physically remove attention heads and FFN channels: ``shrink_transformer``.

    small = pk.structured.shrink_transformer(model, example_input,
                                             heads={0: [1, 3]}, ffn={"encoder.layer.1": [5, 9]})

``heads`` / ``ffn`` map a layer (index or module name, see :mod:`.transformer_layers`) to the
indices of the heads / intermediate channels to remove, counted in the model as it is now.

The surgery goes through torch-pruning's ``DependencyGraph``: removing output channels of
the query projection returns the group {query, key, value outputs; output projection
inputs} -- the tracer couples q, k and v through the attention op -- and removing output
channels of the FFN's expanding Linear returns {its outputs, the contracting Linear's
inputs}. Each group is checked to be exactly that before it is pruned. The residual width
(hidden size / ``embed_dim``) never changes. Afterwards the head counts are updated
(HF: ``num_attention_heads``, ``all_head_size``; torchvision: ``num_heads``), and an HF
model's config records what was removed, in *original* indices, so it can be rebuilt
(``pruned_heads``: {layer: [heads]}, ``pruned_intermediate``: {layer: [channels]}; see
:mod:`.transformer_io`).

``mask_transformer`` zeroes the same weights in the dense model instead; before any
fine-tuning both compute the same function (a head whose value rows and output columns are
zero adds exactly nothing; an FFN channel with zero input row and bias gives GELU(0) = 0).

``example_input`` is passed to the model as :func:`prunekit.core.flops.count_flops` does:
a tensor as ``model(x)``, a tuple as ``model(*x)``, a dict as ``model(**x)`` (so a
sentence-transformers model takes ``(features,)``).
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..core.calling import call_model, output_tensors
from .shrink import _tp
from .transformer_layers import TransformerLayer, find_layer, transformer_layers

__all__ = ["shrink_transformer", "mask_transformer", "check_request", "head_channels"]

Request = Mapping[object, Iterable[int]]


def head_channels(heads: Iterable[int], head_dim: int) -> List[int]:
    """The q/k/v output channels of the given heads."""
    return [h * head_dim + j for h in sorted(heads) for j in range(head_dim)]


def _clean(layers: List[TransformerLayer], request: Optional[Request], what: str) -> Dict[int, List[int]]:
    """{layer position: sorted unique indices}, checked against the layer's size."""
    out: Dict[int, List[int]] = {}
    for key, idxs in (request or {}).items():
        pos = find_layer(layers, key)
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            continue
        if pos in out:
            raise ValueError(f"layer {layers[pos].name!r} is named twice in the {what} request")
        layer = layers[pos]
        n = layer.num_heads if what == "heads" else layer.intermediate_size
        unit = "head" if what == "heads" else "FFN channel"
        if idxs[0] < 0 or idxs[-1] >= n:
            bad = idxs[0] if idxs[0] < 0 else idxs[-1]
            raise ValueError(f"{layer.name}: {unit} index {bad} out of range, the layer has {n} ({unit}s 0..{n - 1})")
        if len(idxs) >= n:
            raise ValueError(f"{layer.name}: removing all {n} {unit}s would cut the layer; keep at least one")
        out[pos] = idxs
    return out


def check_request(model: nn.Module, heads: Optional[Request] = None,
                  ffn: Optional[Request] = None) -> Tuple[Dict[int, List[int]], Dict[int, List[int]]]:
    """Validate a request: (heads, ffn) as {layer position: sorted indices}. KeyError for an
    unknown layer, ValueError for an index out of range or a layer that would be emptied."""
    layers = transformer_layers(model)
    return _clean(layers, heads, "heads"), _clean(layers, ffn, "ffn")


def _dependency_graph(model: nn.Module, example_input):
    tp = _tp()

    def forward(m, x):
        # One scalar that depends on every output, so the tracer sees every path.
        outputs = output_tensors(call_model(m, x), floating_only=True)
        if not outputs:
            raise ValueError(f"{type(m).__name__} returned no floating tensor to trace")
        return sum(t.sum() for t in outputs)

    with torch.enable_grad():  # the tracer follows autograd's graph
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, forward_fn=forward,
                                                     verbose=False)


def _prune(dg, source: nn.Linear, idxs: List[int], expected_out: List[nn.Module], expected_in: List[nn.Module],
           what: str) -> None:
    """Prune the group of ``source``'s output channels ``idxs`` after checking that it holds
    exactly the expected Linears (a differently traced model must fail loudly, not silently)."""
    tp = _tp()
    group = dg.get_pruning_group(source, tp.prune_linear_out_channels, idxs=idxs)
    outs, ins = set(), set()
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Module) and list(m.parameters(recurse=False)):
            handler = getattr(dep.handler, "__name__", "")
            (outs if handler == "prune_out_channels" else ins).add(m)
    if outs != set(expected_out) or ins != set(expected_in):
        raise RuntimeError(f"{what}: torch-pruning's dependency group is not the expected one "
                           f"({len(outs)} output / {len(ins)} input layers); this model is traced differently")
    group.prune()


def _record(model: nn.Module, layers: List[TransformerLayer], before: List[Tuple[int, int]],
            heads: Dict[int, List[int]], ffn: Dict[int, List[int]]) -> None:
    """Write what was removed, in original indices, into the HF config (if there is one)."""
    configs = (getattr(m, "config", None) for m in model.modules())
    config = next((c for c in configs if hasattr(c, "num_attention_heads")), None)
    if config is None:
        return
    for attr, request, size in (("pruned_heads", heads, 0), ("pruned_intermediate", ffn, 1)):
        record = {int(k): list(v) for k, v in (getattr(config, attr, None) or {}).items()}
        for pos, idxs in request.items():
            layer_no = int(layers[pos].name.rsplit(".", 1)[-1])
            gone = set(record.get(layer_no, []))
            original = before[pos][size] + len(gone)
            present = [i for i in range(original) if i not in gone]  # current index -> original
            record[layer_no] = sorted(gone | {present[i] for i in idxs})
        setattr(config, attr, {str(k): v for k, v in sorted(record.items())})


def shrink_transformer(model: nn.Module, example_input, heads: Optional[Request] = None,
                       ffn: Optional[Request] = None, inplace: bool = False) -> nn.Module:
    """Return ``model`` with the given attention heads and FFN channels physically removed.

    ``heads``: {layer: [head indices]}; ``ffn``: {layer: [intermediate channel indices]};
    a layer is its index in :func:`transformer_layers` or its module name. At least one head
    and one channel must stay in every layer. The model is copied first unless ``inplace``.
    """
    head_req, ffn_req = check_request(model, heads, ffn)
    if not inplace:
        model = copy.deepcopy(model)
    layers = transformer_layers(model)
    before = [(layer.num_heads, layer.intermediate_size) for layer in layers]
    if not head_req and not ffn_req:
        return model
    for pos in head_req:
        layers[pos].split()  # torchvision MHA -> HeadAttention, before tracing
    was_training = model.training
    model.eval()  # no dropout while tracing
    dg = _dependency_graph(model, example_input)
    for pos, idxs in head_req.items():
        layer = layers[pos]
        q, k, v, o = layer.projections()
        _prune(dg, q, head_channels(idxs, layer.head_dim), [q, k, v], [o], f"{layer.name} heads")
        layer.set_num_heads(before[pos][0] - len(idxs))
    for pos, idxs in ffn_req.items():
        up, down = layers[pos].ffn()
        _prune(dg, up, idxs, [up], [down], f"{layers[pos].name} FFN")
    _record(model, layers, before, head_req, ffn_req)
    model.train(was_training)
    return model


@torch.no_grad()
def mask_transformer(model: nn.Module, heads: Optional[Request] = None, ffn: Optional[Request] = None) -> nn.Module:
    """Zero, in place, the weights ``shrink_transformer`` would remove (q/k/v rows and biases
    and output-projection columns of each head; FFN input rows, biases and output columns).
    The architecture is untouched (a torchvision MHA stays packed). Returns ``model``."""
    head_req, ffn_req = check_request(model, heads, ffn)
    layers = transformer_layers(model)
    for pos, idxs in head_req.items():
        layer = layers[pos]
        ch = torch.as_tensor(head_channels(idxs, layer.head_dim))
        if layer.packed:  # in_proj_weight stacks q, k, v: the same channels in each third
            mha = layer.attention
            rows = torch.cat([ch + i * mha.embed_dim for i in range(3)])
            mha.in_proj_weight[rows] = 0.0
            if mha.in_proj_bias is not None:
                mha.in_proj_bias[rows] = 0.0
            mha.out_proj.weight[:, ch] = 0.0
            continue
        q, k, v, o = layer.projections()
        for proj in (q, k, v):
            _zero_rows(proj, ch)
        o.weight[:, ch] = 0.0
    for pos, idxs in ffn_req.items():
        up, down = layers[pos].ffn()
        ch = torch.as_tensor(idxs)
        _zero_rows(up, ch)
        down.weight[:, ch] = 0.0
    return model


def _zero_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight[rows] = 0.0
    if linear.bias is not None:
        linear.bias[rows] = 0.0
