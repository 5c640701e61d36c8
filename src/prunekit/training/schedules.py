"""Per-iteration learning-rate schedules.

A :class:`Schedule` is a small pure object: ``factor(t)`` is the multiplier of every param
group's *base* learning rate for optimizer step ``t`` (0-based: ``factor(0)`` is used by the
first step). Param groups keep their own base lr, so a method's thresholds trained at lr/100
follow the same curve at 1/100 of the height.

Notation in the formulas below: ``t`` is the step, ``T`` = ``total_steps``, ``E`` = steps per
epoch, and ``m`` = ``eta_min_factor`` (the floor as a fraction of the base lr).

Schedules compose by wrapping functions of the step, which is what IMP's retraining schedules
need (see SPEC section 2)::

    s = make_schedule("cosine", total_steps=200 * E, steps_per_epoch=E)
    lrw = s.last(T_r * E)                                  # replay the last T_r epochs
    w = int(0.1 * n)                                       # warm-up: 10% of the n steps
    slr = Schedule.linear(0, s.max_factor(), w).then(s.stretched(n - w))
    clr = Schedule.linear(0, 1, w).then(Schedule.cosine(1, s.min_factor(), n - w))
    llr = Schedule.linear(0, 1, w).then(Schedule.linear(1, 0, n - w))

Steps outside ``[0, T)`` hold the nearest end value (a loader that yields one batch more than
its ``len()`` does not make the schedule jump).
"""
from __future__ import annotations

import bisect
import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from prunekit.registry import UnknownNameError

FactorFn = Callable[[int], float]


class Schedule:
    """A learning-rate multiplier as a function of the global optimizer step.

    ``name`` and ``params`` describe how it was built (they go into the training recipe, so
    a later pipeline can rebuild it with :func:`schedule_from_recipe`).
    """

    def __init__(self, fn: FactorFn, total_steps: int, name: str = "custom",
                 params: Optional[Dict[str, Any]] = None):
        total_steps = int(total_steps)
        if total_steps < 1:
            raise ValueError(f"a schedule needs total_steps >= 1, got {total_steps}")
        self._fn = fn
        self.total_steps = total_steps
        self.name = name
        self.params: Dict[str, Any] = dict(params or {})
        self._extremes: Optional[Tuple[float, float]] = None  # cache of (min, max)

    # ----------------------------------------------------------------- evaluation
    def factor(self, step: int) -> float:
        """Multiplier of the base lr at step ``step`` (clamped into ``[0, total_steps)``)."""
        step = min(max(int(step), 0), self.total_steps - 1)
        return float(self._fn(step))

    def factors(self, start: int = 0, stop: Optional[int] = None) -> List[float]:
        """``[factor(t) for t in range(start, stop)]``; ``stop`` defaults to ``total_steps``."""
        stop = self.total_steps if stop is None else stop
        return [self.factor(t) for t in range(start, stop)]

    def _min_max(self) -> Tuple[float, float]:
        # One pass over the steps, cached: cheap next to training, and exact for any shape.
        if self._extremes is None:
            values = self.factors()
            self._extremes = (min(values), max(values))
        return self._extremes

    def max_factor(self) -> float:
        """Largest factor over steps ``0..total_steps-1`` (eta_max / base lr)."""
        return self._min_max()[1]

    def min_factor(self) -> float:
        """Smallest factor over steps ``0..total_steps-1`` (eta_min / base lr)."""
        return self._min_max()[0]

    def describe(self) -> Dict[str, Any]:
        """A plain dict ``{"name": ..., **params, "total_steps": ...}`` for logs and recipes."""
        return {"name": self.name, **self.params, "total_steps": self.total_steps}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"Schedule({self.name}({args}), total_steps={self.total_steps})"

    # ---------------------------------------------------------------- composition
    def shifted(self, offset: int, total_steps: Optional[int] = None) -> "Schedule":
        """``g(t) = f(t + offset)``; by default as long as what is left after ``offset``."""
        offset = int(offset)
        n = self.total_steps - offset if total_steps is None else total_steps
        return Schedule(lambda t: self.factor(t + offset), n,
                        f"{self.name}.shifted", {"offset": offset})

    def window(self, start: int, stop: int) -> "Schedule":
        """Steps ``[start, stop)`` of this schedule, renumbered from 0."""
        return self.shifted(start, int(stop) - int(start))

    def last(self, n: int) -> "Schedule":
        """The last ``n`` steps (learning-rate rewinding replays the last T_r epochs)."""
        n = int(n)
        if not 1 <= n <= self.total_steps:
            raise ValueError(f"last(n) needs 1 <= n <= {self.total_steps}, got {n}")
        return self.window(self.total_steps - n, self.total_steps)

    def stretched(self, total_steps: int) -> "Schedule":
        """The whole schedule compressed (or stretched) in time into ``total_steps`` steps:
        ``g(t) = f(floor(t * T / total_steps))``."""
        n, big_t = int(total_steps), self.total_steps
        return Schedule(lambda t: self.factor((t * big_t) // n), n,
                        f"{self.name}.stretched", {})

    def scaled(self, c: float) -> "Schedule":
        """``g(t) = c * f(t)``."""
        c = float(c)
        return Schedule(lambda t: c * self.factor(t), self.total_steps,
                        f"{self.name}.scaled", {"c": c})

    def then(self, other: "Schedule") -> "Schedule":
        """This schedule for its ``total_steps``, then ``other`` (renumbered from 0)."""
        n = self.total_steps
        return Schedule(lambda t: self.factor(t) if t < n else other.factor(t - n),
                        n + other.total_steps, f"{self.name}.then({other.name})", {})

    # ------------------------------------------------------------- basic shapes
    @staticmethod
    def constant(value: float, total_steps: int) -> "Schedule":
        """``f(t) = value``."""
        value = float(value)
        return Schedule(lambda t: value, total_steps, "constant", {"value": value})

    @staticmethod
    def linear(start: float, end: float, total_steps: int) -> "Schedule":
        """``f(t) = start + (end - start) * t / T``: reaches ``end`` at t = T, i.e. on the
        first step of whatever follows (so a warm-up from 0 hands over at its peak)."""
        start, end, n = float(start), float(end), int(total_steps)
        return Schedule(lambda t: start + (end - start) * t / n, n, "linear",
                        {"start": start, "end": end})

    @staticmethod
    def cosine(start: float, end: float, total_steps: int) -> "Schedule":
        """``f(t) = end + (start - end) * (1 + cos(pi t / T)) / 2``."""
        start, end, n = float(start), float(end), int(total_steps)
        return Schedule(lambda t: end + (start - end) * (1 + math.cos(math.pi * t / n)) / 2,
                        n, "cosine", {"start": start, "end": end})


# ----------------------------------------------------------------------------------
# Named schedules. Each builder takes (total_steps, steps_per_epoch, **its kwargs); the
# kwargs' names are the accepted ones (read by make_schedule to validate and list them).


def _epochs_to_steps(value: float, steps_per_epoch: Optional[int], what: str) -> int:
    if steps_per_epoch is None:
        raise ValueError(f"{what} is given in epochs: pass steps_per_epoch to make_schedule")
    steps = int(round(float(value) * steps_per_epoch))
    if steps < 1:
        raise ValueError(f"{what}={value!r} epochs is less than one step "
                         f"(steps_per_epoch={steps_per_epoch})")
    return steps


def _check_factor(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return value


def _cos_between(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct = 0) to ``end`` (pct = 1), as torch's OneCycleLR."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def constant(total_steps: int, steps_per_epoch: Optional[int] = None, value: float = 1.0):
    """``f(t) = value`` (1 by default: the base lr throughout)."""
    return Schedule.constant(value, total_steps)


def step(total_steps: int, steps_per_epoch: Optional[int] = None, step_size: float = None,
         gamma: float = 0.1):
    """``f(t) = gamma ** floor(t / (step_size * E))`` (step_size in epochs)."""
    if step_size is None:
        raise ValueError("schedule 'step' needs step_size (epochs between decays)")
    size = _epochs_to_steps(step_size, steps_per_epoch, "step_size")
    gamma = float(gamma)
    return Schedule(lambda t: gamma ** (t // size), total_steps, "step",
                    {"step_size": step_size, "gamma": gamma})


def multistep(total_steps: int, steps_per_epoch: Optional[int] = None,
              milestones: Sequence[float] = None, gamma: float = 0.1):
    """``f(t) = gamma ** #{i : t >= milestones[i] * E}`` (milestones in epochs)."""
    if milestones is None:
        raise ValueError("schedule 'multistep' needs milestones (a list of epochs)")
    marks = [_epochs_to_steps(m, steps_per_epoch, "milestones") for m in milestones]
    if marks != sorted(marks):
        raise ValueError(f"milestones must be increasing, got {list(milestones)}")
    gamma = float(gamma)
    return Schedule(lambda t: gamma ** bisect.bisect_right(marks, t), total_steps,
                    "multistep", {"milestones": list(milestones), "gamma": gamma})


def cosine(total_steps: int, steps_per_epoch: Optional[int] = None,
           eta_min_factor: float = 0.0):
    """``f(t) = m + (1 - m) * (1 + cos(pi t / T)) / 2`` (torch's CosineAnnealingLR, T_max = T)."""
    m = _check_factor(eta_min_factor, "eta_min_factor")
    sched = Schedule.cosine(1.0, m, total_steps)
    return Schedule(sched.factor, total_steps, "cosine", {"eta_min_factor": m})


def linear(total_steps: int, steps_per_epoch: Optional[int] = None, end_factor: float = 0.0):
    """``f(t) = 1 + (end_factor - 1) * t / T`` (linear decay towards ``end_factor``)."""
    e = _check_factor(end_factor, "end_factor")
    sched = Schedule.linear(1.0, e, total_steps)
    return Schedule(sched.factor, total_steps, "linear", {"end_factor": e})


def onecycle(total_steps: int, steps_per_epoch: Optional[int] = None, pct_start: float = 0.3,
             div_factor: float = 25.0, final_div_factor: float = 1e4):
    """One-cycle policy with cosine annealing, as torch's OneCycleLR (base lr = max lr).

    With ``a = pct_start * T - 1``, ``f0 = 1 / div_factor``, ``f_min = f0 / final_div_factor``:
    ``t <= a``: ``f(t) = cos_between(f0, 1, t / a)``;
    ``t > a``:  ``f(t) = cos_between(1, f_min, (t - a) / (T - 1 - a))``,
    where ``cos_between(x, y, p) = y + (x - y) (1 + cos(pi p)) / 2``.
    Unlike torch's default, momentum is not cycled.
    """
    pct_start, div_factor, final_div_factor = float(pct_start), float(div_factor), float(
        final_div_factor)
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
    if div_factor <= 0 or final_div_factor <= 0:
        raise ValueError("div_factor and final_div_factor must be positive")
    f0 = 1.0 / div_factor
    f_min = f0 / final_div_factor
    peak = pct_start * total_steps - 1.0
    end = total_steps - 1.0

    def fn(t: int) -> float:
        if t <= peak:  # peak <= 0 only for tiny T: then the warm-up phase is empty
            return _cos_between(f0, 1.0, t / peak if peak > 0 else 1.0)
        return _cos_between(1.0, f_min, (t - peak) / (end - peak) if end > peak else 1.0)

    return Schedule(fn, total_steps, "onecycle",
                    {"pct_start": pct_start, "div_factor": div_factor,
                     "final_div_factor": final_div_factor})


def cosine_restarts(total_steps: int, steps_per_epoch: Optional[int] = None,
                    T_0: float = None, T_mult: int = 1, eta_min_factor: float = 0.0):
    """SGDR (Loshchilov & Hutter), per iteration as torch's CosineAnnealingWarmRestarts.

    Cycle i lasts ``T_i = T_0 * E * T_mult**i`` steps (T_0 in epochs); with ``t_cur`` the
    steps since the last restart: ``f(t) = m + (1 - m) * (1 + cos(pi t_cur / T_i)) / 2``.
    """
    if T_0 is None:
        raise ValueError("schedule 'cosine_restarts' needs T_0 (epochs of the first cycle)")
    first = _epochs_to_steps(T_0, steps_per_epoch, "T_0")
    if int(T_mult) != T_mult or T_mult < 1:
        raise ValueError(f"T_mult must be an integer >= 1, got {T_mult!r}")
    mult = int(T_mult)
    m = _check_factor(eta_min_factor, "eta_min_factor")

    def fn(t: int) -> float:
        length = first
        if mult == 1:
            t = t % first
        else:  # cycles grow geometrically, so this loop runs O(log t) times
            while t >= length:
                t -= length
                length *= mult
        return m + (1 - m) * (1 + math.cos(math.pi * t / length)) / 2

    return Schedule(fn, total_steps, "cosine_restarts",
                    {"T_0": T_0, "T_mult": mult, "eta_min_factor": m})


SCHEDULES: Dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step": step,
    "multistep": multistep,
    "cosine": cosine,
    "onecycle": onecycle,
    "cosine_restarts": cosine_restarts,
    "linear": linear,
}
SCHEDULE_NAMES: Tuple[str, ...] = tuple(SCHEDULES)


def schedule_kwargs(name: str) -> List[str]:
    """The keyword arguments accepted by the named schedule."""
    builder = _builder(name)
    return list(inspect.signature(builder).parameters)[2:]


def _builder(name: str) -> Callable[..., Schedule]:
    if not isinstance(name, str) or name not in SCHEDULES:
        raise UnknownNameError(
            f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULE_NAMES)} "
            "(or pass a Schedule or a function f(step, total_steps) -> factor)")
    return SCHEDULES[name]


def make_schedule(name_or_callable: Union[str, Schedule, Callable[[int, int], float]],
                  total_steps: int, steps_per_epoch: Optional[int] = None,
                  **kwargs: Any) -> Schedule:
    """Build a :class:`Schedule` of ``total_steps`` optimizer steps.

    ``name_or_callable`` is a name from :data:`SCHEDULE_NAMES`, a function
    ``f(step, total_steps) -> factor``, or a ready :class:`Schedule` (returned as is; its
    ``total_steps`` must match). Arguments given in epochs (step_size, milestones, T_0) are
    converted with ``steps_per_epoch``. Unknown names raise ``KeyError`` and unknown or
    missing arguments ``ValueError``, each listing what is accepted.
    """
    if isinstance(name_or_callable, Schedule):
        if kwargs:
            raise ValueError(f"schedule kwargs {sorted(kwargs)} cannot apply to a ready Schedule")
        if name_or_callable.total_steps != int(total_steps):
            raise ValueError(
                f"the given Schedule has total_steps={name_or_callable.total_steps}, but this "
                f"training run takes {total_steps} steps")
        return name_or_callable
    if callable(name_or_callable) and not isinstance(name_or_callable, str):
        if kwargs:
            raise ValueError(f"schedule kwargs {sorted(kwargs)} cannot apply to a function")
        fn, n = name_or_callable, int(total_steps)
        label = getattr(fn, "__qualname__", type(fn).__name__)
        return Schedule(lambda t: fn(t, n), n, "custom", {"function": label})
    builder = _builder(name_or_callable)
    accepted = schedule_kwargs(name_or_callable)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"schedule {name_or_callable!r} got unknown argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}")
    return builder(int(total_steps), steps_per_epoch, **kwargs)


# The schedule arguments given in epochs (the rest are factors or fractions of the run).
EPOCH_ARGUMENTS: Dict[str, Tuple[str, ...]] = {"step": ("step_size",), "multistep": ("milestones",),
                                               "cosine_restarts": ("T_0",)}


def stretched_schedule_kwargs(name: Any, kwargs: Optional[Dict[str, Any]], epochs: int,
                              new_epochs: int) -> Dict[str, Any]:
    """The ``schedule_kwargs`` of schedule ``name`` for a run of ``new_epochs`` instead of
    ``epochs``: every argument given in epochs (:data:`EPOCH_ARGUMENTS`: step_size,
    milestones, T_0) scaled by ``new_epochs / epochs``, so decays happen at the same
    *fractions* of training. This is how Liu et al. (2019, "Rethinking the Value of Network
    Pruning", Sec. 4, and their code's ``--epochs``/``--schedule`` for Scratch-B) extend a
    step schedule: CIFAR decays at 50% and 75% of the new length. Schedules defined on the
    run's length (cosine, linear, onecycle, constant) need nothing."""
    out = dict(kwargs or {})
    if not isinstance(name, str) or epochs == new_epochs:
        return out
    ratio = new_epochs / epochs
    for key in EPOCH_ARGUMENTS.get(name, ()):
        if key in out and out[key] is not None:
            value = out[key]
            out[key] = [m * ratio for m in value] if isinstance(value, (list, tuple)) else value * ratio
    return out


def schedule_from_recipe(recipe: Dict[str, Any]) -> Schedule:
    """Rebuild the schedule a run was trained with from its saved ``recipe`` (see ``fit``).

    Raises ``ValueError`` when the recipe used a custom function, which cannot be rebuilt.
    """
    try:
        name = recipe["schedule"]
        total, per_epoch = recipe["total_steps"], recipe["steps_per_epoch"]
    except KeyError as err:
        raise ValueError(f"the recipe has no {err.args[0]!r} entry; cannot rebuild its "
                         "learning-rate schedule") from None
    if name not in SCHEDULES:
        raise ValueError(f"the recipe's schedule {name!r} is not a named schedule and cannot "
                         f"be rebuilt; named ones: {', '.join(SCHEDULE_NAMES)}")
    return make_schedule(name, total, per_epoch, **dict(recipe.get("schedule_kwargs") or {}))
