"""Run one :class:`RunSpec` in its folder: skip it when done, resume it when interrupted.

``execute(root, spec)`` is the whole life of a run:

1. take the run's lock (a concurrent process running the same id makes us wait, then skip);
2. done already (``metrics.json`` exists)? make sure the store has it, and return;
3. write ``spec.yaml``, mark the run running, call the pipeline (or baseline) with a
   :class:`Context`; its ``fit`` calls resume from their checkpoints;
4. evaluate the final model, count parameters / FLOPs per layer, save ``model.pt``, then
   ``metrics.json`` (atomically, last: the "done" marker), then the store rows (one
   transaction).

A SIGKILL at any point leaves either no ``metrics.json`` (the next attempt resumes from the
last checkpoint) or a complete one (the next attempt only re-ingests it).

Under torchrun (:mod:`prunekit.distributed`) rank 0 does all of the above; the other ranks
only run the pipeline beside it (they must join its collectives: gradient averaging, mask
broadcasts) in :func:`_follow`, write nothing, take no lock, open no store, and return rank
0's :class:`Outcome`, which rank 0 broadcasts once its files and rows are written.
"""
from __future__ import annotations

import contextlib
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from .. import distributed
from ..artifacts import save_model
from ..core.accounting import report
from ..io import StorageError
from ..training import DivergedError, evaluate
from ..pipelines.results import PipelineResult
from .context import Context
from .project import MODEL, METRICS, SPEC, Project, atomic_write_json, atomic_write_text
from .spec import RunSpec

RECORD_FORMAT = "prunekit.run/1"
FAILED = ("failed", "diverged")  # outcomes without a result


@dataclass
class Outcome:
    """What happened to a run: status is "done" (ran now), "skipped" (was done), "failed", or
    "diverged" (training stopped on a NaN/infinite loss or weight: a failure with a cause)."""

    id: str
    status: str
    label: str
    seed: int
    requested_sparsity: Optional[float]
    metrics: Optional[Dict[str, Any]] = None
    elapsed: float = 0.0
    error: Optional[str] = None
    # The run's metrics.json record (done or skipped): what a caller that writes the store
    # itself (``execute(..., store_writes=False)``) needs for ``Store.finish``.
    record: Optional[Dict[str, Any]] = None

    def line(self) -> str:
        """One line for the terminal."""
        s = self.requested_sparsity
        head = f"{self.status:>7}  {self.label}" + (f" s={s:g}" if s is not None else "") + f" seed={self.seed}"
        if self.status in FAILED:
            return f"{head}: {self.error} [{self.id}]"
        m = self.metrics or {}
        top1 = m.get("top1")
        acc = f"top-1 {top1:.2f}%" if top1 is not None else "top-1 n/a"
        warned = (self.record or {}).get("warnings") or []
        note = f"; {len(warned)} warning(s), first: {warned[0]}" if warned else ""
        return (f"{head}: {acc}, sparsity {m.get('achieved_sparsity', 0):.4f}, "
                f"{m.get('nonzero_params', 0):,} nonzero params ({self.elapsed:.1f} s) [{self.id}]{note}")


def execute(root: Union[str, Path], spec: RunSpec, progress: bool = False, store_writes: bool = True) -> Outcome:
    """Run ``spec`` in project folder ``root`` unless it is done (see the module docstring).

    ``store_writes=False``: open no results store and write no rows (the run folder is
    written as usual); the caller writes the rows from the returned ``Outcome.record`` /
    ``error``. Ray tasks run this way so that their sweep's driver alone writes the database,
    which may sit where workers cannot lock it (SQLite over a network filesystem).
    """
    project = Project(root)
    if not distributed.is_main():
        return _follow(project, spec)
    with project.lock(spec.id):
        with (project.store() if store_writes else _NoStore()) as store:
            if distributed.broadcast_object(project.is_done(spec.id)):  # tells the other ranks
                record = project.read_record(spec.id)
                row = store.run(spec.id)
                if row is None or row["status"] != "done":  # killed between file and store
                    store.finish(spec, record)
                return _outcome(spec, "skipped", record["metrics"], record.get("elapsed") or 0.0, record=record)
            return distributed.broadcast_object(_run(project, store, spec, progress))


class _NoStore:
    """Stands in for the store under ``execute(..., store_writes=False)``: writes nothing."""

    def __enter__(self) -> "_NoStore":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, run_id: str) -> None:
        return None

    def start(self, spec) -> None:
        pass

    def finish(self, spec, record) -> None:
        pass

    def fail(self, run_id: str, error: str, status: str = "failed") -> None:
        pass


def _follow(project: Project, spec: RunSpec) -> Outcome:
    """A rank other than 0: run the pipeline in step with rank 0 (which decides whether the
    run is done already), write nothing, and return rank 0's outcome."""
    if distributed.broadcast_object(None):
        record = project.read_record(spec.id)  # rank 0 found it done: nothing to join
        return _outcome(spec, "skipped", record["metrics"], record.get("elapsed") or 0.0)
    try:
        ctx = Context(project, spec, False, run_required=lambda dep: execute(project.root, dep))
        if spec.baseline is not None:
            spec.baseline.entry.run(ctx, spec.baseline.params, ctx.main_run())
        else:
            spec.method.pipeline.run(ctx, spec.method.params)
    except Exception as err:  # rank 0 records the failure (it fails alike on a bad spec)
        print(f"rank {distributed.rank()}: run {spec.id} failed: {type(err).__name__}: {err}",
              file=sys.stderr)
    return distributed.broadcast_object(None)  # waits until rank 0 has written everything


def _outcome(spec: RunSpec, status: str, metrics=None, elapsed=0.0, error=None, record=None) -> Outcome:
    return Outcome(spec.id, status, spec.label, spec.seed, spec.requested_sparsity, metrics, elapsed, error, record)


def _run(project: Project, store, spec: RunSpec, progress: bool) -> Outcome:
    folder = project.run_folder(spec.id)
    atomic_write_text(folder / SPEC, f"# prunekit run {spec.id}\n# sha256 of the canonical spec: {spec.digest}\n"
                      + spec.to_yaml())
    store.start(spec)
    started = time.time()
    try:
        writes = not isinstance(store, _NoStore)  # a requirement run here writes alike
        ctx = Context(project, spec, progress,
                      run_required=lambda dep: execute(project.root, dep, progress, store_writes=writes))
        with _prunekit_warnings() as warned:
            if spec.baseline is not None:
                result = spec.baseline.entry.run(ctx, spec.baseline.params, ctx.main_run())
            else:
                result = spec.method.pipeline.run(ctx, spec.method.params)
        if not isinstance(result, PipelineResult):
            raise TypeError(f"{spec.label}: the run function returned {type(result).__name__}, "
                            "expected a PipelineResult (use ctx.result(model, mask))")
        record = summarize(ctx, result)
        if warned:
            record["warnings"] = warned
        _save_model(ctx, result, record)
        record["elapsed"] = time.time() - started
        record["finished"] = time.time()
        atomic_write_json(folder / METRICS, record)
    except StorageError:  # a full or read-only disk is not the run's fault: it stops the sweep
        raise
    except Exception as err:  # a failed run is recorded; the sweep goes on with the others
        atomic_write_text(folder / "error.log", traceback.format_exc())
        message = f"{type(err).__name__}: {err.args[0] if isinstance(err, KeyError) and err.args else err}"
        status = "diverged" if isinstance(err, DivergedError) else "failed"
        store.fail(spec.id, message, status=status)
        return _outcome(spec, status, elapsed=time.time() - started, error=message)
    store.finish(spec, record)
    return _outcome(spec, "done", record["metrics"], record["elapsed"], record=record)


@contextlib.contextmanager
def _prunekit_warnings() -> Iterator[List[str]]:
    """Collect the warnings prunekit's own code raises while a run trains ("CollapseWarning:
    training collapsed in epoch 3: ..."), for its record; every warning is still shown as usual
    and the caller's filters apply (an ignored warning is not recorded). A run whose pipeline
    builds a requirement first (a shared dense run) records that run's warnings too."""
    found: List[str] = []
    # catch_warnings restores showwarning and the filters on exit; on entry it marks the filters
    # changed, which clears Python's "already shown" memory, so a warning an earlier run in this
    # process raised from the same line is shown, and recorded, again.
    with warnings.catch_warnings():
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            text = f"{category.__name__}: {message}"
            if category.__module__.startswith("prunekit.") and text not in found:
                found.append(text)
            show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        yield found


def summarize(ctx: Context, result: PipelineResult) -> Dict[str, Any]:
    """The run's record: final accuracy, sizes, per-layer counts, history and trail."""
    spec, model = ctx.spec, result.model
    final = evaluate(model, ctx.test, device=ctx.device)
    shape = getattr(model, "input_shape", None) or (ctx.info.in_channels, *ctx.info.image_size)
    rep = report(model, input_shape=shape)
    requested = result.metrics.get("requested_sparsity", spec.requested_sparsity)
    metrics = {
        "top1": final["top1"], "top5": final["top5"], "loss": final["loss"],
        "requested_sparsity": requested, "achieved_sparsity": rep.sparsity,
        "params": rep.total_params, "nonzero_params": rep.nonzero_params,
        "prunable_params": rep.prunable_params, "prunable_nonzero": rep.prunable_nonzero,
        "flops": rep.flops, "effective_flops": rep.effective_flops,
        "epochs": result.epochs, "steps": result.steps,
        # Training seconds from the epochs' own timings: they survive a resume intact.
        "wall_time": sum(row.get("seconds") or 0.0 for row in result.history),
    }
    extra = {k: v for k, v in result.metrics.items() if k not in metrics}
    layers = [{"name": r.name, "shape": list(r.shape), "params": r.params, "kept": r.kept,
               "sparsity": 1.0 - r.density, "flops": r.flops, "effective_flops": r.effective_flops}
              for r in rep.layers]
    trail = list(result.trail) + [{"phase": "final", "sparsity": rep.sparsity, "top1": final["top1"],
                                   "top5": final["top5"], "loss": final["loss"],
                                   "nonzero_params": rep.nonzero_params}]
    return {"format": RECORD_FORMAT, "id": spec.id, "label": spec.label, "metrics": metrics,
            "extra": extra, "layers": layers, "history": list(result.history), "trail": trail}


def _save_model(ctx: Context, result: PipelineResult, record: Dict[str, Any]) -> None:
    spec = ctx.spec
    save_model(ctx.folder / MODEL, result.model, model_name=spec.model.name,
               model_kwargs=result.model_kwargs or ctx.model_kwargs(), dataset=spec.data.name,
               mask=result.mask, metrics=record["metrics"], recipe=spec.train.fit_kwargs(),
               history=record["history"])
