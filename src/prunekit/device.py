"""Where prunekit computes: one place turning a user's device choice into a ``torch.device``.

Library functions take ``device=`` explicitly (``fit``, ``evaluate``, ``imp``, ...). The
experiment runner and the CLI read the choice once, from ``--device`` or the environment
variable ``PRUNEKIT_DEVICE`` (so sweep workers, Ray tasks and torchrun ranks inherit it):

- unset or ``cpu``: the CPU (the default: results do not depend on what hardware is present);
- ``auto``: this process's GPU when CUDA is available (``cuda:LOCAL_RANK`` under torchrun),
  else Apple's ``mps``, else the CPU;
- any ``torch.device`` string: ``cuda``, ``cuda:1``, ``mps``.

The device is not part of a run's id: the same spec on another device is the same experiment.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

ENV = "PRUNEKIT_DEVICE"
ACCEPTED = "cpu, auto, cuda, cuda:N or mps"


def resolve(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device``, else ``$PRUNEKIT_DEVICE``, else ``cpu``, as a checked ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    choice = (device or os.environ.get(ENV) or "cpu").strip()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(choice)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"unknown device {choice!r}; accepted: {ACCEPTED}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} asked for, but CUDA is not available here; use cpu or auto")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {choice!r} asked for, but MPS is not available here; use cpu or auto")
    return resolved
