"""CSR-sparse inference modules: ``sparse(model)`` replaces the pruned layers that run faster
as sparse matrix products by ``SparseLinear`` / ``SparseConv2d``.

Unstructured pruning zeroes weights but dense kernels still multiply by the zeros: a masked
model is exactly as slow as the dense one. A sparse kernel only touches the kept weights, but
each of them costs more (indirect indexing, no SIMD blocking), so it only pays off at high
sparsity. Measured on this project's CPU (one thread, torch 2.13, ``benchmarks/bench_export.py``
and a micro-benchmark of single layers 784x300 and 4096x4096):

- format: CSR with ``torch.addmm(b[:, None], W_csr, x.T).T`` is the fastest form; the same
  product with COO (``torch.sparse.mm`` or ``torch.sparse.addmm``) was 5-30x slower than CSR
  at every shape and sparsity tried, so COO is not offered. ``addmm`` with the bias folded in
  beats ``sparse.mm(...) + b`` by 5-15% at batch 1.
- break-even of the kernel (sparse as fast as dense): ~92-95% sparsity at batch 1 for a
  784x300 layer (~90% for 4096x4096), between 50% and 80% at batch 32 (80%: 1.2x for
  784x300, 1.7x for 4096x4096; 50%: 0.4-0.55x), ~80-85% at batch 256. At 98% sparsity a
  4096x4096 layer ran ~10-20x faster at batch 1 and ~7-9x at batch 256; a 784x300 layer
  1.5x at batch 1 and ~5x at batch 256.
- whole models (``benchmarks/results/export.md``): at batch 1 the call overhead of small
  layers eats most of the kernel's gain (LeNet-300-100 at 95-98%: only fc1 goes sparse,
  1.0-1.2x), while a 4096-wide MLP at 98% runs ~6.5x faster at batch 1 and ~7x at 256.

The decision is taken per layer. With ``measure=True`` (the default) both forms are timed on a
random input of that layer's own input shape at ``batch_size`` (interleaved, median of a few
repeats) and the sparse form is kept only when it is faster by at least 5%. With
``measure=False`` a Linear layer goes sparse when its sparsity is at least ``min_sparsity``
(default: ``break_even(batch_size)``, the measured figures above); convolutions stay dense
then, because the unfold + sparse matmul path only wins in measured cases (the unfolded input
is k*k times larger than the input, which dense convolution never materialises).
"""
from __future__ import annotations

import copy
import functools
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..timing import time_interleaved

__all__ = ["SparseLinear", "SparseConv2d", "sparse", "break_even", "decisions"]

#: Below this sparsity no layer is even timed: CSR was slower than dense at every shape and batch
#: size measured (50% sparsity: 0.1-0.6x of the dense speed).
NEVER_BELOW = 0.5
#: A sparse layer must beat the dense one by this factor to be chosen (timing noise margin).
MARGIN = 0.95


def break_even(batch_size: int) -> float:
    """The measured sparsity above which CSR beats dense for Linear layers on this CPU (see the
    module docstring): 0.95 at batch sizes up to 4 (the sparse call overhead matters most),
    0.8 up to 64, 0.85 above."""
    if batch_size <= 4:
        return 0.95
    return 0.8 if batch_size <= 64 else 0.85


def _density(weight: torch.Tensor) -> float:
    return int(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 1.0


class _SparseBase(nn.Module):
    """Holds a CSR ``weight`` (2-D: out x fan-in) and an optional dense ``bias`` as buffers.

    ``load_state_dict`` replaces the buffers instead of copying into them (a CSR tensor cannot be
    copied into one with another number of nonzeros)."""

    def _set_weights(self, weight2d: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"; the kernels are stable
            warnings.simplefilter("ignore", UserWarning)
            csr = weight2d.detach().to_sparse_csr()
        self.register_buffer("weight", csr)
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    @property
    def density(self) -> float:
        return self.weight._nnz() / (self.weight.shape[0] * self.weight.shape[1])

    def _mm(self, cols: torch.Tensor) -> torch.Tensor:
        """``W @ cols (+ b[:, None])`` with ``cols`` of shape (fan-in, N): (out, N)."""
        if self.bias is not None:
            return torch.addmm(self.bias.unsqueeze(1), self.weight, cols)
        return torch.sparse.mm(self.weight, cols)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in ("weight", "bias"):
            key = prefix + name
            if key in state_dict:
                value = state_dict[key]
                if name == "weight":
                    if value.layout != torch.sparse_csr:
                        value = value.to_dense().to_sparse_csr() if value.is_sparse else value.to_sparse_csr()
                    if tuple(value.shape) != tuple(self.weight.shape):
                        error_msgs.append(f"size mismatch for {key}: {tuple(value.shape)} vs {tuple(self.weight.shape)}")
                        continue
                elif self.bias is None:
                    unexpected_keys.append(key)
                    continue
                self._buffers[name] = value
            elif strict and self._buffers.get(name) is not None:
                missing_keys.append(key)
        for key in state_dict if strict else ():
            if key.startswith(prefix) and key[len(prefix):] not in ("weight", "bias") and "." not in key[len(prefix):]:
                unexpected_keys.append(key)


class SparseLinear(_SparseBase):
    """``y = x @ W.T + b`` with ``W`` stored as CSR, computed as ``addmm(b[:, None], W, x.T).T``.

    Accepts any leading dimensions (``(..., in_features)``), like ``nn.Linear``. Inference only:
    the weight is a buffer, not a parameter."""

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None):
        super().__init__()
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"weight shape {tuple(weight.shape)} is not ({out_features}, {in_features})")
        self.in_features, self.out_features = in_features, out_features
        self._set_weights(weight, bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        return cls(linear.in_features, linear.out_features, linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the common case, inlined: the overhead of each call shows at batch 1
            weight, bias = self._buffers["weight"], self._buffers["bias"]
            if bias is None:
                return torch.sparse.mm(weight, x.t()).t()
            return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()
        lead = x.shape[:-1]
        y = self._mm(x.reshape(-1, self.in_features).t())
        return y.t().reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, density={self.density:.4g}, "
                f"bias={self.bias is not None}")


class SparseConv2d(_SparseBase):
    """A 2-D convolution (groups=1, zero padding) as unfold + CSR matmul:
    ``unfold(x)`` gives the (C*kh*kw, B*L) patch matrix, ``W_csr @ patches + b`` the output."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d handles groups=1, zero padding given as numbers only")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation = tuple(conv.padding), tuple(conv.dilation)
        self._set_weights(conv.weight.reshape(conv.out_channels, -1), conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        b, _, h, w = x.shape
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, CKK, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], b * oh * ow)
        y = self._mm(cols).reshape(self.out_channels, b, oh, ow).transpose(0, 1)
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, density={self.density:.4g}, bias={self.bias is not None}")


def _input_shapes(model: nn.Module, example_input: Optional[torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    """Input shape of every Linear / Conv2d in one forward of ``example_input`` (batch 1)."""
    if example_input is None:
        return {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    handles = []

    def hook(name):
        def record(module, args):
            shapes.setdefault(name, tuple(args[0].shape))  # returns None: the input is unchanged
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _time_pair(a: nn.Module, b: nn.Module, x: torch.Tensor, repeats: int) -> Tuple[float, float]:
    """Median seconds of ``a(x)`` and ``b(x)``, timed alternately (one warm-up each)."""
    with torch.inference_mode():
        t = time_interleaved({"a": functools.partial(a, x), "b": functools.partial(b, x)}, repeats=repeats, warmup=1)
    return t["a"].median, t["b"].median


def _layer_input(name: str, module: nn.Module, shapes: Dict[str, Tuple[int, ...]], batch_size: int):
    if name in shapes:
        shape = shapes[name]
        lead = (batch_size,) if len(shape) > 1 else ()
        return torch.randn(*lead, *shape[1:] if len(shape) > 1 else shape, dtype=module.weight.dtype,
                           device=module.weight.device)
    if isinstance(module, nn.Linear):
        return torch.randn(batch_size, module.in_features, dtype=module.weight.dtype, device=module.weight.device)
    return None


def sparse(model: nn.Module, *, batch_size: int = 1, min_sparsity: Optional[float] = None, measure: bool = True,
           example_input: Optional[torch.Tensor] = None, repeats: int = 5) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose sufficiently sparse Linear / Conv2d layers are
    replaced by ``SparseLinear`` / ``SparseConv2d`` (CSR weights); every other module is
    unchanged and the outputs equal the dense model's up to float rounding.

    Per layer (see the module docstring for the measured figures):
    - ``measure=True``: layers with sparsity >= ``min_sparsity`` (default 0.5, below which CSR
      was never faster) are timed dense vs sparse on a random input of the layer's own input
      shape at ``batch_size``, ``repeats`` interleaved runs, and go sparse only if at least 5%
      faster. The input shapes come from one forward of ``example_input`` (default: a batch-1
      random input of ``model.input_shape`` when the model has one); without them Linear layers
      are timed at ``(batch_size, in_features)`` and convolutions stay dense.
    - ``measure=False``: Linear layers with sparsity >= ``min_sparsity`` (default
      ``break_even(batch_size)``) go sparse, convolutions stay dense.

    The choices are listed by ``decisions(exported)``. torch.nn.utils.prune reparametrisations
    (``weight_orig`` + mask) are read through the computed ``weight``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if min_sparsity is not None and not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    out = copy.deepcopy(model).eval()
    if measure and example_input is None and getattr(model, "input_shape", None) is not None:
        param = next(out.parameters(), None)
        example_input = torch.randn(1, *model.input_shape, device=param.device if param is not None else "cpu")
    shapes = _input_shapes(out, example_input) if measure else {}
    threshold = min_sparsity if min_sparsity is not None else (NEVER_BELOW if measure else break_even(batch_size))
    chosen: List[dict] = []
    for name, module in list(out.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module, _SparseBase):
            continue
        weight = module.weight.detach()
        sparsity = 1.0 - _density(weight)
        row = {"layer": name, "type": type(module).__name__, "sparsity": sparsity, "form": "dense",
               "dense_s": None, "sparse_s": None}
        chosen.append(row)
        if sparsity < threshold:
            continue
        if isinstance(module, nn.Conv2d):
            if not measure or module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                continue
            candidate = SparseConv2d(module)
        else:
            candidate = SparseLinear.from_dense(module)
        if measure:
            x = _layer_input(name, module, shapes, batch_size)
            if x is None:
                continue
            dense_module = _plain(module)
            row["dense_s"], row["sparse_s"] = _time_pair(dense_module, candidate, x, repeats)
            if row["sparse_s"] > MARGIN * row["dense_s"]:
                continue
        row["form"] = "csr"
        _replace(out, name, candidate)
    out.prunekit_sparse_decisions = chosen
    return out


def _plain(module: nn.Module) -> nn.Module:
    """The layer without torch.nn.utils.prune hooks (so the dense timing is a plain kernel)."""
    if hasattr(module, "weight_orig"):
        plain = copy.deepcopy(module)
        weight = plain.weight.detach().clone()
        for k in list(plain._forward_pre_hooks):
            del plain._forward_pre_hooks[k]
        del plain.weight_orig
        if "weight_mask" in plain._buffers:
            del plain._buffers["weight_mask"]
        plain.weight = nn.Parameter(weight)
        return plain
    return module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = new


def decisions(exported: nn.Module) -> List[dict]:
    """Per layer of a ``sparse()`` result: ``{layer, type, sparsity, form ('csr' or 'dense'),
    dense_s, sparse_s}`` (the timings are None when the layer was decided without measuring)."""
    return list(getattr(exported, "prunekit_sparse_decisions", []))
