"""Rebuild a project's results store from its folders (``prunekit runs DIR --repair``).

The run folders are the truth and ``results.sqlite`` is an index of them (see
:mod:`.project`), so a damaged store is rebuilt, not patched: the old file (and its WAL
files) is moved aside to ``results.sqlite.damaged-<time>``, a fresh store is created, every
sweep in ``sweeps/*.yaml`` is registered again, and every run folder with a ``spec.yaml`` is
recorded: done with its numbers when its ``metrics.json`` reads back, interrupted (it
resumes from its checkpoints at the next sweep) otherwise. Run it while no sweep is running
in the folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from .project import Project
from .spec import RunSpec, Sweep
from .sweep_plan import plan


@dataclass
class RepairSummary:
    moved: Optional[Path]
    sweeps: int = 0
    done: int = 0
    unfinished: int = 0
    skipped: List[str] = field(default_factory=list)  # folders that could not be read

    def line(self) -> str:
        head = f"old store moved to {self.moved}; " if self.moved is not None else ""
        tail = f"; {len(self.skipped)} unreadable folders left out" if self.skipped else ""
        return (f"{head}rebuilt from the folders: {self.sweeps} sweeps, {self.done} finished runs, "
                f"{self.unfinished} unfinished runs{tail}")


def repair_store(root: Union[str, Path]) -> RepairSummary:
    """Move the store of project ``root`` aside and rebuild it from the folders."""
    project = Project(root)
    if not project.root.is_dir():
        raise FileNotFoundError(f"no project folder {project.root}")
    db = project.db_path
    moved = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        path = db.with_name(db.name + suffix)
        if path.exists():
            target = db.with_name(f"{db.name}.damaged-{stamp}{suffix}")
            os.replace(path, target)
            moved = moved or target
    summary = RepairSummary(moved)
    with project.store() as store:
        for path in sorted((project.root / "sweeps").glob("*.yaml")):
            try:
                sweep = Sweep.from_yaml(path)
            except (ValueError, KeyError) as err:
                summary.skipped.append(f"{path}: {err}")
                continue
            store.register_sweep(sweep.name, sweep.to_dict(), sweep.points[0].to_dict(), plan(sweep))
            summary.sweeps += 1
        for folder in sorted((project.root / "runs").glob("*/")):
            spec_file = folder / "spec.yaml"
            if not spec_file.is_file():
                continue
            try:
                spec = RunSpec.from_yaml(spec_file)
            except (ValueError, KeyError) as err:
                summary.skipped.append(f"{spec_file}: {err}")
                continue
            if spec.id != folder.name:
                summary.skipped.append(f"{spec_file}: describes run {spec.id}, not {folder.name}")
                continue
            if project.is_done(spec.id):
                store.finish(spec, project.read_record(spec.id))
                summary.done += 1
            else:
                why = project.corrupt_record(spec.id)
                store.add(spec, "interrupted", f"its metrics.json is damaged ({why})" if why else
                          "found unfinished by --repair; it resumes from its last checkpoint")
                summary.unfinished += 1
    return summary
