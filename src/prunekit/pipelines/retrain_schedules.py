"""Learning-rate schedules for the retraining phases of IMP (SPEC.md section 2).

Zimmer, Spiegel & Pokutta, "Back to Basics: Efficient Network Compression via IMP" (seed 004,
section 2 "Retraining schedules") compare how to set the learning rate while a pruned network
retrains for ``n`` iterations. Every schedule here is a small function of ``n`` and of the
*original* (dense) schedule, returned as a :class:`prunekit.training.Schedule` whose
``factor(t)`` is the absolute learning rate of retraining step ``t`` (IMP trains with base lr 1,
so the factor *is* the learning rate). With ``eta_max`` / ``eta_min`` the largest / smallest
learning rate of the original schedule and ``w = n // 10`` warm-up steps:

=====  ============================================================================  ===========
name   learning rate at retraining step t (0 <= t < n)                               needs
=====  ============================================================================  ===========
ft     ``eta_min`` (fine-tuning at the final lr of training)                         eta_min
lrw    the last ``n`` steps of the original schedule (learning-rate rewinding,        schedule
       Renda et al.): ``lr_orig(T - n + t)``
slr    warm-up ``eta_max * t / w``, then the whole original schedule compressed       schedule
       into the ``n - w`` remaining steps: ``lr_orig(floor((t - w) * T / (n - w)))``
clr    warm-up, then cosine from ``eta_max`` to ``eta_min`` over ``n - w`` steps       eta_max/min
       (Le & Hua's cyclic restarting)
llr    warm-up, then linear from ``eta_max`` towards 0 over ``n - w`` steps:           eta_max
       ``eta_max * (1 - (t - w) / (n - w))``
allr   as llr with the peak ``eta_0`` of :func:`allr_peak` instead of ``eta_max``      schedule
=====  ============================================================================  ===========

The warm-up (slr, clr, llr, allr) is ``Schedule.linear(0, peak, w)``: 0 at step 0, reaching
the peak on the first step after it; with ``n < 10`` there is no warm-up. ``T`` is the number of
steps of the original schedule; lrw assumes retraining counts steps in the same batches as
the dense training did (same batch size), which is what "the last T_r epochs" means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..registry import UnknownNameError
from ..training.schedules import Schedule, schedule_from_recipe

WARMUP_FRACTION_DENOMINATOR = 10  # warm-up = the first n // 10 retraining steps (10%)


@dataclass(frozen=True)
class OriginalSchedule:
    """The dense training's learning rate, as the retraining schedules need it.

    - ``eta_max`` / ``eta_min``: its largest / smallest learning rate.
    - ``lr``: its learning rate per step (a Schedule of absolute rates), None when unknown.
    - ``epochs``: T_train, its length in epochs (ALLR's lower bound), None when unknown.
    - ``steps_per_epoch``: batches per epoch of the dense training, None when unknown.
    """

    eta_max: Optional[float] = None
    eta_min: Optional[float] = None
    lr: Optional[Schedule] = None
    epochs: Optional[float] = None
    steps_per_epoch: Optional[int] = None

    @classmethod
    def from_recipe(cls, recipe: Optional[Mapping[str, Any]],
                    steps_per_epoch: Optional[int] = None) -> "OriginalSchedule":
        """Read the original schedule from a training ``recipe`` (what ``fit`` saves with its
        checkpoint: lr, schedule, schedule_kwargs, epochs, steps_per_epoch, total_steps,
        eta_max, eta_min). A recipe without ``steps_per_epoch`` (e.g. a ``prunekit train``
        model file) uses the ``steps_per_epoch`` given here (the retraining loader's). Whatever
        cannot be read stays None, and the schedules that need it say so."""
        if not recipe:
            return cls()
        recipe = dict(recipe)
        per_epoch = recipe.get("steps_per_epoch") or steps_per_epoch
        if "total_steps" not in recipe and per_epoch and recipe.get("epochs"):
            recipe.update(steps_per_epoch=per_epoch, total_steps=int(recipe["epochs"]) * int(per_epoch))
        lr = None
        if "lr" in recipe and recipe.get("total_steps"):
            try:
                lr = schedule_from_recipe(recipe).scaled(float(recipe["lr"]))
            except (ValueError, KeyError):  # a custom schedule function cannot be rebuilt
                lr = None
        eta_max = recipe.get("eta_max")
        eta_min = recipe.get("eta_min")
        if lr is not None:
            eta_max = lr.max_factor() if eta_max is None else eta_max
            eta_min = lr.min_factor() if eta_min is None else eta_min
        return cls(eta_max=None if eta_max is None else float(eta_max),
                   eta_min=None if eta_min is None else float(eta_min),
                   lr=lr, epochs=recipe.get("epochs"),
                   steps_per_epoch=None if per_epoch is None else int(per_epoch))

    def with_ft_floor(self, floor: float) -> "OriginalSchedule":
        """``eta_min`` raised to at least ``floor * eta_max``: the learning rate of FT.

        FT fine-tunes at the final learning rate of training (Renda et al. 2020; seed 004's FT).
        After a step recipe that is its last plateau (0.1 -> 0.001 on CIFAR: 1% of eta_max,
        unchanged by the default floor 0.01); after a cosine-to-zero recipe it is the last
        step's ~1e-6 x eta_max, at which retraining does nothing (issue #15 point 7:
        LeNet-300-100 FT at 98% gave 31.99%). *Choice*: the floor 0.01 is that step recipe's
        final plateau, also Li et al.'s / Liu et al.'s fine-tuning lr 1e-3 at eta_max 0.1."""
        if floor <= 0 or self.eta_max is None or self.eta_min is None:
            return self
        return self.replace(eta_min=max(self.eta_min, floor * self.eta_max))

    def replace(self, **changes: Any) -> "OriginalSchedule":
        values = {k: getattr(self, k) for k in ("eta_max", "eta_min", "lr", "epochs", "steps_per_epoch")}
        values.update({k: v for k, v in changes.items() if v is not None})
        return OriginalSchedule(**values)


# ------------------------------------------------------------------------------ helpers


def warmup_steps(n: int) -> int:
    """Warm-up length for ``n`` retraining steps: the first 10%, rounded down."""
    return int(n) // WARMUP_FRACTION_DENOMINATOR


def _warm(peak: float, n: int, rest: Callable[[int], Schedule]) -> Schedule:
    """A linear warm-up from 0 to ``peak`` over ``n // 10`` steps, then ``rest(n - w)``."""
    w = warmup_steps(n)
    if w == 0:
        return rest(n)
    return Schedule.linear(0.0, peak, w).then(rest(n - w))


def _need(orig: OriginalSchedule, name: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(orig, f) is None]
    if missing:
        what = {"lr": "the original learning-rate schedule", "eta_max": "eta_max", "eta_min": "eta_min",
                "epochs": "the original number of training epochs (T_train)"}
        raise ValueError(
            f"retraining schedule {name!r} needs {', '.join(what.get(m, m) for m in missing)} of the dense "
            "training, read from the recipe saved with the trained checkpoint; this one has none. Train with "
            "prunekit (its checkpoints carry the recipe), pass the recipe, or pass eta_max/eta_min "
            "explicitly and use ft, clr or llr")


def _named(sched: Schedule, name: str, **params: Any) -> Schedule:
    # The name goes into fit's saved recipe, so a resumed phase checks it is the same schedule.
    return Schedule(sched.factor, sched.total_steps, name, params)


# ---------------------------------------------------------------------------- schedules


def ft(n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """FT: fine-tune at the constant ``eta_min`` of the original schedule."""
    _need(orig, "ft", "eta_min")
    return _named(Schedule.constant(orig.eta_min, n), "ft", eta=orig.eta_min)


def lrw(n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """LRW: replay the last ``n`` steps of the original schedule (Renda et al. 2020)."""
    _need(orig, "lrw", "lr")
    if n > orig.lr.total_steps:
        raise ValueError(f"lrw replays the last {n} steps of the original schedule, which has only "
                         f"{orig.lr.total_steps}: retrain for at most the dense training's length")
    return _named(orig.lr.last(n), "lrw")


def slr(n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """SLR: warm up to ``eta_max``, then the whole original schedule compressed in time."""
    _need(orig, "slr", "lr", "eta_max")
    return _named(_warm(orig.eta_max, n, lambda m: orig.lr.stretched(m)), "slr", eta_max=orig.eta_max)


def clr(n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """CLR: warm up to ``eta_max``, then cosine decay to ``eta_min`` (Le & Hua 2021)."""
    _need(orig, "clr", "eta_max", "eta_min")
    hi, lo = orig.eta_max, orig.eta_min
    return _named(_warm(hi, n, lambda m: Schedule.cosine(hi, lo, m)), "clr", eta_max=hi, eta_min=lo)


def llr(n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """LLR: warm up to ``eta_max`` (or ``peak``), then linear decay towards 0."""
    _need(orig, "llr", "eta_max")
    top = orig.eta_max if peak is None else float(peak)
    return _named(_warm(top, n, lambda m: Schedule.linear(top, 0.0, m)), "llr", peak=top)


def allr(n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """ALLR: LLR whose peak ``eta_0`` adapts to how much this phase's pruning changed the
    weights (:func:`allr_peak`, computed by the pipeline after pruning)."""
    _need(orig, "allr", "eta_max", "epochs")
    if peak is None:
        raise ValueError("allr needs the phase's peak learning rate: compute it with allr_peak()")
    top = float(peak)
    return _named(_warm(top, n, lambda m: Schedule.linear(top, 0.0, m)), "allr", peak=top)


RETRAIN_SCHEDULES: Dict[str, Callable[..., Schedule]] = {
    "ft": ft, "lrw": lrw, "slr": slr, "clr": clr, "llr": llr, "allr": allr,
}
RETRAIN_SCHEDULE_NAMES = tuple(RETRAIN_SCHEDULES)


def check_retrain_schedule(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in RETRAIN_SCHEDULES:
        raise UnknownNameError(f"unknown retraining schedule {name!r}; choose one of: "
                               f"{', '.join(RETRAIN_SCHEDULE_NAMES)}")
    return name.lower()


def retrain_schedule(name: str, n: int, orig: OriginalSchedule, peak: Optional[float] = None) -> Schedule:
    """The retraining schedule ``name`` over ``n`` steps (absolute learning rates)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"a retraining schedule needs at least one step, got n={n}")
    return RETRAIN_SCHEDULES[check_retrain_schedule(name)](n, orig, peak)


# ---------------------------------------------------------------------------------- ALLR


@torch.no_grad()
def relative_change(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> float:
    """``||theta - theta_pruned|| / ||theta||`` over the given tensors (L2 over all entries).

    *Choice*: theta is the prunable weights, the tensors pruning acts on (biases and norms are
    never pruned: they would only enlarge ``||theta||``).
    """
    diff = sum(float(((before[k].float() - after[k].float()) ** 2).sum()) for k in before)
    norm = sum(float((before[k].float() ** 2).sum()) for k in before)
    return math.sqrt(diff) / math.sqrt(norm) if norm > 0 else 0.0


def allr_peak(change: float, fraction_pruned: float, eta_max: float, retrain_epochs: float,
              train_epochs: float) -> float:
    """The ALLR peak learning rate of one phase (seed 004, section 2)::

        eta_0 = clip(change / sqrt(fraction_pruned) * eta_max,
                     lower = min(T_r / T_train, 1) * eta_max, upper = eta_max)

    ``change`` = ``||theta - theta_pruned|| / ||theta||`` (:func:`relative_change`),
    ``fraction_pruned`` = the fraction of the remaining weights this phase removed,
    ``T_r`` / ``T_train`` = retraining / dense training length in epochs.
    """
    if not 0.0 < fraction_pruned <= 1.0:
        raise ValueError(f"fraction_pruned must be in (0, 1], got {fraction_pruned}")
    if train_epochs <= 0:
        raise ValueError(f"train_epochs (T_train) must be > 0, got {train_epochs}")
    raw = change / math.sqrt(fraction_pruned) * eta_max
    lower = min(retrain_epochs / train_epochs, 1.0) * eta_max
    return min(max(raw, lower), eta_max)
