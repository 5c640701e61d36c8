"""The plan of a sweep: every run it needs, in an order that puts requirements first, and
which planned runs can start now. Shared by the process executor (``sweep``) and the Ray
executor (``ray_executor``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Union

from .spec import ExperimentSpec, RunSpec, Sweep

ROLE_RANK = {"dependency": 0, "baseline": 1, "main": 2}


@dataclass
class PlannedRun:
    """One run of a sweep: its spec, why it is there, and the ids it waits for."""

    spec: RunSpec
    role: str  # main, baseline or dependency
    requires: List[str] = field(default_factory=list)


def plan(sweep: Union[Sweep, ExperimentSpec]) -> List[PlannedRun]:
    """Every run of ``sweep``, deduplicated by id, requirements before dependents."""
    sweep = as_sweep(sweep)
    runs: Dict[str, PlannedRun] = {}

    def add(spec: RunSpec, role: str) -> None:
        known = runs.get(spec.id)
        if known is not None:
            if ROLE_RANK[role] > ROLE_RANK[known.role]:
                known.role = role
            return
        requires = spec.requirements()
        for dep in requires:
            add(dep, "dependency")
        runs[spec.id] = PlannedRun(spec, role, [dep.id for dep in requires])

    for point in sweep.points:
        for main in point.run_specs():
            add(main, "main")
            for baseline in point.baseline_specs(main):
                add(baseline, "baseline")
    return list(runs.values())


def as_sweep(spec: Union[Sweep, ExperimentSpec]) -> Sweep:
    """A sweep as it is: one experiment spec as a sweep of one point."""
    return spec if isinstance(spec, Sweep) else Sweep.of(spec)


def take_ready(queue: List[PlannedRun], slots: int, done: set, stuck, block) -> List[PlannedRun]:
    """Remove from ``queue`` and return the runs that can start now (every requirement done),
    at most ``slots``, in plan order; runs whose requirement failed are removed and blocked."""
    ready = []
    for item in list(queue):
        dep = stuck(item)
        if dep is not None:
            queue.remove(item)
            block(item, dep)
        elif len(ready) < slots and all(d in done for d in item.requires):
            queue.remove(item)
            ready.append(item)
    return ready
