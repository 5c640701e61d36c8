"""Calibration: per-layer statistics of the inputs a model's prunable layers see.

One-shot methods that prune without retraining (Wanda, SparseGPT) look at the data as well as
the weights. For every prunable layer with weight W (out x in, in the layer's own input
order) we accumulate, over all calibration tokens x (rows of the layer's input matrix X):

- ``sq_norms[j] = sum_t x_tj^2``: the squared L2 norm of input feature j (Wanda, Sun et al.
  2023, section 3);
- optionally ``xtx = X^T X`` (in x in), from which SparseGPT builds the Hessian H = 2 X^T X
  of the layer-wise squared error (Frantar & Alistarh 2023, section 3).

Both are summed batch by batch inside forward hooks, so activations are never stored. Layers
understood: ``nn.Linear``; ``nn.Conv2d`` (groups=1, zero padding) whose "tokens" are its
unfolded patches, features ordered like ``weight.reshape(out, -1)``; HF ``Conv1D`` (GPT-2),
whose weight is stored transposed (in x out). Padding positions of HF batches
(``attention_mask == 0``) are not tokens and are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .calling import attention_mask
from .targets import stores_transposed


@dataclass
class LayerStats:
    """The calibration statistics of one layer (float64 sums over ``tokens`` input rows)."""

    sq_norms: torch.Tensor                  # (in,) sum of x_j^2 over tokens
    tokens: int = 0
    xtx: Optional[torch.Tensor] = None      # (in, in) sum of x x^T, when asked for
    transposed: bool = False                # weight stored as (in, out) (HF Conv1D)

    def norms(self) -> torch.Tensor:
        """||X_j||_2 of every input feature j."""
        return self.sq_norms.sqrt()

    def hessian(self) -> torch.Tensor:
        """H = 2 X^T X, the Hessian of ||W X^T - W' X^T||^2 in each row of W'."""
        if self.xtx is None:
            raise ValueError("these statistics were gathered without X^T X (hessian=False)")
        return 2.0 * self.xtx


# HF Conv1D stores its weight (in, out): the targets module knows that type (it never imports
# transformers); kept under this name for the calibration code and its importers.
is_transposed = stores_transposed


def as_rows(tensor: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """The (out, in) matrix view of a weight-shaped tensor: one row per output, the columns
    in the order of the layer's input features (a conv's (in, kh, kw) flattened)."""
    if transposed:
        return tensor.t()
    return tensor.reshape(tensor.shape[0], -1)


def from_rows(rows: torch.Tensor, shape, transposed: bool = False) -> torch.Tensor:
    """Inverse of :func:`as_rows`."""
    return rows.t().contiguous() if transposed else rows.reshape(shape)


def module_of(model: nn.Module, param_name: str) -> nn.Module:
    """The module owning the parameter ``<module>.weight``."""
    if param_name != "weight" and not param_name.endswith(".weight"):
        raise ValueError(f"calibration reads the inputs of layers pruned through their .weight, not "
                         f"{param_name!r}; exclude it with exclude=[...]")
    module_name = param_name[: -len("weight")].rstrip(".")
    return model.get_submodule(module_name) if module_name else model


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as a (tokens, in) matrix whose columns match ``as_rows(weight)``."""
    if isinstance(module, nn.Linear) or is_transposed(module):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        # unfold gives (B, in*kh*kw, L): every output position is one token
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise AssertionError(f"unsupported layer {type(module).__name__}")  # check_supported ran first


def check_supported(name: str, module: nn.Module) -> None:
    """Raise ``ValueError`` for layers whose inputs calibration cannot read."""
    if isinstance(module, nn.Linear) or is_transposed(module):
        return
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"{name}: calibration reads Conv2d with groups=1 only (this one has "
                             f"groups={module.groups}); exclude it with exclude=[...]")
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"{name}: calibration reads Conv2d with numeric zero padding only "
                             f"(got padding={module.padding!r}, mode={module.padding_mode!r}); exclude it")
        return
    raise ValueError(f"{name}: calibration reads the inputs of Linear, Conv2d (groups=1) and HF Conv1D "
                     f"layers, not {type(module).__name__}; exclude it with exclude=[...]")


def batches(loader: Iterable) -> Iterable:
    """``loader`` as something that can be iterated more than once (sequential methods make
    several passes). A one-shot iterator (a generator) is read into a list of its batches,
    which are model inputs (token ids), not activations. An empty loader is a ``ValueError``."""
    if loader is None:
        raise ValueError("this score needs calibration data: pass calibration=<loader of batches> "
                         "(tensors, (x, y) tuples or dicts of tensors)")
    if iter(loader) is loader:
        loader = list(loader)
    for _ in loader:
        return loader
    raise ValueError("the calibration loader yielded no batch: give it at least one batch "
                     "(a tensor, an (x, y) tuple or a dict of tensors)")


def run_batch(model: nn.Module, batch: Any, device: torch.device) -> None:
    """Run the model on one calibration batch: ``model(x)`` for a tensor, ``model(x)`` with the
    first element of an (x, y, ...) tuple, ``model(**batch)`` for a dict (HF tokenizers), and
    ``model(features)`` for a tuple whose first element is a dict (sentence-transformers take
    one features dict, as ``prunekit.models.example_input`` gives it: ``(features,)``)."""
    if isinstance(batch, torch.Tensor):
        model(batch.to(device))
    elif isinstance(batch, Mapping):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        model(batch[0].to(device))
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Mapping):
        model({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch[0].items()})
    else:
        raise ValueError(f"a calibration batch must be a tensor, an (x, y) tuple, a dict of tensors or a "
                         f"(features dict,) tuple, "
                         f"got {type(batch).__name__}")


def _token_mask(batch: Any) -> Optional[torch.Tensor]:
    mask = attention_mask(batch)
    return None if mask is None else mask.bool()


class _LayersDone(Exception):
    """Raised from a hook to end a forward pass whose remaining layers are not needed."""


@torch.no_grad()
def collect(model: nn.Module, names: List[str], loader: Iterable, hessian: bool = False,
            on_call: Optional[Callable[[str, Any], None]] = None,
            stop_early: bool = False) -> Dict[str, LayerStats]:
    """Run ``model`` over every batch of ``loader`` and return ``{name: LayerStats}`` for the
    weights ``names``. ``hessian=True`` also sums X^T X. ``on_call(name, input)`` is told of
    every call of a hooked layer, with the very input object (the caller may record the call
    order and which layers share an input). ``stop_early=True`` ends each forward pass once
    every hooked layer has run, for callers that know each is called once per forward (a
    SparseGPT pass over the first layers of a deep model then costs only those layers)."""
    loader = batches(loader)
    modules = {n: module_of(model, n) for n in names}
    for n, m in modules.items():
        check_supported(n, m)
    stats: Dict[str, LayerStats] = {}
    current: Dict[str, Any] = {"mask": None, "pending": set()}

    def hook_for(name: str, module: nn.Module):
        def hook(mod, args, output):
            if on_call is not None:
                on_call(name, args[0])
            x = args[0].detach()
            keep = current["mask"]
            if keep is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(keep.shape):
                x = x[keep.to(x.device)]       # padding positions are not calibration tokens
            rows = input_rows(mod, x).to(torch.float64)
            s = stats.get(name)
            if s is None:
                width = rows.shape[1]
                s = stats[name] = LayerStats(torch.zeros(width, dtype=torch.float64, device=rows.device),
                                             xtx=torch.zeros(width, width, dtype=torch.float64,
                                                             device=rows.device) if hessian else None,
                                             transposed=is_transposed(mod))
            s.sq_norms += rows.square().sum(0)
            s.tokens += rows.shape[0]
            if s.xtx is not None:
                # one batch's product in the layer's precision, summed over batches in float64
                x32 = rows.to(torch.float32)
                s.xtx += (x32.t() @ x32).to(torch.float64)
            current["pending"].discard(name)
            if stop_early and not current["pending"]:
                raise _LayersDone
        return hook

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            current["mask"] = _token_mask(batch)
            current["pending"] = set(names)
            try:
                run_batch(model, batch, device)
            except _LayersDone:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unseen = [n for n in names if n not in stats]
    if unseen:
        raise ValueError(f"the calibration batches never reached {unseen[:3]}: these layers were not "
                         "called in the forward pass; exclude them or check the loader's batches")
    return stats
