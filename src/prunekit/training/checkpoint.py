"""Atomic checkpoint writes and safe loads.

Checkpoints are loaded with ``torch.load(..., weights_only=True)``, which refuses anything
but tensors and plain containers, so a checkpoint can never run code. ``save_checkpoint``
checks the payload against the same rule *before* writing, so a bad value is reported when
it is produced rather than as an unreadable file at resume time.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ..io import atomic_torch_save

PathLike = Union[str, "os.PathLike[str]"]

# What weights_only=True loads back (besides tensors).
_PLAIN = (bool, int, float, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (truncated, corrupt, foreign, mismatched)."""


def check_payload(obj: Any, where: str = "payload") -> None:
    """Raise ``TypeError`` naming the first value ``weights_only`` loading would refuse."""
    # Exact types: a subclass (numpy.float64 is a float, History is a list) is pickled under
    # its own class name, which weights_only loading refuses.
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if type(obj) in (list, tuple):
        for i, item in enumerate(obj):
            check_payload(item, f"{where}[{i}]")
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int, float, bool, type(None)):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}; "
                                "keys must be str or numbers")
            check_payload(value, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {type(obj).__module__}.{type(obj).__name__}; only "
        "tensors, numbers, strings, None, lists, tuples and dicts can be saved (they are "
        "loaded with weights_only=True)")


def save_checkpoint(path: PathLike, payload: Dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed to disk, and then
    replace ``path`` with ``os.replace``: a crash leaves either the old file or the new one,
    never half of one. Parent folders are created.
    """
    check_payload(payload)
    return atomic_torch_save(payload, path)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``FileNotFoundError`` when it does not exist and :class:`CheckpointError` (naming
    the file and what to do) when it cannot be read or is not a dict. The file is left alone.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbled/foreign files
        # torch's own message suggests weights_only=False, which is exactly what we refuse.
        reason = (str(err).splitlines() or [""])[0].split(" In PyTorch 2.6")[0].split(". Re-running")[0]
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {reason}). It is truncated, "
            "corrupt, or holds objects that are not plain data. The file was left untouched: "
            "delete it to start over.") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict; "
                              "delete it to start over.")
    return payload
