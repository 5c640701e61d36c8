"""2:4 masks to torch's semi-structured sparse tensors (NVIDIA sparse tensor cores).

A Linear pruned to the 2:4 pattern (``prune(..., pattern="2:4")``: two of every four
consecutive input weights kept) can store its weight with
``torch.sparse.to_sparse_semi_structured``: the kept half plus 2-bit indices, multiplied by the
sparse tensor cores of NVIDIA GPUs of compute capability >= 8.0 (Ampere and newer; Mishra et
al. 2021, "Accelerating Sparse Deep Neural Networks"). Elsewhere (CPU, older GPUs) the
conversion is refused with one line saying what is needed.

    import prunekit as pk
    mask = pk.prune(model, 0.5, score="sparsegpt", calibration=loader, pattern="2:4")
    model.half().cuda()
    pk.export.semi_structured.to_semi_structured(model, mask)   # RuntimeError on CPU
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

MIN_CAPABILITY = (8, 0)
# (rows, cols) multiples torch's CUTLASS kernels need, by dtype (its _DTYPE_SHAPE_CONSTRAINTS)
_FALLBACK_SHAPES = {torch.int8: (16, 128), torch.float16: (32, 64), torch.bfloat16: (32, 64),
                    torch.float32: (32, 32)}


def shape_multiples() -> Dict[torch.dtype, Tuple[int, int]]:
    """The row and column multiples a weight of each supported dtype must have."""
    cutlass = getattr(torch.sparse, "SparseSemiStructuredTensorCUTLASS", None)
    table = getattr(cutlass, "_DTYPE_SHAPE_CONSTRAINTS", None)
    if not table:
        return dict(_FALLBACK_SHAPES)
    return {dtype: (c.sparse_min_rows, c.sparse_min_cols) for dtype, c in table.items()}


def unsupported_reason(device: torch.device | str, capability: Optional[Tuple[int, int]] = None,
                       dtype: torch.dtype = torch.float16, shape: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """None when a (out, in) weight of ``dtype`` on ``device`` can become a semi-structured
    sparse tensor, else one line saying what is needed. ``capability`` is the GPU's (major,
    minor), read from the device when not given (tests pass it to check the decisions)."""
    device = torch.device(device)
    need = f"semi-structured (2:4) sparse tensors need a CUDA GPU of compute capability >= " \
           f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ampere or newer)"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"{need} and torch >= 2.1; this torch {torch.__version__} lacks to_sparse_semi_structured"
    if device.type != "cuda":
        return f"{need}; the weights are on {device.type}: move the model with .cuda() first"
    if capability is None:
        if not torch.cuda.is_available():
            return f"{need}; torch sees no CUDA device"
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return f"{need}; this GPU has capability {capability[0]}.{capability[1]}"
    multiples = shape_multiples()
    if dtype not in multiples:
        names = ", ".join(str(d).replace("torch.", "") for d in multiples)
        return f"semi-structured sparse weights must be one of {names}, got {str(dtype).replace('torch.', '')}"
    if shape is not None:
        rows, cols = multiples[dtype]
        if shape[0] % rows or shape[1] % cols:
            return (f"a {str(dtype).replace('torch.', '')} semi-structured weight needs rows divisible by {rows} "
                    f"and columns by {cols}, got {tuple(shape)}")
    return None


def is_2_4(keep: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs of every row keeps exactly 2."""
    rows = keep.reshape(keep.shape[0], -1)
    if rows.shape[1] % 4:
        return False
    return bool((rows.reshape(rows.shape[0], -1, 4).sum(-1) == 2).all())


def two_four_linears(model: nn.Module, mask: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, nn.Linear]:
    """``{module name: Linear}`` whose weight follows 2:4 (by ``mask``, else by its nonzeros)."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        key = f"{name}.weight" if name else "weight"
        keep = mask[key] if mask is not None and key in mask else module.weight.detach() != 0
        if is_2_4(keep):
            found[name] = module
    return found


@torch.no_grad()
def to_semi_structured(model: nn.Module, mask: Optional[Mapping[str, torch.Tensor]] = None,
                       capability: Optional[Tuple[int, int]] = None) -> List[str]:
    """Replace, in place, the weight of every 2:4 Linear of ``model`` by its semi-structured
    sparse tensor and return the converted module names. Raises ``RuntimeError`` with the
    reason when the device, dtype or a shape does not allow it (nothing is converted then),
    and ``ValueError`` when no Linear follows 2:4."""
    layers = two_four_linears(model, mask)
    if not layers:
        raise ValueError("no Linear weight follows the 2:4 pattern: prune with pattern='2:4' first")
    for name, module in layers.items():
        w = module.weight
        reason = unsupported_reason(w.device, capability, w.dtype, tuple(w.shape))
        if reason is not None:
            raise RuntimeError(f"{name}: {reason}")
    for module in layers.values():
        module.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(module.weight), requires_grad=False)
    return list(layers)
