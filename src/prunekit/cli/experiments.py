"""``prunekit run | sweep | runs | report``: the experiments layer on the command line.

``register(subparsers)`` adds the four subcommands to the main parser (cli/main.py calls it).
Bad input raises ValueError/KeyError/FileNotFoundError, which main() prints as one line with
exit code 2. A sweep with failed runs exits with 1 after finishing the others.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..distributed import is_main, world_size
from ..experiments.project import Project
from ..experiments.repair import repair_store
from ..experiments.ray_executor import import_ray
from ..experiments.report import write_report
from ..experiments.spec import Sweep, grid_axes
from ..experiments.sweep import plan, run_sweep

DEFAULT_DIR = "runs"


def _load(path: str, data_dir=None):
    if not Path(path).is_file():
        raise FileNotFoundError(f"no experiment file {path}")
    return Sweep.from_yaml(Path(path)).with_data_dir(data_dir)  # a location: ids stay


def _check_world(sweep: Sweep) -> None:
    """Under torchrun, refuse a batch size the number of processes does not divide, on every
    rank and before any run starts (fit would refuse it too, but only once a run is under way,
    leaving a failed run per configuration)."""
    world = world_size()
    bad = sorted({p.data.batch_size for p in sweep.points if p.data.batch_size % world}) if world > 1 else []
    if bad:
        raise ValueError(f"data.batch_size {', '.join(map(str, bad))} cannot be split over {world} processes "
                         f"(WORLD_SIZE): use a multiple of {world}")


def _finish(summary, quiet: bool) -> int:
    if not is_main():  # under torchrun rank 0 reports for the job
        return 1 if summary.failed or summary.blocked else 0
    if not quiet or summary.failed:
        print(summary.line())
    for outcome in summary.failed:
        print(f"  failed {outcome.id}: {outcome.error}", file=sys.stderr)
    return 1 if summary.failed or summary.blocked else 0


def cmd_run(args) -> int:
    spec = _load(args.spec, args.data_dir)
    if spec.grid:
        raise ValueError(f"{args.spec} has a grid ({', '.join(grid_axes(spec.grid))}): run it with `prunekit sweep`")
    _check_world(spec)
    summary = run_sweep(args.dir, spec, workers=1, quiet=args.quiet, fit_progress=False if args.quiet else None, echo=print)
    return _finish(summary, args.quiet)


def cmd_sweep(args) -> int:
    spec = _load(args.spec, args.data_dir)
    if args.dry_run:
        project = Project(args.dir)
        runs = plan(spec)
        for item in runs:
            state = "done" if project.is_done(item.spec.id) else "todo"
            s = item.spec.requested_sparsity
            where = (f" s={s:g}" if s is not None else "") + f" seed={item.spec.seed}"
            print(f"{state:<5} {item.role:<10} {item.spec.id:<42} {item.spec.label}{where}")
        print(f"{len(runs)} runs, {sum(project.is_done(r.spec.id) for r in runs)} done")
        return 0
    _check_world(spec)
    if args.executor == "ray":
        if args.workers != 1:
            raise ValueError("--workers is for the process executor; with --executor ray each run is a "
                             "Ray task (size them with --ray-cpus)")

        try:
            import_ray()
        except ImportError as err:
            raise ValueError(str(err)) from None  # one line, exit code 2
    elif args.ray_address is not None:
        raise ValueError("--ray-address needs --executor ray")
    elif args.ray_gpus:
        raise ValueError("--ray-gpus needs --executor ray")
    summary = run_sweep(args.dir, spec, workers=args.workers, quiet=args.quiet, executor=args.executor,
                        ray_address=args.ray_address, ray_num_cpus=args.ray_cpus, ray_max_retries=args.ray_retries,
                        ray_num_gpus=args.ray_gpus)
    return _finish(summary, args.quiet)


def cmd_runs(args) -> int:
    project = Project(args.dir)
    if args.repair:
        print(repair_store(args.dir).line())
        return 0
    if not project.db_path.is_file():
        raise FileNotFoundError(f"no results database in {args.dir} ({project.db_path} is missing); "
                                "run `prunekit run` or `prunekit sweep` first")
    with project.store(verify=True) as store:
        rows = store.runs(sweep=args.sweep, status=None)
    for row in rows:  # "running" rows whose process is gone are really interrupted
        if row["status"] == "running" and project.is_locked(row["id"]) is False:
            row["status"] = "interrupted"
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    print(format_runs(rows))
    return 0


def format_runs(rows) -> str:
    head = (f"{'id':<42} {'status':<11} {'label':<30} {'seed':>4} {'req.':>6} {'achieved':>8} "
            f"{'top-1':>7} {'epochs':>6} {'time':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def num(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        lines.append(f"{r['id']:<42} {r['status']:<11} {str(r['label'])[:30]:<30} {r['seed']:>4} "
                     f"{num('requested_sparsity', '.4g'):>6} {num('achieved_sparsity', '.4f'):>8} "
                     f"{num('top1', '.2f'):>7} {num('epochs', 'g'):>6} {num('elapsed', '.1f'):>7}")
        if r["status"] in ("failed", "diverged", "blocked", "interrupted") and r.get("error"):
            lines.append(f"    {r['error']}")
    lines.append(f"{len(rows)} runs")
    return "\n".join(lines)


def cmd_report(args) -> int:
    paths = write_report(args.dir, out=args.out, sweep=args.sweep, y=args.y, bench=args.bench,
                         bench_batch_sizes=args.bench_batch_sizes, bench_repeats=args.bench_repeats)
    for path in paths:
        print(path)
    return 0


def register(subparsers) -> None:
    """Add run, sweep, runs and report to the ``prunekit`` parser's subparsers."""
    p = subparsers.add_parser("run", help="run an experiment spec (each seed, method and baseline)")
    p.add_argument("spec", help="experiment YAML file (see examples/)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("sweep", help="run a grid of experiments (skips done runs, resumes interrupted ones)")
    p.add_argument("spec", help="experiment YAML file with a grid: section")
    _common(p)
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="parallel worker processes (each gets cores/workers torch threads)")
    p.add_argument("--executor", choices=["process", "ray"], default="process",
                   help="process: this machine (--workers); ray: each run a task on a Ray cluster, "
                        "the project folder on a filesystem shared by every node (pip install 'prunekit[ray]')")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (auto, HOST:PORT, ray://HOST:10001); default: start a local Ray")
    p.add_argument("--ray-cpus", type=_positive_float, default=1.0,
                   help="CPUs each run's task reserves, and its torch threads (default: 1)")
    p.add_argument("--ray-gpus", type=_nonnegative_float, default=0.0,
                   help="GPUs each run's task reserves (e.g. 1 or 0.5; default 0); with prunekit --device auto "
                        "each run trains on the GPU Ray gives it")
    p.add_argument("--ray-retries", type=_positive_int_or_zero, default=3,
                   help="times Ray re-runs a task whose worker died; it resumes from its checkpoint (default: 3)")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs and which are done")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("runs", help="list the runs in a project folder")
    p.add_argument("dir", nargs="?", default=DEFAULT_DIR, help=f"project folder (default: {DEFAULT_DIR})")
    p.add_argument("--sweep", default=None, help="only this sweep's runs")
    p.add_argument("--status", default=None,
                   choices=["pending", "running", "interrupted", "done", "failed", "diverged", "blocked"])
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.add_argument("--repair", action="store_true",
                   help="rebuild a damaged results.sqlite from the run folders (the old file is kept aside)")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("report", help="Markdown + HTML report with tables and figures")
    p.add_argument("dir", nargs="?", default=DEFAULT_DIR, help=f"project folder (default: {DEFAULT_DIR})")
    p.add_argument("--sweep", default=None, help="only this sweep (default: every sweep, one section each)")
    p.add_argument("--out", default=None, help="output folder (default: DIR/report)")
    p.add_argument("--y", choices=["accuracy", "error"], default="accuracy",
                   help="plot top-1 accuracy or top-1 error (log scale)")
    p.add_argument("--bench", action="store_true",
                   help="add measured inference latency of each configuration's model (dense, masked, sparse and "
                        "thin exports; cached per run in bench.json)")
    p.add_argument("--bench-batch-sizes", nargs="+", type=_positive_int, default=[1, 256], metavar="B")
    p.add_argument("--bench-repeats", type=_positive_int, default=10, metavar="N")
    p.set_defaults(func=cmd_report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"project folder for runs and results (default: {DEFAULT_DIR})")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset files (not part of run ids)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _positive_int_or_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
