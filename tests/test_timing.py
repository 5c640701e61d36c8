"""prunekit.timing: correctness only (no assertion on how long anything takes)."""
import pytest
import torch

from prunekit.timing import Timing, paired_ratio, time_callable, time_interleaved


def _counter(calls, name):
    def fn():
        calls.append(name)
        torch.ones(8).sum()
    return fn


def test_time_callable_positive_median_and_repeats():
    t = time_callable(lambda: torch.ones(64).sum(), repeats=5, warmup=1)
    assert isinstance(t, Timing) and t.repeats == 5 and len(t.times) == 5
    assert t.median > 0 and all(x > 0 for x in t.times) and t.iqr >= 0
    assert min(t.times) <= t.median <= max(t.times)


def test_interleaved_calls_each_callable_the_requested_times_in_turn():
    calls = []
    fns = {"a": _counter(calls, "a"), "b": _counter(calls, "b"), "c": _counter(calls, "c")}
    out = time_interleaved(fns, repeats=4, warmup=2, number=3)
    assert list(out) == ["a", "b", "c"] and all(t.repeats == 4 for t in out.values())
    assert calls.count("a") == calls.count("b") == calls.count("c") == 2 + 4 * 3
    # warm-up rounds alternate a, b, c; then every repeat runs `number` calls of a, then b, then c
    assert calls[:6] == ["a", "b", "c"] * 2
    assert calls[6:15] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_num_threads_is_set_during_the_measurement_and_restored():
    before = torch.get_num_threads()
    seen = []
    time_interleaved({"f": lambda: seen.append(torch.get_num_threads())}, repeats=2, warmup=1, num_threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    a = Timing(times=(2.0, 4.0, 9.0), median=4.0, iqr=3.5)
    b = Timing(times=(1.0, 1.0, 3.0), median=1.0, iqr=1.0)
    assert paired_ratio(a, b) == 3.0  # ratios 2, 4, 3
    with pytest.raises(ValueError):
        paired_ratio(a, Timing(times=(1.0,), median=1.0, iqr=0.0))
    with pytest.raises(ValueError):
        time_callable(lambda: None, repeats=0)
