"""Gradual magnitude pruning (GMP): Zhu & Gupta, "To prune, or not to prune" (2018), section 3.

The sparsity rises from ``s_i`` to ``s_f`` along a cubic curve, pruning every ``dt`` steps from
step ``t0`` to ``t0 + n dt`` (SPEC.md section 2)::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3     for t = t0, t0 + dt, ..., t0 + n dt

Fast at first, when there are many redundant weights, and slower near the end. Each pruning
step is :func:`prunekit.prune` with the current mask, so masks only shrink and exactly
``round((1 - s_t) N)`` of the N prunable weights are kept; any score and allocation work.
Between pruning steps the mask is enforced after every optimizer step (and the momentum / Adam
state of newly pruned weights is zeroed), so the sparsity holds until the end of training.

    method = prunekit.methods.get("gmp")(final_sparsity=0.9, start_step=0, end_step=1000,
                                        prune_every=100)
    method.attach(model, optimizer)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step(); method.step()
    mask = method.finalize()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .. import params as valid
from ..core import ALLOCATIONS, SCORES
from ..core.mask import Mask, MaskEnforcer, carried_keep, enforce
from ..core.prune import check_sparsity, prune
from ..core.targets import prunable_parameters
from ..params import param
from .base import METHODS, Method


def _check_step(value: Any, what: str, minimum: int) -> int:
    valid.check(valid.int_at_least(minimum), value, what)
    return value


@dataclass(kw_only=True)
class PruningStepParams:
    """How each pruning step prunes; shared by :class:`GMP` (schedule in steps) and the ``gmp``
    experiment pipeline (schedule in epochs)."""

    initial_sparsity: float = param(0.0, check=valid.sparsity, doc="sparsity s_i of the first pruning step")
    score: str = param("magnitude", choices=SCORES.names, doc="weight score (magnitude, lamp, random)")
    allocation: str = param("global", choices=ALLOCATIONS.names,
                            doc="per-layer budget (global, uniform, uniform_plus, erk)")
    include: Optional[List[str]] = param(None, doc="name patterns of the tensors to prune")
    exclude: Optional[List[str]] = param(None, doc="name patterns of tensors left dense")


def cubic_sparsity(t: int, final_sparsity: float, start_step: int, end_step: int, prune_every: int,
                   initial_sparsity: float = 0.0) -> float:
    """The sparsity in force after ``t`` steps: that of the last pruning step ``<= t`` (0 before
    ``start_step``, ``final_sparsity`` from ``end_step`` on)."""
    if t < start_step:
        return 0.0
    n = (end_step - start_step) // prune_every
    i = min((t - start_step) // prune_every, n)
    if i == n:
        return final_sparsity  # exactly, not 1 - 1e-16 away
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - i / n) ** 3


@METHODS.register("gmp")
class GMP(Method):
    """Gradual magnitude pruning with the cubic schedule of Zhu & Gupta.

    - ``final_sparsity`` s_f and ``initial_sparsity`` s_i (absolute, of the prunable weights);
    - ``start_step`` t0, ``end_step`` t0 + n dt and ``prune_every`` dt, in optimizer steps
      (``end_step - start_step`` must be a positive multiple of ``prune_every``);
    - ``score`` / ``allocation`` / ``include`` / ``exclude`` / ``seed``: as
      :func:`prunekit.prune`.
    """

    @dataclass(kw_only=True)
    class Params(PruningStepParams):
        final_sparsity: float = param(check=valid.sparsity, example=0.8, doc="final sparsity s_f")
        end_step: int = param(check=valid.int_at_least(1), example=1000,
                              doc="last pruning step t0 + n dt, in optimizer steps")
        start_step: int = param(0, check=valid.int_at_least(0), doc="first pruning step t0")
        prune_every: int = param(100, check=valid.int_at_least(1), doc="steps dt between pruning steps")

    @classmethod
    def requested_sparsity(cls, params: Any) -> Optional[float]:
        return params.final_sparsity

    def __init__(self, final_sparsity: float, end_step: int, start_step: int = 0, prune_every: int = 100,
                 initial_sparsity: float = 0.0, score: str = "magnitude", allocation: str = "global",
                 include: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
                 seed: Optional[int] = None):
        super().__init__()
        self.final_sparsity = check_sparsity(final_sparsity, "gmp: final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "gmp: initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity {initial_sparsity} is above final_sparsity {final_sparsity}: "
                             "pruning only removes weights")
        self.start_step = _check_step(start_step, "start_step", 0)
        self.prune_every = _check_step(prune_every, "prune_every", 1)
        self.end_step = _check_step(end_step, "end_step", self.start_step + 1)
        if (self.end_step - self.start_step) % self.prune_every:
            n = max(1, round((self.end_step - self.start_step) / self.prune_every))
            raise ValueError(f"end_step - start_step ({self.end_step - self.start_step}) must be a multiple of "
                             f"prune_every ({self.prune_every}), e.g. end_step={self.start_step + n * self.prune_every}")
        valid.check_arguments(self.Params, "gmp", score=score, allocation=allocation)
        self.score, self.allocation, self.include, self.exclude, self.seed = score, allocation, include, exclude, seed
        self.mask: Optional[Mask] = None
        self._enforcer: Optional[MaskEnforcer] = None
        self._pending: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ schedule
    def sparsity_at(self, t: int) -> float:
        """The scheduled sparsity after ``t`` steps (0 before ``start_step``)."""
        return cubic_sparsity(t, self.final_sparsity, self.start_step, self.end_step, self.prune_every,
                              self.initial_sparsity)

    def is_pruning_step(self, t: int) -> bool:
        return self.start_step <= t <= self.end_step and (t - self.start_step) % self.prune_every == 0

    # ------------------------------------------------------------------ protocol
    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> "GMP":
        super().attach(model, optimizer)
        prunable_parameters(model, include=self.include, exclude=self.exclude)  # fail early on bad patterns
        if self._pending is not None:
            self._restore(self._pending)
        elif self.is_pruning_step(self.steps):  # t0 = 0: the first pruning precedes the first step
            self._prune_to(self.sparsity_at(self.steps))
        return self

    def step(self) -> None:
        self._require_attached()
        super().step()
        if self.is_pruning_step(self.steps):
            self._prune_to(self.sparsity_at(self.steps))

    def finalize(self) -> Mask:
        """Remove the enforcement hook; the model keeps plain weights with exact zeros."""
        self._require_attached()
        if self._enforcer is not None:
            self._enforcer.remove()
            self._enforcer = None
        if self.mask is None:  # finalised before the first pruning step: nothing pruned
            self.mask = self._carried_mask()
        self.mask.apply()
        return self.mask

    def metrics(self) -> Dict[str, Any]:
        out = {"target_sparsity": self.sparsity_at(self.steps)}
        if self.mask is not None:
            out["sparsity"] = self.mask.sparsity()
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "mask": self.mask.state_dict() if self.mask is not None else None}

    # ------------------------------------------------------------------ internals
    def _restore(self, state: Dict[str, Any]) -> None:
        self._pending = None
        self.steps = int(state.get("steps", 0))
        if state.get("mask") is not None:
            self._set_mask(Mask(state["mask"], self.model))

    def _set_mask(self, mask: Mask) -> None:
        # A new enforcer zeroes the newly pruned weights and their optimizer state right away.
        if self._enforcer is not None:
            self._enforcer.remove()
        self.mask = mask
        self._enforcer = enforce(mask, self.optimizer, self.model)

    def _carried_mask(self) -> Mask:
        """The mask the model already carries (:func:`prunekit.core.mask.carried_keep`): its
        zeros count as pruned only where a prunekit mask was applied before; a dense model's
        zeros (a zero-initialised head) are weights that train."""
        params = prunable_parameters(self.model, include=self.include, exclude=self.exclude)
        return Mask({n: carried_keep(p) for n, p in params.items()}, self.model)

    def _prune_to(self, sparsity: float) -> None:
        params = prunable_parameters(self.model, include=self.include, exclude=self.exclude)
        total = sum(p.numel() for p in params.values())
        held = self.mask if self.mask is not None else self._carried_mask()
        if int(round((1.0 - sparsity) * total)) >= held.kept():
            # Nothing to remove (s_i = 0, or a model that is already sparser, e.g. resumed
            # weights whose exact mask load_state_dict restores next): hold what is there.
            if self.mask is None:
                self._set_mask(held)
            return
        self._set_mask(prune(self.model, sparsity, score=self.score, allocation=self.allocation,
                             include=self.include, exclude=self.exclude, mask=self.mask, seed=self.seed))
