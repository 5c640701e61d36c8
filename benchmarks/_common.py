"""Shared helpers for the benchmark scripts: machine facts, mean +- std, writing result sections."""
from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from prunekit.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts() -> dict:
    """What a timing depends on: CPU model, cores, torch version and the 1-minute load average."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "load": round(os.getloadavg()[0], 2)}


def write_section(name: str, markdown: str, data) -> None:
    """Save ``results/<name>.md`` (a BENCHMARKS.md section) and ``results/<name>.json``, atomically."""
    atomic_write_text(RESULTS / f"{name}.md", markdown.rstrip() + "\n")
    atomic_write_json(RESULTS / f"{name}.json", data, indent=2)
    print(markdown)


def median(xs):
    return statistics.median(xs)


def mean_std(xs, fmt: str = "{:.2f}", empty: str = "n/a", single_suffix: str = "") -> str:
    """``"mean +- std"`` (sample std) of the values in ``xs`` that are not None, each formatted
    with ``fmt``; ``empty`` when there is none, the one value (plus ``single_suffix``) when
    there is one."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return empty
    if len(xs) == 1:
        return fmt.format(xs[0]) + single_suffix
    return f"{fmt.format(statistics.mean(xs))} +- {fmt.format(statistics.stdev(xs))}"


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
