"""Which sparse layers feed another sparse layer through elementwise ops only.

A CSR product ``W @ x.T`` comes out transposed: handing it on as a transposed view is free,
making it contiguous costs a (slow, cache-unfriendly) copy. The view is only worth keeping
when the next consumer is another CSR layer, which wants exactly that layout (its ``x.T`` is
then contiguous) -- e.g. BERT's ``intermediate.dense -> GELU -> output.dense``. Anything else
(attention, layer norm) would copy it anyway, often more slowly. ``feeders`` finds those
pairs by following tensors through one forward: a layer's output, and whatever pointwise ops
and views make of it (with no other layer's output mixed in), is "from" that layer.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Set

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


class _Provenance(TorchDispatchMode):
    """Tags the outputs of pointwise ops and views with the layer their tensor inputs came from."""

    def __init__(self):
        super().__init__()
        self.source: Dict[int, str] = {}
        self._keep: List[torch.Tensor] = []  # tagged tensors stay alive so their ids are not reused

    def tag(self, tensor: Any, name: str) -> None:
        if isinstance(tensor, torch.Tensor):
            self.source[id(tensor)] = name
            self._keep.append(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.pointwise in func.tags or func.is_view:
            flat = [a for a in args if isinstance(a, torch.Tensor)] + \
                   [v for v in (kwargs or {}).values() if isinstance(v, torch.Tensor)]
            sources = {self.source[id(a)] for a in flat if id(a) in self.source}
            if len(sources) == 1:
                for o in (out if isinstance(out, (tuple, list)) else (out,)):
                    self.tag(o, next(iter(sources)))
        return out


def feeders(model: nn.Module, run: Callable[[], Any], is_sparse: Callable[[nn.Module], bool]) -> Set[str]:
    """Names of the ``is_sparse`` layers whose output reaches another ``is_sparse`` layer's input
    through pointwise ops and views only, in the forward ``run()`` (called once)."""
    return set(pairs(model, run, is_sparse))


def pairs(model: nn.Module, run: Callable[[], Any], is_sparse: Callable[[nn.Module], bool]) -> Dict[str, str]:
    """``{feeding layer: fed layer}`` (see ``feeders``)."""
    mode = _Provenance()
    found: Dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if is_sparse(module):
            def before(module, args, name=name):
                origin = mode.source.get(id(args[0])) if args else None
                if origin is not None and origin != name:
                    found[origin] = name

            def after(module, args, output, name=name):
                mode.tag(output, name)

            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.inference_mode(), mode:
            run()
    finally:
        for h in handles:
            h.remove()
    return found
