"""The dense-equivalent baseline (seed 002, section 4; SPEC.md section 3).

A pruned model that keeps a fraction r_c of its parameters is compared with the *same
architecture* made thinner: every hidden layer's channels multiplied by sqrt(r_c) (floor, via
the models' ``width`` multiplier: c -> max(1, int(c * width))), so a layer's C_in * C_out
parameters scale by about r_c. Input channels and the number of classes are not scaled, so the
thin model's count is close to (and, thanks to the floor, usually not above) the pruned one's;
both counts are reported. It is trained from scratch with the same recipe.

    thin = pk.pipelines.dense_equivalent("lenet5", kept_fraction=0.15)
    thin.dense_equivalent_info   # {"kept_fraction", "width", "params", "reference_params", ...}
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from .. import models
from .. import params as valid


def _check_fraction(kept_fraction: Any) -> float:
    if kept_fraction is None:
        raise ValueError("kept_fraction is required: the fraction of parameters kept, in (0, 1]")
    try:
        valid.fraction_kept(kept_fraction)
    except ValueError as err:
        raise ValueError(f"kept_fraction (of the parameters): {err}") from None
    return float(kept_fraction)


def equivalent_width(kept_fraction: float, width: float = 1.0) -> float:
    """The width multiplier of the dense-equivalent model: ``width * sqrt(kept_fraction)``."""
    return float(width) * math.sqrt(_check_fraction(kept_fraction))


def dense_equivalent(model_name: str, kept_fraction: float, num_classes: int = 10,
                     in_channels: Optional[int] = None, width: float = 1.0, **model_kwargs: Any) -> nn.Module:
    """Build ``model_name`` with every hidden channel count scaled by sqrt(kept_fraction)
    (relative to ``width``), freshly initialised from the current torch RNG state.

    The returned model carries ``dense_equivalent_info``: kept_fraction, width, params (its
    parameter count), reference_params (the full-width model's), target_params
    (kept_fraction * reference_params) and ratio (params / reference_params).
    """
    thin_width = equivalent_width(kept_fraction, width)
    model = models.get(model_name, num_classes=num_classes, in_channels=in_channels, width=thin_width, **model_kwargs)

    state = torch.get_rng_state()
    reference = models.get(model_name, num_classes=num_classes, in_channels=in_channels, width=width, **model_kwargs)
    torch.set_rng_state(state)  # counting the reference must not change later random draws
    params = sum(p.numel() for p in model.parameters())
    ref = sum(p.numel() for p in reference.parameters())
    info: Dict[str, Any] = {"model": model_name, "kept_fraction": float(kept_fraction), "width": thin_width,
                            "params": params, "reference_params": ref, "target_params": kept_fraction * ref,
                            "ratio": params / ref}
    model.dense_equivalent_info = info
    return model
