"""Experiments: YAML specs, sweeps with a results database, resume, reports and plots.

    from prunekit.experiments import Sweep, run_sweep, write_report
    spec = Sweep.from_yaml("examples/quick_sweep.yaml")    # grid points x seeds
    run_sweep("runs", spec, workers=1)          # skips what is done, resumes what was cut
    write_report("runs")                        # runs/report/report.md and report.html

Modules, each small: ``schema`` (dataclasses <-> YAML with key paths), ``spec`` (the spec
dataclasses, grid expansion, canonical hashing into run ids), ``project`` (folder layout,
locks, atomic writes), ``store`` (SQLite results database), ``context`` (what a pipeline
receives), ``runner`` (one run), ``sweep`` (plan + workers), ``report`` and ``plots``.
Pipelines and baselines plug in through ``prunekit.pipelines.PIPELINES`` / ``BASELINES``.

Names are imported lazily: ``import prunekit.experiments`` loads no submodule until a name is
used. (``store`` imports ``prunekit.io`` for its one-line disk errors, and with it torch.)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExperimentSpec": "spec", "RunSpec": "spec", "DataSpec": "spec", "ModelSpec": "spec",
    "TrainSpec": "spec", "MethodSpec": "spec", "BaselineSpec": "spec", "Sweep": "spec", "SpecError": "schema",
    "Project": "project", "Store": "store", "execute": "runner", "Outcome": "runner",
    "plan": "sweep", "run_sweep": "sweep", "write_report": "report", "repair_store": "repair",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
