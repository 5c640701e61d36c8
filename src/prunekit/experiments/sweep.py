"""Sweeps: expand an experiment's grid into runs, and run what is not done, in parallel.

``plan(sweep)`` lists every run: each grid point's main runs (one per seed), their
baselines, and what they require (the shared dense runs), each once, requirements first.
``run_sweep(root, sweep, workers)`` records the plan in the store, skips finished runs,
and executes the others, a run only once everything it requires is done. With ``workers > 1``
the runs go to a pool of spawned processes, each with ``cores // workers`` torch threads (on
this 2-core machine two workers gain little over one: the cores are the limit, not Python).
``executor="ray"`` runs each run as a task on a Ray cluster instead, the driver alone writing
the store (see :mod:`.ray_executor`; Ray is imported only then).

Robustness: every run holds a file lock while it runs and writes its "done" marker last (see
:mod:`.runner`), so killing a sweep at any moment and starting it again finishes the work
with every run present once; runs the killed sweep left "running" resume from their last
checkpoint.

Stopping: SIGINT or SIGTERM (``prunekit`` turns SIGTERM into the same exception) stops the
pool's workers, waits for them, and marks the runs they held "interrupted" before the
exception goes on. A SIGKILL of the sweep cannot be caught: each worker asks the kernel for
SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux; a watchdog thread
elsewhere), so no worker outlives the sweep either way.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
from tqdm import tqdm

from .. import distributed
from ..io import StorageError, check_writable
from .project import METRICS, Project, atomic_write_text
from .ray_executor import import_ray, run_ray
from .runner import FAILED, Outcome, execute
from .spec import ExperimentSpec, RunSpec, Sweep
# The plan (and which planned runs can start) is shared with the Ray executor, so it lives
# below both; its names stay importable from here.
from .sweep_plan import PlannedRun, as_sweep, plan, take_ready  # noqa: F401 (plan is re-exported)

EXECUTORS = ("process", "ray")


@dataclass
class SweepSummary:
    name: str
    total: int
    skipped: int = 0
    ran: int = 0
    failed: List[Outcome] = field(default_factory=list)
    blocked: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        text = (f"sweep {self.name}: {self.total} runs, {self.skipped} already done, {self.ran} ran, "
                f"{len(self.failed)} failed, {len(self.blocked)} blocked ({self.seconds:.1f} s)")
        return text


def threads_per_worker(workers: int) -> int:
    cores = int(os.environ.get("PRUNEKIT_THREADS", os.cpu_count() or 1))
    return max(1, cores // max(1, workers))


PR_SET_PDEATHSIG = 1  # linux/prctl.h
INTERRUPTED = "the sweep was stopped while it ran; it resumes from its last checkpoint"


def _init_worker(threads: int, parent: Optional[int] = None) -> None:
    if parent is not None:
        die_with_parent(parent)
    torch.set_num_threads(threads)


def die_with_parent(parent: int) -> None:
    """End this process when process ``parent`` (its parent) ends, however it ends."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            ok = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            ok = False
        if ok:
            if os.getppid() != parent:  # the parent died before the prctl took effect
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), name="prunekit-parent-watchdog",
                     daemon=True).start()


def _watch_parent(parent: int) -> None:
    # Where there is no parent-death signal: a re-parented process has another parent id.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _execute_in_worker(root: str, spec_dict: dict) -> Outcome:
    # Specs cross the process boundary as plain data and are re-validated on arrival.
    spec = RunSpec.from_dict(spec_dict)
    try:
        return execute(root, spec, progress=False)
    except StorageError:  # the parent stops the sweep with it (one line, exit 2)
        raise
    except Exception as err:  # e.g. a store error; execute records pipeline errors itself
        return Outcome(spec.id, "failed", spec.label, spec.seed, spec.requested_sparsity,
                       error=f"{type(err).__name__}: {err}")


def run_sweep(root: Union[str, Path], sweep: Union[Sweep, ExperimentSpec], workers: int = 1, quiet: bool = False,
              fit_progress: Optional[bool] = False, echo: Optional[Callable[[str], None]] = None,
              executor: str = "process", ray_address: Optional[str] = None, ray_num_cpus: float = 1.0,
              ray_max_retries: int = 3, ray_num_gpus: float = 0.0) -> SweepSummary:
    """Run every run of ``sweep`` (or of one spec) in project folder ``root`` not done yet.

    ``workers``: parallel processes (1: in this process). ``quiet``: no progress bar and no
    per-run lines. ``fit_progress``: per-epoch bars instead of the bar over runs (True, or
    None for "when stderr is a terminal"; used with one worker).
    ``echo``: where per-run lines go (default: ``tqdm.write``).
    ``executor``: "process" (the above) or "ray": each run a Ray task (``workers`` unused;
    ``ray_address``, ``ray_num_cpus`` and ``ray_num_gpus`` per task and ``ray_max_retries``
    after a lost worker go to :func:`.ray_executor.run_ray`).
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if executor == "ray":
        import_ray()  # before any file is written: a missing Ray is a set-up error
    if workers > 1 and distributed.active():
        raise ValueError("--workers > 1 cannot be combined with torchrun: the ranks of one "
                         "job already share each run's training; use one or the other")
    started = time.time()
    project = Project(root)
    check_writable(project.root)  # a full disk or a read-only folder: before any work
    project.root.mkdir(parents=True, exist_ok=True)
    sweep = as_sweep(sweep)
    planned = plan(sweep)
    # Under torchrun rank 0 alone writes; the others take its list of finished runs.
    if distributed.is_main():
        atomic_write_text(project.sweep_file(sweep.name), sweep.to_yaml())
    done = distributed.broadcast_object(_reconcile(project, sweep, planned) if distributed.is_main() else None)
    summary = SweepSummary(sweep.name, len(planned), skipped=len(done))
    # One kind of bar at a time: per-epoch bars (``prunekit run``) or one bar over the runs.
    bar = tqdm(total=len(planned), initial=len(done), unit="run", desc=sweep.name,
               disable=True if quiet or fit_progress is not False or not distributed.is_main() else None,
               dynamic_ncols=True)
    say = (lambda text: None) if quiet or not distributed.is_main() else (echo or bar.write)
    failed: Dict[str, Outcome] = {}
    blocked: Dict[str, str] = {}

    def settle(outcome: Outcome) -> None:
        bar.update(1)
        say(outcome.line())
        if outcome.status in FAILED:
            failed[outcome.id] = outcome
            summary.failed.append(outcome)
        else:
            done.add(outcome.id)
            summary.ran += outcome.status == "done"
            summary.skipped += outcome.status == "skipped"

    def stuck(item: PlannedRun) -> Optional[str]:
        for dep in item.requires:
            if dep in failed or dep in blocked:
                return dep
        return None

    def block(item: PlannedRun, dep: str) -> None:
        blocked[item.spec.id] = dep
        summary.blocked.append(item.spec.id)
        bar.update(1)
        if distributed.is_main():
            with project.store() as store:
                store.set_status([item.spec.id], "blocked", f"requires {dep}, which did not finish")
        say(f"blocked  {item.spec.label} seed={item.spec.seed}: requires {dep}, which did not finish")

    queue = [p for p in planned if p.spec.id not in done]
    try:
        if executor == "ray":
            run_ray(project, queue, done, stuck, block, settle, address=ray_address, num_cpus=ray_num_cpus,
                    max_retries=ray_max_retries, num_gpus=ray_num_gpus)
        elif workers == 1:
            for item in queue:
                dep = stuck(item)
                if dep is not None:
                    block(item, dep)
                    continue
                try:
                    settle(execute(project.root, item.spec, progress=fit_progress))
                except (KeyboardInterrupt, StorageError):  # SIGINT/SIGTERM, or a full disk
                    mark_interrupted(project, [item.spec.id])
                    raise
        else:
            _run_pool(project, queue, workers, done, stuck, block, settle)
    finally:
        bar.close()
    summary.seconds = time.time() - started
    return summary


def _run_pool(project: Project, queue: List[PlannedRun], workers: int, done: set, stuck, block, settle) -> None:
    """Dispatch runs to ``workers`` spawned processes, each as soon as its requirements are
    done; at most ``workers`` in flight, so the plan's order is the priority."""
    context = get_context("spawn")  # fork would copy torch's thread pools and locks
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads_per_worker(workers), os.getpid()))
    running = {}
    try:
        while queue or running:
            for item in take_ready(queue, workers - len(running), done, stuck, block):
                running[pool.submit(_execute_in_worker, str(project.root), item.spec.to_dict())] = item
            if not running:
                break  # nothing can start (cannot happen with a valid plan)
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                item = running.pop(future)
                try:
                    outcome = future.result()
                except StorageError:  # a full or read-only disk: stop (the runs resume later)
                    running[future] = item  # marked interrupted with the others below
                    raise
                except Exception as err:  # the worker process died (e.g. out of memory)
                    spec = item.spec
                    outcome = Outcome(spec.id, "failed", spec.label, spec.seed, spec.requested_sparsity,
                                      error=f"worker died: {type(err).__name__}: {err}")
                settle(outcome)
    except BaseException:  # SIGINT / SIGTERM (or a bug): stop the workers, then go on failing
        stop_pool(pool)
        mark_interrupted(project, [item.spec.id for item in running.values()])
        raise
    pool.shutdown(wait=True)


def stop_pool(pool: ProcessPoolExecutor, grace: float = 10.0) -> None:
    """Terminate the pool's workers (SIGTERM, then SIGKILL after ``grace`` seconds) and reap
    them, so none is left behind; queued work is cancelled."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        process.join(grace)
        if process.is_alive():
            process.kill()
            process.join()
    pool.shutdown(wait=True, cancel_futures=True)


def mark_interrupted(project: Project, run_ids: List[str]) -> None:
    """Record that the runs ``run_ids`` were stopped (best effort: the sweep is ending)."""
    if not run_ids or not distributed.is_main():
        return
    with contextlib.suppress(Exception):
        with project.store() as store:
            store.set_status([r for r in run_ids if not project.is_done(r)], "interrupted", INTERRUPTED)


def _reconcile(project: Project, sweep: Sweep, planned: List[PlannedRun]) -> set:
    """Register the sweep and bring the store in line with the folders; return the done ids.

    Finished folders missing from the store (a kill between the two writes) are ingested;
    rows left "running" by a process that no longer holds the run's lock become
    "interrupted" (the run will resume from its checkpoint).
    """
    done = set()
    with project.store(verify=True) as store:
        store.register_sweep(sweep.name, sweep.to_dict(), sweep.points[0].to_dict(), planned)
        status = {row["id"]: row["status"] for row in store.runs(sweep=sweep.name)}
        stale = []
        for item in planned:
            run_id = item.spec.id
            why = project.corrupt_record(run_id)
            if why is not None and project.set_aside(run_id) is not None:
                store.fail(run_id, f"its metrics.json was damaged ({why}); moved to metrics.json.corrupt "
                                   "and run again", status="interrupted")
            # corrupt_record just parsed the file: a readable record is there or none is
            if why is None and (project.run_folder(run_id) / METRICS).is_file():
                done.add(run_id)
                if status.get(run_id) != "done":
                    store.finish(item.spec, project.read_record(run_id))
            elif status.get(run_id) == "running" and not project.is_locked(run_id):
                stale.append(run_id)
        if stale:
            store.set_status(stale, "interrupted", "its process stopped; it resumes from its last checkpoint")
    return done
