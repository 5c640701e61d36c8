"""CSR-sparse inference modules: ``sparse(model)`` replaces the pruned layers that run faster
as sparse matrix products by ``SparseLinear`` / ``SparseConv2d``, and never breaks the model.

Unstructured pruning zeroes weights but dense kernels still multiply by the zeros: a masked
model is exactly as slow as the dense one. A sparse kernel only touches the kept weights, but
each of them costs more (indirect indexing, no SIMD blocking), so it only pays off at high
sparsity. Measured on this project's CPU (one thread, torch 2.13, ``benchmarks/bench_export.py``,
``benchmarks/bench_minilm_export.py`` and micro-benchmarks of single layers):

- kernels: prunekit's own (``_native``, C++ compiled on first use; the tokens / batch rows are
  the vector dimension, 128 at a time in registers): on all-MiniLM-L6-v2 at 90%, 128 tokens, 4-15x
  over dense on its 88-97%-sparse layers where MKL reaches 1.7-3.9x, and 1.7x on its 73%-sparse
  query / key layers where MKL is slower than dense (whole model at batch 1: 1.6x with MKL, 2.28x
  with it). It is a candidate beside MKL's forms, so each layer gets whichever measured faster;
  without a compiler only MKL's are tried.
- format: CSR with int32 indices (8 bytes per kept weight instead of 12 with int64: 1.2-1.6x
  faster at 784-4096 wide layers) and MKL's sparse x dense kernels. One row (batch 1 of a 2-D
  input) goes through ``torch.addmv(b, W, x)``, the matrix-vector product: 2-3x faster than
  ``addmm`` with one column on a 4096-wide layer at 98% (~25x over dense for the layer alone).
  Several rows: ``torch.addmm(b[:, None], W, x.T).T``. Measured and not kept: COO (5-30x slower
  than CSR at every shape), the other orientation (dense x sparse, ``addmm(b, x, W.T_csr)``: 4-15x
  slower than dense), writing the product straight into y's row-major layout (``out=y.T``, so
  MKL reads x as it is but works column by column: 2-4x slower than ``x.T`` from 4 rows on),
  BSR (magnitude pruning leaves 2x2 blocks a quarter full: 2-4x slower than CSR; with fully
  kept 4x4 blocks it was 1.3-1.9x faster than CSR at 128-256 rows, so it would pay for
  block-pruned weights only), ``torch.compile`` of the transposition (no faster).
- transposition: MKL wants ``x.T`` row-major, and torch's transposing copy runs at ~6 GB/s
  (a plain copy: 20-35), so at 256 rows it costs more than a 98%-sparse product. A layer
  whose kept weights read only some input features is also tried compacted (``compact``):
  only those rows of ``x.T`` are gathered (LeNet-300-100's first layer at 98%: 549 of 784
  pixels, 1.3x faster than the plain CSR layer at batch 256).
- rows per product: MKL's kernel streams one row of ``x.T`` per kept weight; when that row is
  long (many tokens x batch) it leaves the cache and the kernel slows 2-3x per row. So for
  inputs of 3 or more dimensions (``(batch, tokens, features)``) a layer can run one product
  per sequence, written in place into one output (``per_sequence``): on MiniLM's 384/1536 wide
  layers at 90% sparsity, batch 32 x 128 tokens, this was 1.2-1.9x faster than dense where one
  product over all 4096 rows was 0.4-1x. (torch's other CSR kernel, ``torch.sparse.mm(W, x,
  "sum")``, was 1.5-2x slower than MKL's at these shapes.)
- layout: the product comes out transposed; copying it into ``nn.Linear``'s layout costs up
  to a third of a layer's time, but a transposed view slows attention and layer norm more, so
  outputs are copied, except where a sparse layer feeds another through pointwise ops only
  (``_layout.feeders``): MiniLM at batch 1 went from 1.38x to ~1.5x with that.
- break-even (sparse as fast as dense): ~85-90% sparsity at 128 rows for 384-1536 wide layers
  (90%: 2-2.8x), ~92-95% at batch 1 for a 784x300 layer on 2-D inputs, between 50% and 80%
  at batch 32 (2-D), ~80-85% at batch 256.

Decisions are taken per layer, at the user's real input: ``example_input`` (a tensor, a tuple
of positional arguments or a dict of keyword arguments, e.g. a tokenizer's output; default:
``prunekit.models.example_input(model)``) is run once, re-batched to ``batch_size`` sequences
or images, and every Linear / Conv2d records its input shape. Each candidate layer is then
timed on a random input of exactly that shape, the dense layer once beside every sparse form
worth trying (plain CSR; compacted inputs; one product per sequence; prunekit's kernel), in one interleaved run,
and goes sparse in its fastest form only when that is faster by at least 5%: a layer that is
not measured faster stays dense, at any batch size.

What is never replaced (it stays dense and ``decisions()`` says why): a layer whose own
``forward`` is not called by the example forward (its weight is read directly by its parent:
``nn.MultiheadAttention``'s ``out_proj``, ``nn.TransformerEncoderLayer``'s fused fast path),
any subclass of Linear / Conv2d it does not know, grouped or string-padded convolutions. After
the replacement the exported model is run on the example input and compared with the dense
model (within 1e-4) and, when measuring, timed as a whole against it; if it fails, differs or
is not faster, every layer is put back dense (``decisions()`` says so).
"""
from __future__ import annotations

import copy
import functools
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..core.calling import call_model, output_tensors
from ..models import example_input as _model_example_input
from ..timing import time_interleaved
from . import _layout, _native

__all__ = ["SparseLinear", "SparseConv2d", "sparse", "break_even", "decisions", "median_seconds"]

#: Below this sparsity no layer is even timed: CSR was slower than dense at every shape and batch
#: size measured (50% sparsity: 0.1-0.6x of the dense speed).
NEVER_BELOW = 0.5
#: A sparse layer must beat the dense one by this factor to be chosen (timing noise margin).
MARGIN = 0.95
#: A Linear layer is also tried with its unused input features dropped when at most this share
#: of them is used (the gather costs about as much as the transposition it shortens).
COMPACT_BELOW = 0.9
#: The exported model must reproduce the dense outputs this closely (absolute and relative).
TOLERANCE = 1e-4
#: SparseLinear's product: MKL's CSR kernels (torch.addmm / addmv) or prunekit's own (``_native``).
KERNELS = ("mkl", "native")
#: The layer types whose forward sparse() knows how to reproduce; subclasses may differ.
_KNOWN_LINEAR = (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
#: Parents known to read their children's weights directly (fused kernels), for the static rule.
_WEIGHT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def break_even(batch_size: int) -> float:
    """The measured sparsity above which CSR beats dense for Linear layers on this CPU (see the
    module docstring): 0.95 at batch sizes up to 4 (the sparse call overhead matters most),
    0.8 up to 64, 0.85 above."""
    if batch_size <= 4:
        return 0.95
    return 0.8 if batch_size <= 64 else 0.85


def _density(weight: torch.Tensor) -> float:
    return int(torch.count_nonzero(weight)) / weight.numel() if weight.numel() else 1.0


def _to_csr(weight2d: torch.Tensor) -> torch.Tensor:
    """CSR copy of a dense 2-D weight, with int32 indices when they fit: MKL reads 4 + 4 bytes of
    index and value per kept weight instead of 8 + 4 (``benchmarks/bench_export.py`` (d): int32
    1.2-1.6x faster than int64 at 784-4096 wide layers)."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"; the kernels are stable
        warnings.simplefilter("ignore", UserWarning)
        csr = weight2d.detach().to_sparse_csr()
        if csr._nnz() < 2 ** 31 and max(csr.shape) < 2 ** 31:
            csr = torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                          csr.values(), csr.shape)
    return csr


def _used_columns(weight2d: torch.Tensor) -> torch.Tensor:
    """Indices of the input features (columns) with at least one kept weight."""
    return torch.nonzero(weight2d.detach().ne(0).any(0)).flatten()


class _SparseBase(nn.Module):
    """Holds a CSR ``weight`` (2-D: out x fan-in) and an optional dense ``bias`` as buffers,
    plus ``_bias_col``, the bias as an (out, 1) column (zeros without bias) that ``addmm``
    adds for free, and ``_bias_vec``, the same as a vector for ``addmv`` (not saved).

    ``load_state_dict`` replaces the buffers instead of copying into them (a CSR tensor cannot be
    copied into one with another number of nonzeros)."""

    def _set_weights(self, weight2d: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        csr = weight2d if weight2d.layout == torch.sparse_csr else _to_csr(weight2d)
        self.register_buffer("weight", csr)
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)
        self._refresh_bias_col()

    def _refresh_bias_col(self) -> None:
        weight, bias = self._buffers["weight"], self._buffers["bias"]
        col = bias.unsqueeze(1) if bias is not None else torch.zeros(weight.shape[0], 1, dtype=weight.dtype,
                                                                      device=weight.device)
        col = col.contiguous()
        self.register_buffer("_bias_col", col, persistent=False)
        self.register_buffer("_bias_vec", col.view(-1), persistent=False)

    @property
    def density(self) -> float:
        return self.weight._nnz() / (self.weight.shape[0] * self._fan_in())

    def _fan_in(self) -> int:
        return self.weight.shape[1]

    def _mm(self, cols: torch.Tensor) -> torch.Tensor:
        """``W @ cols (+ b[:, None])`` with ``cols`` of shape (fan-in, N): (out, N)."""
        return torch.addmm(self._bias_col, self.weight, cols)

    def _load_weight(self, value: torch.Tensor, state_dict, prefix: str) -> Optional[str]:
        """Take the saved ``weight`` (dense or CSR); an error message if it does not fit."""
        dense = value.to_dense() if value.layout != torch.strided else value
        if tuple(dense.shape) != tuple(self.weight.shape):
            return f"size mismatch for {prefix}weight: {tuple(dense.shape)} vs {tuple(self.weight.shape)}"
        self._buffers["weight"] = _to_csr(dense)
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in ("weight", "bias"):
            key = prefix + name
            if key in state_dict:
                value = state_dict[key]
                if name == "weight":
                    error = self._load_weight(value, state_dict, prefix)
                    if error:
                        error_msgs.append(error)
                    continue
                if self.bias is None:
                    unexpected_keys.append(key)
                    continue
                self._buffers[name] = value
            elif strict and self._buffers.get(name) is not None:
                missing_keys.append(key)
        self._refresh_bias_col()
        known = ("weight", "bias") + self._extra_state_keys()
        for key in state_dict if strict else ():
            if key.startswith(prefix) and key[len(prefix):] not in known and "." not in key[len(prefix):]:
                unexpected_keys.append(key)

    def _extra_state_keys(self) -> Tuple[str, ...]:
        return ()

    # torch cannot deepcopy or pickle a CSR tensor ("Cannot access storage of SparseCsrTensorImpl"),
    # so copy.deepcopy / torch.save of an exported model carry the CSR buffers as their parts.
    def __getstate__(self):
        state = super().__getstate__()
        buffers = dict(state["_buffers"])
        for name, value in buffers.items():
            if isinstance(value, torch.Tensor) and value.layout == torch.sparse_csr:
                buffers[name] = _CsrParts(value.crow_indices(), value.col_indices(), value.values(), tuple(value.shape))
        state = dict(state, _buffers=buffers)
        state.pop("_native_args", None)  # rebuilt from the weight
        return state

    def __setstate__(self, state):
        buffers = state["_buffers"]
        for name, value in list(buffers.items()):
            if isinstance(value, _CsrParts):
                buffers[name] = torch.sparse_csr_tensor(value.crow, value.col, value.values, value.shape)
        super().__setstate__(state)
        if isinstance(self, SparseLinear):
            self._refresh_bias_col()


class _CsrParts(NamedTuple):
    """A CSR tensor as plain tensors, for pickling (see ``_SparseBase.__getstate__``)."""
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    shape: Tuple[int, ...]


class SparseLinear(_SparseBase):
    """``y = x @ W.T + b`` with ``W`` stored as CSR (int32 indices), computed with MKL's sparse x
    dense kernels, which want the dense operand as ``x.T`` (features x rows, row-major):

    - one row (batch 1 of a 2-D input, a 1-D input): ``addmv(b, W, x)``, the matrix-vector
      product (2-3x faster than ``addmm`` with one column on a 4096-wide layer);
    - several rows: ``addmm(b[:, None], W, x.T).T``; the product comes out transposed.

    Accepts any leading dimensions (``(..., in_features)``), like ``nn.Linear``. With
    ``per_sequence=True`` an input of 3+ dimensions ``(..., tokens, in_features)`` is
    multiplied one sequence at a time (short rows stay in cache, see the module docstring),
    each product transposed into one output while it is in cache. Outputs of 3+-D inputs are made contiguous,
    as ``nn.Linear``'s are: the copy costs less than what a transposed layout costs most ops
    after it (MiniLM at 128 tokens: 5% faster at batch 1, 15% at batch 32 than leaving the
    view). ``transposed_output=True`` leaves the view, for a layer that feeds another sparse
    layer through pointwise ops only (``sparse()`` sets it: see ``_layout``).

    ``compact=True`` drops the input features no kept weight reads: the CSR weight then has
    one column per used feature (``input_columns``, saved with the weight), and only those rows
    of ``x.T`` are gathered -- the transposition of ``x`` that MKL needs costs less (LeNet-300-100's
    first layer at 98%: 549 of 784 pixels used). Inference only: the weight is a buffer.

    ``kernel="native"`` computes the product with prunekit's own kernel instead (``_native``:
    reads ``x`` or a handed-on transposed product as it is, writes either layout); float32 on
    CPU only, anything else (or no compiled kernel) takes the MKL path above."""

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None, per_sequence: bool = False,
                 transposed_output: bool = False, compact: bool = False, kernel: str = "mkl"):
        super().__init__()
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"weight shape {tuple(weight.shape)} is not ({out_features}, {in_features})")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.in_features, self.out_features = in_features, out_features
        self.per_sequence, self.transposed_output = per_sequence, transposed_output
        self.compact, self.kernel = compact, kernel
        self.register_buffer("input_columns", None)
        self._set_weights(weight, bias)

    def _set_weights(self, weight2d: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        if self.compact:
            dense = weight2d.to_dense() if weight2d.layout != torch.strided else weight2d
            columns = _used_columns(dense)
            self.register_buffer("input_columns", columns)
            weight2d = dense.detach()[:, columns]
        super()._set_weights(weight2d, bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, **options: bool) -> "SparseLinear":
        return cls(linear.in_features, linear.out_features, linear.weight, linear.bias, **options)

    @classmethod
    def _from_csr(cls, linear: nn.Linear, csr: torch.Tensor, columns: Optional[torch.Tensor] = None,
                  **options: bool) -> "SparseLinear":
        """A layer on an already built CSR weight (``columns``: the kept input features of a
        compacted one), shared with other candidates of the same layer (no conversion)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.per_sequence = options.get("per_sequence", False)
        layer.transposed_output = options.get("transposed_output", False)
        layer.compact = columns is not None
        layer.kernel = options.get("kernel", "mkl")
        layer.register_buffer("input_columns", columns)
        _SparseBase._set_weights(layer, csr, linear.bias)
        return layer

    def _fan_in(self) -> int:
        return self.in_features

    def _extra_state_keys(self) -> Tuple[str, ...]:
        return ("input_columns",)

    def _load_weight(self, value, state_dict, prefix):
        dense = value.to_dense() if value.layout != torch.strided else value
        columns = state_dict.get(prefix + "input_columns")
        if columns is None and self.compact and tuple(dense.shape) == (self.out_features, self.in_features):
            columns = _used_columns(dense)  # a full weight: compact it here
            dense = dense[:, columns]
        width = self.in_features if columns is None else len(columns)
        if tuple(dense.shape) != (self.out_features, width):
            return f"size mismatch for {prefix}weight: {tuple(dense.shape)} vs {(self.out_features, width)}"
        self._buffers["input_columns"] = columns
        self.compact = columns is not None
        self._buffers["weight"] = _to_csr(dense)
        return None

    def _refresh_bias_col(self) -> None:
        super()._refresh_bias_col()
        # what the native kernel reads, taken apart once (each accessor call costs ~1 us)
        weight, bias = self._buffers["weight"], self._buffers["bias"]
        native = weight.layout == torch.sparse_csr and weight.crow_indices().dtype == torch.int32 \
            and weight.dtype == torch.float32
        self._native_args = ((weight.crow_indices(), weight.col_indices(), weight.values(),
                              bias if bias is not None else weight.values().new_empty(0)) if native else None)

    def _native(self, x: torch.Tensor, kernel) -> torch.Tensor:
        """``x @ W.T + b`` through prunekit's kernel (``_native``), any leading dimensions. An input
        that is a transposed product (handed on by a sparse layer) is read as it is."""
        crow, col, values, bias = self._native_args
        x2 = x.reshape(-1, self.in_features)
        given_t = x2.shape[0] > 1 and x2.stride(0) == 1 and x2.stride(1) == x2.shape[0]
        out = kernel.csr_linear(crow, col, values, x2.t() if given_t else x2.contiguous(), bias, given_t,
                                self.transposed_output)
        return (out.t() if self.transposed_output else out).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native" and self._native_args is not None and x.dtype == torch.float32 \
                and x.device.type == "cpu" and (kernel := _native.load()) is not None:
            return self._native(x, kernel)
        # The hot path: buffers read from the dict directly, no reshapes for 1 or 2 dimensions
        # (each Python-level op costs ~1-4 us, which decides small layers at batch 1).
        buffers = self._buffers
        weight, columns = buffers["weight"], buffers["input_columns"]
        if x.dim() == 2:
            if x.shape[0] == 1:
                v = x[0] if columns is None else x[0].index_select(0, columns)
                return torch.addmv(buffers["_bias_vec"], weight, v).unsqueeze(0)
            xt = x.t() if columns is None else x.t().index_select(0, columns)
            return torch.addmm(buffers["_bias_col"], weight, xt).t()
        if x.dim() == 1:
            return torch.addmv(buffers["_bias_vec"], weight, x if columns is None else x.index_select(0, columns))
        lead, tokens = x.shape[:-2], x.shape[-2]
        if x.numel() == x.shape[-1]:  # a single row in 3+ dimensions
            return self.forward(x.reshape(1, self.in_features)).reshape(*lead, tokens, self.out_features)
        bias_col = buffers["_bias_col"]
        if self.per_sequence:
            seqs = x.reshape(-1, tokens, self.in_features)
            if self.transposed_output:  # one short product per sequence, no concatenation
                out = x.new_empty(seqs.shape[0], self.out_features, tokens)
                for k in range(seqs.shape[0]):
                    torch.addmm(bias_col, weight, self._rows_t(seqs[k], columns), out=out[k])
                return out.transpose(1, 2).reshape(*lead, tokens, self.out_features)
            # Each product is transposed into the output while it is still in cache: 20% faster
            # than one transposing copy of the whole output at MiniLM's shapes, batch 32.
            y = x.new_empty(seqs.shape[0], tokens, self.out_features)
            product = x.new_empty(self.out_features, tokens)
            for k in range(seqs.shape[0]):
                torch.addmm(bias_col, weight, self._rows_t(seqs[k], columns), out=product)
                y[k].copy_(product.t())
            return y.reshape(*lead, tokens, self.out_features)
        xt = self._rows_t(x.reshape(-1, self.in_features), columns)
        y = torch.addmm(bias_col, weight, xt).t().reshape(*lead, tokens, self.out_features)
        return y if self.transposed_output else y.contiguous()

    @staticmethod
    def _rows_t(x2d: torch.Tensor, columns: Optional[torch.Tensor]) -> torch.Tensor:
        return x2d.t() if columns is None else x2d.t().index_select(0, columns)

    def extra_repr(self) -> str:
        extra = ", per_sequence=True" if self.per_sequence else ""
        if self.kernel != "mkl":
            extra += f", kernel={self.kernel!r}"
        if self.input_columns is not None:
            extra += f", input_columns={len(self.input_columns)}"
        return (f"{self.in_features}, {self.out_features}, density={self.density:.4g}, "
                f"bias={self.bias is not None}{extra}")


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


# --- example input: how to call the model, at which batch size -----------------------------

def _rebatch(inputs: Any, batch_size: int) -> Any:
    """``inputs`` with every tensor's first (batch) dimension made ``batch_size`` by repeating
    its first sample, so that a token input counts sequences, not rows."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0 or inputs.shape[0] == batch_size:
            return inputs
        return inputs[:1].repeat(batch_size, *([1] * (inputs.dim() - 1)))
    if isinstance(inputs, dict):
        return {k: _rebatch(v, batch_size) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_rebatch(v, batch_size) for v in inputs)
    return inputs


def _default_example(model: nn.Module) -> Any:
    """The model's own example input (``prunekit.models.example_input``), None if it has none."""
    try:
        return _model_example_input(model)
    except ValueError:
        return None


def _max_difference(a: Any, b: Any) -> float:
    """Largest ``|a - b| / (1 + |a|)`` over the output tensors (inf if they do not pair up)."""
    ta, tb = output_tensors(a), output_tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb)):
        return float("inf")
    diffs = [((x.float() - y.float()).abs() / (1 + x.float().abs())).max().item() for x, y in zip(ta, tb)
             if x.numel() and x.is_floating_point()]
    return max(diffs, default=0.0)


def _record_calls(model: nn.Module, inputs: Any) -> Tuple[Dict[str, Tuple[int, ...]], Any]:
    """Run ``model(inputs)`` once; returns the input shape of every Linear / Conv2d whose own
    forward ran (layers missing from it are read by their parent) and the output.

    The layers' ``forward`` is wrapped on the instance rather than hooked: torch turns its
    fused fast paths (``nn.TransformerEncoderLayer``) off when hooks are attached, which would
    record a path the real model does not take."""
    shapes: Dict[str, Tuple[int, ...]] = {}
    wrapped = []

    def recorder(name, forward):
        def record(*args, **kwargs):
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(name, tuple(args[0].shape))
            return forward(*args, **kwargs)
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and "forward" not in module.__dict__:
            module.forward = recorder(name, module.forward)
            wrapped.append(module)
    try:
        with torch.inference_mode():
            output = call_model(model, inputs)
    finally:
        for module in wrapped:
            del module.forward  # back to the class's forward
    return shapes, output


# --- timing ----------------------------------------------------------------------------------

#: How a layer's candidates are timed: ``timer({name: callable}, repeats) -> {name: seconds}``.
Timer = Callable[[Dict[str, Callable[[], Any]], int], Dict[str, float]]


def median_seconds(fns: Dict[str, Callable[[], Any]], repeats: int) -> Dict[str, float]:
    """The default ``Timer``: median seconds of each callable, called in turn ``repeats`` times
    after one warm-up round (``prunekit.timing.time_interleaved``). With one torch thread the
    clock is the thread's CPU time, which other processes on a shared machine do not inflate;
    otherwise wall time."""
    clock = "thread" if torch.get_num_threads() == 1 else "wall"
    with torch.inference_mode():
        times = time_interleaved(fns, repeats=repeats, warmup=1, clock=clock)
    return {name: t.median for name, t in times.items()}


def _layer_input(name: str, module: nn.Module, shapes: Dict[str, Tuple[int, ...]], batch_size: int):
    """A random input of the shape the layer saw (the example's, already at ``batch_size``);
    without an example forward, ``(batch_size, in_features)`` for Linear, None for Conv2d."""
    kw = {"dtype": module.weight.dtype, "device": module.weight.device}
    if name in shapes:
        return torch.randn(*shapes[name], **kw)
    if isinstance(module, nn.Linear):
        return torch.randn(batch_size, module.in_features, **kw)
    return None


# --- which layers may be replaced ------------------------------------------------------------

def _parents(model: nn.Module) -> Dict[str, nn.Module]:
    return {f"{name}.{child}" if name else child: module
            for name, module in model.named_modules() for child in module._modules}


def _why_not(name: str, module: nn.Module, parent: Optional[nn.Module], called: Optional[set]) -> Optional[str]:
    """Why layer ``name`` cannot be replaced (None: it can). ``called``: the layers whose
    forward ran in the example forward (None when there was none)."""
    if isinstance(module, nn.Linear) and type(module) not in _KNOWN_LINEAR:
        return f"{type(module).__name__} is a subclass of Linear sparse() does not know"
    if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d:
        return f"{type(module).__name__} is a subclass of Conv2d sparse() does not know"
    owner = type(parent).__name__ if parent is not None else "its parent"
    if called is not None and name not in called:
        return f"its forward is not called: its weight is read directly by {owner}"
    if called is None and isinstance(parent, _WEIGHT_READERS):
        return f"its weight is read directly by {owner}"
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                          or isinstance(module.padding, str)):
        return "grouped or non-zero/string-padded convolution"
    return None


def sparse(model: nn.Module, example_input: Any = None, *, batch_size: Optional[int] = None,
           min_sparsity: Optional[float] = None, measure: bool = True, repeats: int = 5,
           timer: Optional[Timer] = None) -> nn.Module:
    """A copy of ``model`` (in eval mode) whose sufficiently sparse Linear / Conv2d layers are
    replaced by ``SparseLinear`` / ``SparseConv2d`` (CSR weights) where that is measurably
    faster; every other module is unchanged and the outputs equal the dense model's within 1e-4.

    ``example_input``: what the model is called with, at your real shape (a tensor, a tuple of
    positional arguments or a dict of keyword arguments such as a tokenizer's output; default:
    ``prunekit.models.example_input(model)``: a random batch of ``model.input_shape``, or for a
    Hugging Face model its tokenizer's output at 128 tokens). ``batch_size``: re-batch the
    example to that many samples (sequences for token inputs; default: the example's own).

    Per layer (see the module docstring for the measured figures):
    - ``measure=True``: layers with sparsity >= ``min_sparsity`` (default 0.5) are timed on a
      random input of the shape they saw, ``repeats`` interleaved runs: the dense layer once,
      beside each sparse candidate (the plain CSR layer; with unused input features, the
      compacted one; for several sequences, one product per sequence; prunekit's own kernel,
      built on first use: ~20 s once per machine, see ``_native``). The fastest goes in
      only if at least 5% faster than dense. Without any example input Linear layers are timed
      at ``(batch_size, in_features)`` and convolutions stay dense.
    - ``measure=False``: Linear layers with sparsity >= ``min_sparsity`` (default
      ``break_even(batch_size)``) go sparse, convolutions stay dense.

    ``timer``: how candidates are timed, ``timer({name: callable}, repeats) -> {name: seconds}``
    (default ``median_seconds``); the names are ``dense`` and the candidates' (``csr``,
    ``csr_compact``, ``csr_per_sequence``, ``csr_native``), or ``dense`` and ``sparse`` for the
    whole model.

    The choices, and why a layer stayed dense, are listed by ``decisions(exported)``.
    torch.nn.utils.prune reparametrisations (``weight_orig`` + mask) are read through the
    computed ``weight``.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if min_sparsity is not None and not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    timer = timer or median_seconds
    out = copy.deepcopy(model).eval()
    if example_input is None:
        example_input = _default_example(out)
    called: Optional[set] = None
    shapes: Dict[str, Tuple[int, ...]] = {}
    dense_output = inputs = None
    if example_input is not None:
        inputs = _rebatch(example_input, batch_size) if batch_size else example_input
        shapes, dense_output = _record_calls(out, inputs)
        called = set(shapes)
    batch = batch_size or 1
    threshold = min_sparsity if min_sparsity is not None else (NEVER_BELOW if measure else break_even(batch))
    parents = _parents(out)
    weights = _Weights()  # each layer's CSR weight (and compacted one) is built once
    eligible = {}
    chosen: List[dict] = []
    for name, module in list(out.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or isinstance(module, _SparseBase):
            continue
        sparsity = 1.0 - _density(module.weight.detach())
        row = {"layer": name, "type": type(module).__name__, "sparsity": sparsity, "form": "dense",
               "dense_s": None, "sparse_s": None, "reason": None, "input_shape": shapes.get(name)}
        chosen.append(row)
        row["reason"] = _why_not(name, module, parents.get(name), called)
        if row["reason"]:
            continue
        if sparsity < threshold:
            row["reason"] = f"sparsity {sparsity:.3f} below {threshold:.3f}"
            continue
        if isinstance(module, nn.Conv2d) and not measure:
            row["reason"] = "convolutions go sparse only when measured faster (measure=True)"
            continue
        eligible[name] = (module, row)
    # Layers that would feed each other if both went sparse are timed in that layout (the
    # feeder's product stays transposed, the fed layer receives it so): see _layout.
    feeding = _likely_pairs(out, inputs, eligible, weights) if measure and called else {}
    for name, (module, row) in eligible.items():
        candidate = (_choose(name, module, row, shapes, batch, repeats, weights, timer, feeds=name in feeding,
                             fed=name in feeding.values())
                     if measure else SparseLinear._from_csr(module, weights.csr(name, module)))
        if candidate is None:
            continue
        row["form"] = "csr"
        out.set_submodule(name, candidate)
    out.prunekit_sparse_decisions = chosen
    if dense_output is not None and any(r["form"] == "csr" for r in chosen):
        _check_or_revert(out, _plain_copy(model), inputs, dense_output, chosen, measure, repeats, timer)
    return out


class _Weights:
    """Each layer's CSR weight, and its input-compacted form, built on first use and shared by
    every candidate module of the layer (the conversion costs more than the module)."""

    def __init__(self):
        self._csr: Dict[str, torch.Tensor] = {}
        self._compact: Dict[str, Optional[Tuple[torch.Tensor, torch.Tensor]]] = {}

    def csr(self, name: str, module: nn.Module) -> torch.Tensor:
        if name not in self._csr:
            self._csr[name] = _to_csr(module.weight.detach().reshape(module.weight.shape[0], -1))
        return self._csr[name]

    def compact(self, name: str, module: nn.Linear) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``(used input columns, CSR of those columns)``, None when too few features are unused
        to pay for the gather (more than ``COMPACT_BELOW`` of them used)."""
        if name not in self._compact:
            weight = module.weight.detach()
            columns = _used_columns(weight)
            self._compact[name] = ((columns, _to_csr(weight[:, columns]))
                                   if len(columns) <= COMPACT_BELOW * module.in_features else None)
        return self._compact[name]


def _likely_pairs(out: nn.Module, inputs: Any, eligible: Dict[str, Tuple[nn.Module, dict]],
                  weights: _Weights) -> Dict[str, str]:
    """``_layout.pairs`` of ``out`` with every eligible Linear provisionally sparse (the layers
    are swapped in place for one forward and put back)."""
    swapped = {name: module for name, (module, _) in eligible.items() if isinstance(module, nn.Linear)}
    for name, module in swapped.items():
        out.set_submodule(name, SparseLinear._from_csr(module, weights.csr(name, module)))
    try:
        return _layout.pairs(out, lambda: call_model(out, _rebatch(inputs, 1)), lambda m: isinstance(m, SparseLinear))
    except Exception:  # noqa: BLE001 - a failing trial just means no layout hints
        return {}
    finally:
        for name, module in swapped.items():
            out.set_submodule(name, module)


def _candidates(name: str, module: nn.Module, x: torch.Tensor, weights: _Weights, feeds: bool) -> Dict[str, nn.Module]:
    """The sparse forms of one layer worth timing at input ``x``."""
    if isinstance(module, nn.Conv2d):
        return {"csr": SparseConv2d(module)}
    csr = weights.csr(name, module)
    found = {"csr": SparseLinear._from_csr(module, csr, transposed_output=feeds)}
    compact = weights.compact(name, module)
    rows = x.numel() // x.shape[-1]
    if compact is not None:
        found["csr_compact"] = SparseLinear._from_csr(module, compact[1], compact[0], transposed_output=feeds)
    if x.dim() >= 3 and rows > x.shape[-2]:  # several sequences: try one product each
        found["csr_per_sequence"] = SparseLinear._from_csr(module, csr, per_sequence=True, transposed_output=feeds)
    native = SparseLinear._from_csr(module, csr, transposed_output=feeds, kernel="native")
    if native._native_args is not None and x.dtype == torch.float32 and x.device.type == "cpu" \
            and _native.load() is not None:
        found["csr_native"] = native
    return found


def _choose(name: str, module: nn.Module, row: dict, shapes, batch: int, repeats: int, weights: _Weights,
            timer: Timer, feeds: bool = False, fed: bool = False) -> Optional[nn.Module]:
    """The fastest sparse form of ``module`` if it beats the dense layer by ``MARGIN`` (timings
    go into ``row``), else None (``row['reason']`` says why). The dense layer and every
    candidate are timed side by side in one interleaved run. ``feeds`` / ``fed``: it would
    hand its transposed product to a sparse layer / receive one, so it is timed that way."""
    x = _layer_input(name, module, shapes, batch)
    if x is None:
        row["reason"] = "no example input to time the convolution at"
        return None
    if fed and x.dim() >= 2:  # the feeder's transposed product: same values, transposed strides
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    candidates = _candidates(name, module, x, weights, feeds)
    fns = {"dense": functools.partial(_plain(module), x)}
    fns.update({label: functools.partial(candidate, x) for label, candidate in candidates.items()})
    seconds = timer(fns, repeats)
    best = min(candidates, key=lambda label: seconds[label])
    row["dense_s"], row["sparse_s"] = seconds["dense"], seconds[best]
    row["candidates_s"] = {label: seconds[label] for label in candidates}
    if row["sparse_s"] > MARGIN * row["dense_s"]:
        row["reason"] = f"CSR measured slower ({1e3 * row['sparse_s']:.3f} ms vs {1e3 * row['dense_s']:.3f} ms dense)"
        return None
    chosen = candidates[best]
    if isinstance(chosen, SparseLinear):
        rows = x.numel() // x.shape[-1]
        row["kernel"] = ("native" if chosen.kernel == "native" else "per_sequence" if chosen.per_sequence
                         else "mv" if rows == 1 else "mm")
        if chosen.input_columns is not None:
            row["input_columns"] = len(chosen.input_columns)
    return chosen


def _check_or_revert(out: nn.Module, model: nn.Module, inputs: Any, dense_output: Any, rows: List[dict],
                     measure: bool, repeats: int, timer: Timer) -> None:
    """Run the export on the example input; put every layer back dense if it fails, differs
    from the dense model, or (when measuring) runs the whole model no faster than the dense
    one (layers timed alone can mislead: the layout of their outputs costs the ops after them)."""
    try:
        feeding = _layout.feeders(out, lambda: call_model(out, _rebatch(inputs, 1)), lambda m: isinstance(m, SparseLinear))
    except Exception:  # noqa: BLE001 - the export fails on the example: _problem() below says how
        feeding = set()
    for row in rows:  # hand the transposed product to the next sparse layer as it is; copy others
        if row["form"] == "csr" and isinstance(out.get_submodule(row["layer"]), SparseLinear):
            out.get_submodule(row["layer"]).transposed_output = row["transposed_output"] = row["layer"] in feeding
    problem = _problem(out, inputs, dense_output)
    if problem is not None and feeding:  # code after it may .view() the output: make it contiguous
        for name in feeding:
            out.get_submodule(name).transposed_output = False
            next(r for r in rows if r["layer"] == name)["transposed_output"] = False
        problem = _problem(out, inputs, dense_output)
    if problem is None and measure:
        seconds = timer({"dense": functools.partial(call_model, model, inputs), "sparse": functools.partial(call_model, out, inputs)},
                        max(3, repeats))
        if seconds["sparse"] > MARGIN * seconds["dense"]:
            problem = (f"ran the whole model no faster ({1e3 * seconds['sparse']:.2f} ms vs "
                       f"{1e3 * seconds['dense']:.2f} ms dense)")
    if problem is None:
        return
    for row in rows:
        if row["form"] == "csr":
            out.set_submodule(row["layer"], copy.deepcopy(model.get_submodule(row["layer"])).eval())
            row["form"], row["reason"] = "dense", f"reverted: the sparse export {problem}"


def _problem(exported: nn.Module, inputs: Any, dense_output: Any) -> Optional[str]:
    try:
        with torch.inference_mode():
            output = call_model(exported, inputs)
    except Exception as err:  # noqa: BLE001 - any failure means: do not ship this export
        return f"failed on the example input ({type(err).__name__}: {err})"
    difference = _max_difference(dense_output, output)
    if difference > TOLERANCE:
        return f"differed from the dense model by {difference:.2e} (> {TOLERANCE})"
    return None


def _plain_copy(model: nn.Module) -> nn.Module:
    """The dense model in eval mode (a copy only when it must change mode)."""
    return model if not model.training else copy.deepcopy(model).eval()


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


def decisions(exported: nn.Module) -> List[dict]:
    """Per layer of a ``sparse()`` result: ``{layer, type, sparsity, form ('csr' or 'dense'),
    dense_s, sparse_s, reason, input_shape}`` (timings None when not measured; ``sparse_s``: the
    fastest candidate's; ``reason``: why the layer stayed dense, None for CSR layers;
    ``input_shape``: what the layer received in the example forward, None without one). Measured
    layers also have ``candidates_s`` (``{candidate: seconds}``); measured CSR layers ``kernel``:
    ``'mv'`` (one row: matrix-vector product), ``'mm'`` or ``'per_sequence'`` (one product per
    sequence), and ``input_columns`` (how many input features it reads) when compacted;
    ``transposed_output: True`` when it hands its product to the next sparse layer as a
    transposed view."""
    return list(getattr(exported, "prunekit_sparse_decisions", []))
