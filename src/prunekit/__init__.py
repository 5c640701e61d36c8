"""prunekit: prune PyTorch networks and tell the truth about the result.

    import prunekit as pk
    model = pk.models.get("lenet5")
    mask = pk.prune(model, sparsity=0.9, score="magnitude", allocation="global")
    pk.enforce(mask, optimizer)          # pruned weights stay zero while training

Subpackages are imported lazily so that ``import prunekit`` stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = {
    "core", "data", "models", "training", "pipelines", "methods", "structured",
    "experiments", "export", "cli", "registry",
}
# Top-level shortcuts to the most used functions: name -> module that defines it.
_SHORTCUTS = {
    "prune": "prunekit.core.prune",
    "enforce": "prunekit.core.mask",
    "Mask": "prunekit.core.mask",
}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"prunekit.{name}")
        globals()[name] = module
        return module
    if name in _SHORTCUTS:
        value = getattr(importlib.import_module(_SHORTCUTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES) + list(_SHORTCUTS))
