"""Test-only shim: lets torchvision's *model definitions* import beside a CPU torch.

PyPI's torchvision wheel on this project's machines is a CUDA build: its C++ operators fail to
load next to the CPU torch, and its Python side then stops at
``RuntimeError: operator torchvision::nms does not exist`` (which also breaks importing
``transformers``, since it imports torchvision when installed). The models never call those
detection operators, so declaring their schemas (no kernels) is enough to import them.
prunekit itself never needs this: users with matching wheels have the real operators.
"""
from __future__ import annotations

import re
import sys

import torch

# The schemas torchvision registers in C++ (csrc/ops/nms.cpp, quantized/cpu/qnms_kernel.cpp).
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None


def install() -> str:
    """Import torchvision, declaring missing operator schemas as needed. Returns what
    happened: "absent", "native" (its operators loaded) or "shimmed: nms, qnms"."""
    global _library
    declared = []
    for _ in range(len(_SCHEMAS) + 1):
        try:
            import torchvision  # noqa: F401
            return f"shimmed: {', '.join(declared)}" if declared else "native"
        except ImportError:
            return "absent"
        except RuntimeError as err:
            match = re.search(r"operator torchvision::(\w+) does not exist", str(err))
            if not match or match.group(1) not in _SCHEMAS or match.group(1) in declared:
                raise
            if _library is None:
                _library = torch.library.Library("torchvision", "DEF")
            _library.define(_SCHEMAS[match.group(1)])
            declared.append(match.group(1))
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]   # the failed import left half-initialised modules
    raise RuntimeError("torchvision still fails to import after declaring its operator schemas")
