"""One wall-clock timer for every latency figure prunekit reports.

``time_interleaved({"dense": f, "sparse": g}, repeats=10)`` calls the callables *in turn*
inside every repeat (dense, sparse, dense, sparse, ...), so a load spike on a shared machine
hits all of them alike, and returns per callable a :class:`Timing`: the seconds of each
repeat, their median and interquartile range. ``paired_ratio(a, b)`` is the median over
repeats of ``a``'s time / ``b``'s time in the *same* repeat: the spike cancels in the ratio.
``time_callable(f)`` is the one-callable case.

Built on ``torch.utils.benchmark``: its clock (which waits for queued accelerator kernels
before reading the time), its ``set_torch_threads`` (the thread count of the measurement,
restored afterwards) and its ``Measurement`` (median and IQR). We do not call
``Timer.timeit`` / ``blocked_autorange`` themselves: ``timeit`` runs at least two untimed
calls before *every* measurement, which would triple the cost of the interleaved repeats of
an expensive forward pass, and ``blocked_autorange`` picks its own number of repeats, which
breaks the repeat-by-repeat pairing. Warm-up is explicit here instead (``warmup`` untimed
rounds, also interleaved).

This is a bottom-layer module: it imports only the standard library and torch. It does not
enter ``torch.inference_mode``; callers that time forward passes wrap the call in it.
"""
from __future__ import annotations

import statistics
import time
import timeit
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec, set_torch_threads
from torch.utils.benchmark.utils.timer import timer as _clock

__all__ = ["Timing", "time_interleaved", "time_callable", "paired_ratio", "CLOCKS"]

# wall: torch.utils.benchmark's clock (waits for queued accelerator kernels); thread: CPU time
# of the calling thread.
CLOCKS = {"wall": _clock, "thread": time.thread_time}


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one callable: ``times`` has one entry per repeat (the mean of the
    repeat's ``number`` calls); ``median`` and ``iqr`` (75th - 25th percentile) summarise them."""

    times: Tuple[float, ...]
    median: float
    iqr: float

    @property
    def repeats(self) -> int:
        return len(self.times)


def time_interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2,
                     number: int = 1, num_threads: Optional[int] = None, clock: str = "wall") -> Dict[str, Timing]:
    """Time the callables side by side; ``{name: Timing}`` in the order of ``fns``.

    Every callable is called ``warmup`` times untimed, then ``repeats`` times ``number`` calls
    timed, the callables taking turns in each round (warm-up rounds included).
    ``num_threads`` is torch's intra-op thread count during the measurement (default: the
    current one). ``clock="thread"`` measures the calling thread's CPU time instead of wall
    time: with one torch thread that is the work itself, which other processes on a shared
    machine do not inflate (with several threads it would miss the workers' time)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if repeats < 1 or number < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, number >= 1, warmup >= 0; got {repeats}, {number}, {warmup}")
    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    # timeit.Timer runs the statement in a tight loop with the garbage collector off, the
    # same machinery torch.utils.benchmark.Timer wraps.
    timers = {name: timeit.Timer("fn()", timer=CLOCKS[clock], globals={"fn": fn}) for name, fn in fns.items()}
    raw: Dict[str, list] = {name: [] for name in fns}
    with set_torch_threads(threads):
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeats):
            for name, t in timers.items():
                raw[name].append(max(t.timeit(number), 1e-9))  # > 0 even for a no-op on a coarse clock
    out = {}
    for name, seconds in raw.items():
        m = Measurement(number_per_run=number, raw_times=seconds,
                        task_spec=TaskSpec(stmt=name, setup="pass", num_threads=threads))
        out[name] = Timing(times=tuple(m.times), median=m.median, iqr=m.iqr)
    return out


def time_callable(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2, number: int = 1,
                  num_threads: Optional[int] = None) -> Timing:
    """:func:`time_interleaved` of a single callable."""
    return time_interleaved({"fn": fn}, repeats, warmup, number, num_threads)["fn"]


def paired_ratio(reference: Timing, other: Timing) -> float:
    """Median over repeats of ``reference`` time / ``other`` time within the same repeat (the
    speedup of ``other`` when both were timed by one :func:`time_interleaved` call)."""
    if reference.repeats != other.repeats:
        raise ValueError(f"paired timings need the same repeats, got {reference.repeats} and {other.repeats}")
    ratios = [r / o for r, o in zip(reference.times, other.times)]
    return statistics.median(ratios)
