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


# ------------------------------------------------------------------ execution settings
# How a process computes, like the device not part of a run's id: ``fit(precision=None,
# channels_last=None, compile=None)`` reads them here, so every pipeline and sweep worker
# follows ``prunekit --precision bf16 --channels-last --compile ...`` or the environment.

PRECISION_ENV = "PRUNEKIT_PRECISION"
CHANNELS_LAST_ENV = "PRUNEKIT_CHANNELS_LAST"
COMPILE_ENV = "PRUNEKIT_COMPILE"
PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "32": "fp32", "bfloat16": "bf16", "float16": "fp16", "16": "fp16",
            "half": "fp16"}


def precision(value: Optional[str] = None) -> str:
    """``value``, else ``$PRUNEKIT_PRECISION``, else ``fp32``, checked: fp32, bf16 or fp16."""
    choice = str(value or os.environ.get(PRECISION_ENV) or "fp32").strip().lower()
    choice = _ALIASES.get(choice, choice)
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {value!r}; accepted: {', '.join(PRECISIONS)}")
    return choice


def _flag(value, env: str) -> bool:
    if value is not None:
        return bool(value)
    raw = os.environ.get(env, "").strip().lower()
    return raw not in ("", "0", "false", "no", "off")


def channels_last(value: Optional[bool] = None) -> bool:
    """``value``, else ``$PRUNEKIT_CHANNELS_LAST`` (1/true/yes), else False."""
    return _flag(value, CHANNELS_LAST_ENV)


def compile_backend(value=None) -> Optional[str]:
    """The ``torch.compile`` backend asked for, or None (the default: no compilation).

    ``value``: False/None/"" -> ``$PRUNEKIT_COMPILE``; True or "1" -> "inductor"; any other
    string is a backend name ("inductor", "eager", "aot_eager", ...).
    """
    if value is None:
        value = os.environ.get(COMPILE_ENV, "")
    if value is True:
        return "inductor"
    if value is False:
        return None
    text = str(value).strip()
    if text.lower() in ("", "0", "false", "no", "off"):
        return None
    return "inductor" if text.lower() in ("1", "true", "yes", "on") else text
