"""Shared helpers for the benchmark scripts: machine facts and writing result sections."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def write_section(name: str, markdown: str, data) -> None:
    """Save ``results/<name>.md`` (a BENCHMARKS.md section) and ``results/<name>.json``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(markdown)


def median(xs):
    return statistics.median(xs)


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
