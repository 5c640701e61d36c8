"""Sweeps on a Ray cluster: each run is a Ray task; the driver alone writes the results store.

``run_sweep(..., executor="ray")`` hands the runs that :func:`.sweep.run_sweep` left to do to
:func:`run_ray`, which submits each one as a task as soon as the runs it requires are done
(the same order and blocking rules as the process executor), at most as many at a time as
the cluster has CPUs for (so the plan's order is the priority and a row marked "running" is
running, or about to).

Why the driver writes the store: SQLite's locking does not work across the hosts of a
network filesystem, and a WAL database needs shared memory on one machine. So a task opens
no store (it runs ``execute(..., store_writes=False)`` with ``PRUNEKIT_NO_STORE`` set, which
makes ``Store()`` raise should anything try); it returns the run's :class:`~.runner.Outcome`
with the full record, and the driver marks the run started when it submits it and writes its
rows (or its failure) when the result comes back.

Files: a task writes its run folder itself (``spec.yaml``, ``checkpoints/``, ``model.pt``,
``metrics.json``, ``error.log``), so the project folder is assumed to be on a filesystem that
every node and the driver share, at the same path. When the driver does not see a finished
run's ``metrics.json`` (folders not shared), it writes ``spec.yaml`` and ``metrics.json`` from
the returned record, so the store, ``prunekit runs`` and reports are complete and a rerun skips
the run; ``model.pt`` and the checkpoints then stay on the worker's disk, and a run that
requires another (a baseline needing its dense run) finds that run's folder only if it lands
on the same node (else it trains the requirement again there, deterministically).

Failures: a task killed with its worker (node lost, OOM, SIGKILL) is retried by Ray up to
``max_retries`` times; the retry takes the run's lock and its ``fit`` calls resume from the
per-epoch checkpoints in the run folder, so only the epoch in progress is lost. A run whose
pipeline raises is not retried (it would fail alike): the task returns a "failed" outcome and
the driver records it; so it does for a task that died on every attempt. Either way the sweep
goes on, and what requires the failed run is marked blocked.

Ray is imported only here, and only when this executor runs: ``import prunekit`` and the
process executor never import it. Workers need prunekit (and torch) installed at the same
versions as the driver.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from .project import METRICS, SPEC, Project, atomic_write_json, atomic_write_text
from .runner import Outcome, execute
from .spec import RunSpec
from .store import NO_STORE_ENV, Store
from .sweep_plan import take_ready

INSTALL_HINT = "pip install 'prunekit[ray]'"
# Environment the driver hands to each task (a remote node does not inherit the driver's).
FORWARDED_ENV = ("PRUNEKIT_DEVICE", "PRUNEKIT_DATA", "PRUNEKIT_PRECISION", "PRUNEKIT_CHANNELS_LAST",
                 "PRUNEKIT_COMPILE")


def import_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"the Ray executor needs Ray, which is not installed here: {INSTALL_HINT}") from err
    return ray


def run_task(root: str, spec_dict: Dict[str, Any], threads: int, env: Dict[str, str]) -> Outcome:
    """The body of one run's Ray task (``ray.remote`` wraps it when the sweep starts, so that
    importing this module needs no Ray). Runs the spec in its folder without opening the
    store and returns the outcome with its record for the driver to write."""
    os.environ.update(env)
    os.environ[NO_STORE_ENV] = "1"  # this worker process never opens the database

    torch.set_num_threads(threads)
    spec = RunSpec.from_dict(spec_dict)  # crosses the boundary as plain data, re-validated here
    return execute(root, spec, progress=False, store_writes=False)


def record_outcome(project: Project, store: Store, spec: RunSpec, outcome: Outcome) -> Outcome:
    """Write what a task reported: the run's rows (and its files when the driver does not see
    them: an unshared project folder), or its failure. Returns the outcome without its record
    (the summary keeps outcomes; records can be large)."""
    if outcome.status in ("done", "skipped") and outcome.record is not None:
        record = outcome.record
        if not project.is_done(spec.id):
            folder = project.run_folder(spec.id)
            if not (folder / SPEC).exists():
                atomic_write_text(folder / SPEC, f"# prunekit run {spec.id}\n# sha256 of the canonical spec: "
                                  f"{spec.digest}\n" + spec.to_yaml())
            atomic_write_json(folder / METRICS, record)
        store.finish(spec, record)
    else:
        store.fail(spec.id, outcome.error or "failed without an error message",
                   status="diverged" if outcome.status == "diverged" else "failed")
    outcome.record = None
    return outcome


def _capacity(ray, num_cpus: float, num_gpus: float = 0.0) -> int:
    """How many tasks of ``num_cpus`` CPUs (and ``num_gpus`` GPUs) the cluster holds now (read
    each round: an autoscaling cluster grows)."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 0.0))
    slots = max(1, int(cpus // num_cpus)) if num_cpus > 0 else max(1, int(cpus))
    if num_gpus > 0:
        slots = min(slots, max(1, int(float(resources.get("GPU", 0.0)) // num_gpus)))
    return slots


def run_ray(project: Project, queue: List, done: set, stuck: Callable, block: Callable, settle: Callable,
            address: Optional[str] = None, num_cpus: float = 1.0, max_retries: int = 3,
            num_gpus: float = 0.0) -> None:
    """Run the planned runs in ``queue`` as Ray tasks (see the module docstring).

    ``address``: the cluster to join (``ray.init(address=...)``: "auto", "HOST:PORT", or
    "ray://HOST:10001" with Ray Client); None starts a local Ray unless one is initialized
    already (then that one is used, and left running). ``num_cpus``: CPUs each task reserves
    (and its torch threads). ``num_gpus``: GPUs each task reserves (Ray sets the task's
    ``CUDA_VISIBLE_DEVICES``; run with ``--device auto`` or ``cuda`` so training uses it).
    ``max_retries``: attempts after a worker died.
    ``done``, ``stuck``, ``block`` and ``settle`` are :func:`.sweep.run_sweep`'s bookkeeping.
    """
    if not num_cpus > 0:
        raise ValueError(f"num_cpus per Ray task must be positive, got {num_cpus!r}")
    if not num_gpus >= 0:
        raise ValueError(f"num_gpus per Ray task must be >= 0, got {num_gpus!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be a non-negative integer, got {max_retries!r}")
    ray = import_ray()
    owned = not ray.is_initialized()
    if owned:
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
    try:
        task = ray.remote(run_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                            retry_exceptions=False)
        threads = max(1, int(num_cpus))
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        root = str(project.root.resolve())  # workers do not run in the driver's directory
        running: Dict[Any, Any] = {}
        with project.store() as store, _interruptible(ray, store, running):
            while queue or running:
                slots = _capacity(ray, num_cpus, num_gpus) - len(running)
                for item in take_ready(queue, slots, done, stuck, block):
                    store.start(item.spec)
                    running[task.remote(root, item.spec.to_dict(), threads, env)] = item
                if not running:
                    break  # nothing can start (cannot happen with a valid plan)
                finished, _ = ray.wait(list(running), num_returns=1)
                for ref in finished:
                    item = running.pop(ref)
                    spec = item.spec
                    try:
                        outcome = ray.get(ref)
                    except Exception as err:
                        if isinstance(err, ray.exceptions.RayTaskError):  # raised outside the pipeline
                            why = f"Ray task raised: {_first_line(err)}"
                        else:  # its worker died on each of the 1 + max_retries attempts
                            why = f"Ray task lost after {max_retries + 1} attempts: {type(err).__name__}: {_first_line(err)}"
                        outcome = Outcome(spec.id, "failed", spec.label, spec.seed, spec.requested_sparsity, error=why)
                    settle(record_outcome(project, store, spec, outcome))
    finally:
        if owned:
            ray.shutdown()


@contextlib.contextmanager
def _interruptible(ray, store: Store, running: Dict[Any, Any]) -> Iterator[None]:
    """On SIGINT / SIGTERM (or any error) cancel the tasks in flight (their workers are
    killed) and mark their runs interrupted; they resume from their checkpoints."""
    try:
        yield
    except BaseException:
        for ref in list(running):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        with contextlib.suppress(Exception):
            store.set_status([item.spec.id for item in running.values()], "interrupted",
                             "the sweep was stopped while it ran; it resumes from its last checkpoint")
        raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else ""
