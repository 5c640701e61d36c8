"""Optimizer builders: ``make_optimizer(model_or_params, "sgd" | "adamw", ...)``."""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterable, Tuple, Union

import torch
from torch import nn

from prunekit.registry import UnknownNameError

OPTIMIZER_NAMES: Tuple[str, ...] = ("sgd", "adamw")
_CLASSES = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def _params(model_or_params: Union[nn.Module, Iterable]) -> list:
    if isinstance(model_or_params, nn.Module):
        # Frozen parameters stay out: SGD's weight decay would still move them.
        return [p for p in model_or_params.parameters() if p.requires_grad]
    return list(model_or_params)  # tensors or param-group dicts, as torch accepts


def make_optimizer(model_or_params: Union[nn.Module, Iterable], name: str = "sgd",
                   lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
                   weight_decay: float = 5e-4, **kwargs: Any) -> torch.optim.Optimizer:
    """Build an optimizer over a model's trainable parameters (or given params/groups).

    - ``"sgd"``: ``torch.optim.SGD(lr, momentum, nesterov, weight_decay, **kwargs)``.
    - ``"adamw"``: ``torch.optim.AdamW(lr, weight_decay, **kwargs)`` (e.g. ``betas``);
      ``momentum`` and ``nesterov`` do not apply and are ignored.

    An unknown name raises ``KeyError`` listing the choices; an unknown keyword raises
    ``ValueError`` listing the accepted ones.
    """
    for what, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            accepted = "a finite number >= 0"
            raise ValueError(f"{what} must be {accepted}, got {value!r}")
    key = name.lower() if isinstance(name, str) else name
    if key not in _CLASSES:
        raise UnknownNameError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)} "
            "(or pass a torch.optim.Optimizer)")
    cls = _CLASSES[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters
                if p not in ("self", "params")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"optimizer {key!r} got unknown argument(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(accepted)}")
    params = _params(model_or_params)
    if key == "sgd":
        return cls(params, lr=lr, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, **kwargs)
    return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
