"""Sparsity patterns: which sets of weights inside one tensor a selection may keep.

The allocation decides *how many* weights each tensor keeps; the pattern decides *how they
are spread* inside it, and the score which ones win:

- ``unstructured``: the top-k scores of the whole tensor;
- ``per_output``: every output row keeps the same count (up to one, largest remainders,
  earlier rows first) and compares scores only within the row (Wanda, Sun et al. 2023,
  section 3, "per output");
- ``N:M`` (e.g. ``2:4``, ``4:8``): in every group of M consecutive weights along the input
  dimension exactly N are kept (Mishra et al. 2021; NVIDIA Ampere's 2:4), so every tensor has
  density N/M whatever the allocation.

Each pattern is ``select(rows, k) -> bool rows``: ``rows`` are the scores as an (out, in)
matrix (see :func:`prunekit.core.calibration.as_rows`), ``k`` the tensor's kept count.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..registry import Registry
from .thresholds import largest_remainder, topk_mask

Select = Callable[[torch.Tensor, int], torch.Tensor]
PATTERNS: Registry[Select] = Registry("pattern")

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@PATTERNS.register("unstructured")
def unstructured(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest scores of the tensor, ties to the lower index."""
    return topk_mask(rows, k)


@PATTERNS.register("per_output")
def per_output(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Each row keeps k / out weights (largest remainders: earlier rows take the extra ones),
    its own highest scores."""
    out, width = rows.shape
    per_row = largest_remainder([k / out] * out, k, [width] * out)
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(rows, dtype=torch.bool)
    ranks = torch.arange(width, device=rows.device).expand(out, width)
    counts = torch.tensor(per_row, device=rows.device).unsqueeze(1)
    keep.scatter_(1, order, ranks < counts)
    return keep


@dataclass(frozen=True)
class NM:
    """Keep exactly ``n`` of every ``m`` consecutive input weights."""

    n: int
    m: int

    @property
    def density(self) -> float:
        return self.n / self.m

    def check_width(self, name: str, width: int) -> None:
        if width % self.m:
            raise ValueError(f"pattern {self.n}:{self.m} needs an input width divisible by {self.m}; "
                             f"{name} has {width} inputs: exclude it or choose another M")

    def __call__(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        out, width = rows.shape
        if k != out * width * self.n // self.m:
            raise AssertionError(f"{self.n}:{self.m} keeps {out * width * self.n // self.m} weights, asked {k}")
        groups = rows.reshape(out, width // self.m, self.m)
        # stable descending sort: among equal scores the earlier weight of the group wins
        order = torch.sort(groups, dim=2, descending=True, stable=True).indices
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(2, order[..., : self.n], True)
        return keep.reshape(out, width)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_nm(pattern: str) -> Optional[NM]:
    """``"2:4"`` -> NM(2, 4); a string that is not of the form N:M -> None; N:M with N < 1 or
    N >= M -> ``ValueError``."""
    match = _NM.match(pattern)
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern keeps N of every M weights with 0 < N < M (e.g. 2:4, 4:8), got {pattern!r}")
    return NM(n, m)


def get(pattern: Optional[str]) -> Select:
    """The selection named ``pattern``: a registered name or an ``"N:M"`` string."""
    if isinstance(pattern, str):
        nm = parse_nm(pattern)
        if nm is not None:
            return nm
    if not isinstance(pattern, str) or pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of: {', '.join(PATTERNS.names())} "
                         "or N:M with integers 0 < N < M (e.g. 2:4, 4:8)")
    return PATTERNS.get(pattern)


def names():
    return PATTERNS.names() + ["N:M"]
