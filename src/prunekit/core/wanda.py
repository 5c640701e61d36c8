"""Wanda score (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
Models", section 3, Eq. 1): S_ij = |W_ij| * ||X_j||_2.

X_j is input feature j over all calibration tokens, so a small weight on a feature with large
activations can outrank a larger weight on a quiet one. It is the square root of the
Optimal-Brain-Damage saliency w_ij^2 [H]_jj with the layer's diagonal Hessian H = 2 X^T X.
The paper compares scores within each output row and keeps the same fraction in every layer:
those are this score's defaults (``per_output`` pattern, ``uniform`` allocation); any
allocation and pattern (``2:4`` as in its section 4) can be chosen instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from .calibration import LayerStats, as_rows, from_rows


def wanda(weight: torch.Tensor, generator: Optional[torch.Generator] = None,
          stats: Optional[LayerStats] = None) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, in the shape of ``weight``; ``stats`` from calibration."""
    if stats is None:
        raise ValueError("the wanda score needs calibration data: pass calibration=<loader>")
    rows = as_rows(weight.detach(), stats.transposed).to(torch.float64)
    scores = rows.abs() * stats.norms().to(rows.device).unsqueeze(0)
    return from_rows(scores, weight.shape, stats.transposed).to(torch.float32)


wanda.calibration = "norms"          # what prune() gathers for it
wanda.default_allocation = "uniform"
wanda.default_pattern = "per_output"
