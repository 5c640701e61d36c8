"""Optional model sources (torchvision, timm, transformers, sentence-transformers): import them
on demand and turn any import failure into one line that says what failed and how to fix it.

Why not just ``import torchvision``: a torchvision wheel built for another torch (a CUDA build
beside a CPU torch, say) is *installed* but fails at import with ``RuntimeError: operator
torchvision::nms does not exist``; transformers imports torchvision when it is installed, so it
then fails too, with a message that does not mention torchvision. ``require`` raises
``OptionalDependencyError`` (a ValueError, so the CLI prints it as one line with exit code 2)
and ``status`` reports every source for ``prunekit list``. Nothing here patches the broken
package: the fix is on the user's side.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any, Dict, Optional

import torch

__all__ = ["OptionalDependencyError", "SOURCES", "require", "reason", "status"]

#: Source name -> (module to import, what it provides, pip package).
SOURCES = {
    "torchvision": ("torchvision", "torchvision models (resnet18, vit_b_16, ...)", "torchvision"),
    "timm": ("timm", "timm models (timm:NAME)", "timm"),
    "transformers": ("transformers", "Hugging Face models from a folder (hf:PATH)", "transformers"),
    "sentence-transformers": ("sentence_transformers", "sentence-transformers models from a folder (hf:PATH)",
                              "sentence-transformers"),
}

_failures: Dict[str, str] = {}  # module -> the one-line reason, so a broken import is tried once


class OptionalDependencyError(ImportError, ValueError):
    """An optional package is missing or fails to import. Both an ImportError (what it is) and a
    ValueError (what the CLI reports as a one-line user error)."""


def _reason(module: str, pip_name: str, err: BaseException) -> str:
    """One line: what failed and how to fix it."""
    chain, cause = [], err
    while cause is not None and len(chain) < 10:  # the root cause may be several links down
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    broken_ops = re.search(r"operator torchvision::\w+ does not exist", text)
    if broken_ops:
        what = ("torchvision is installed but fails to import" if module == "torchvision" else
                f"{module} fails to import because torchvision, which it imports, is installed but broken")
        return (f"{what}: its C++ operators do not load beside torch {torch.__version__} ({broken_ops.group(0)}); "
                f"install the torchvision build made for this torch (the release paired with torch "
                f"{torch.__version__.split('+')[0]}, from the same index as torch) or pip uninstall torchvision")
    if isinstance(err, ModuleNotFoundError) and importlib.util.find_spec(module) is None:
        return f"{module} is not installed: pip install {pip_name}"
    first = chain[-1]
    return f"{module} is installed but failed to import ({type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}); reinstall it: pip install --force-reinstall {pip_name}"


def require(source: str, probe: Optional[str] = None) -> Any:
    """Import and return the module of ``source`` (a key of ``SOURCES``), or raise
    ``OptionalDependencyError`` with one line saying what failed and how to fix it.

    ``probe``: an attribute to touch after import (transformers imports its models lazily, so
    the failure only shows when e.g. ``PreTrainedModel`` is first used)."""
    module, _, pip_name = SOURCES[source]
    key = f"{module}.{probe}" if probe else module
    if key in _failures:
        raise OptionalDependencyError(_failures[key])
    try:
        mod = importlib.import_module(module)
        if probe:
            getattr(mod, probe)
    except Exception as err:  # noqa: BLE001 - any import-time failure is reported the same way
        _failures[key] = _reason(module, pip_name, err)
        raise OptionalDependencyError(_failures[key]) from err
    return mod


# What to touch to know a source really works (lazy packages fail only on first use).
_PROBES = {"transformers": "PreTrainedModel", "sentence-transformers": "SentenceTransformer"}


def reason(source: str) -> Optional[str]:
    """None if ``source`` is usable, else the one-line reason why not."""
    try:
        require(source, _PROBES.get(source))
    except OptionalDependencyError as err:
        return str(err)
    return None


def status() -> Dict[str, Optional[str]]:
    """``{source: None if usable else the one-line reason}`` for every optional source."""
    return {source: reason(source) for source in SOURCES}
