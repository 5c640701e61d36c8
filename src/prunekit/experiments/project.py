"""A project folder: where runs, the results database and reports live.

::

    DIR/
      results.sqlite            the results store (SQLite, WAL): an index of the folders
      sweeps/<name>.yaml        each sweep's resolved experiment spec
      runs/<run id>/            one folder per run, named by the hash of its canonical spec
        spec.yaml               the resolved run spec (loads back to the same id)
        checkpoints/<phase>/    fit checkpoints (an interrupted run resumes from them)
        model.pt                the final model (prunekit.artifacts format, with its mask)
        metrics.json            written last: its presence means "done"
        bench.json              the report's measured inference speed (``report --bench``), cached
        error.log               the traceback of the last failure, if any
        .lock                   held (flock) by the process running the run
      report/                   what ``prunekit report`` writes

The files are the truth and the database is an index: a run whose ``metrics.json`` exists is
done whatever the database says, and is (re)ingested when found missing there. A
``metrics.json`` that does not parse (a disk fault, an editor) does not count: the sweep moves
it aside to ``metrics.json.corrupt``, marks the run, and runs it again (from its checkpoints).
A folder kept without its models (e.g. a sweep's records committed to git without the ``.pt``
files) still counts as done; only a run whose model another run needs (the shared dense run of
a one-shot run) is run again, its record moved to ``metrics.json.no-model``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from ..io import atomic_write_json as _atomic_write_json
from ..io import atomic_write_text  # noqa: F401  (re-exported: runner, sweep and report use it from here)
from .store import Store

DB_NAME = "results.sqlite"
METRICS = "metrics.json"
SPEC = "spec.yaml"
MODEL = "model.pt"


def atomic_write_json(path: Union[str, Path], data: Any) -> Path:
    """A run's JSON files (metrics.json, ...): indented, NaN allowed, written atomically."""
    return _atomic_write_json(path, data, indent=1, sort_keys=False, allow_nan=True)


class Project:
    """Paths and locks of one project folder (created on first use)."""

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root)

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def run_folder(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def sweep_file(self, name: str) -> Path:
        return self.root / "sweeps" / f"{name}.yaml"

    def is_done(self, run_id: str) -> bool:
        """A readable ``metrics.json`` exists (see :meth:`corrupt_record` for one that is not)."""
        return (self.run_folder(run_id) / METRICS).is_file() and self.corrupt_record(run_id) is None

    def corrupt_record(self, run_id: str) -> Optional[str]:
        """Why the run's ``metrics.json`` is unusable (None when it is fine or absent)."""
        path = self.run_folder(run_id) / METRICS
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError) as err:
            return f"not valid JSON ({err})"
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            return "not a prunekit run record (no metrics)"
        return None

    def has_model(self, run_id: str) -> bool:
        """Its ``model.pt`` exists (a copied or committed project folder may hold the records only)."""
        return (self.run_folder(run_id) / MODEL).is_file()

    def set_aside(self, run_id: str, suffix: str = ".corrupt") -> Optional[Path]:
        """Move an unusable ``metrics.json`` to ``metrics.json<suffix>`` (so the run counts as
        not done and is rerun); returns the new path, or None when there was nothing to move."""
        path = self.run_folder(run_id) / METRICS
        target = path.with_name(METRICS + suffix)
        try:
            os.replace(path, target)
        except FileNotFoundError:  # a concurrent sweep moved it first
            return None
        return target

    def read_record(self, run_id: str) -> Dict[str, Any]:
        """The ``metrics.json`` record of a finished run."""
        path = self.run_folder(run_id) / METRICS
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"run {run_id} has not finished: no {path}") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is damaged (not valid JSON: {err}); the next sweep moves it "
                             "aside and reruns the run") from None

    def store(self, verify: bool = False):
        """The results store; ``verify`` runs SQLite's quick_check on opening (the sweep's
        reconcile and ``prunekit runs`` do; a run recording its result does not)."""
        return Store(self.db_path, verify=verify)

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        """Hold the run's lock (blocking). The kernel drops it when the process dies, so a
        run left "running" by a killed process is simply picked up by the next one."""
        folder = self.run_folder(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def is_locked(self, run_id: str) -> Optional[bool]:
        """True while some live process runs ``run_id``; None when the folder is absent."""
        path = self.run_folder(run_id) / ".lock"
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
