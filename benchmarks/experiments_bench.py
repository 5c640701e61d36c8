"""Experiments layer: the examples end to end on Fashion-MNIST, and parallel sweep throughput.

    python benchmarks/experiments_bench.py              # everything (~15 min on 2 cores)
    python benchmarks/experiments_bench.py --skip-lamp  # without examples/lamp_allocations.yaml
    python benchmarks/experiments_bench.py --threads 1  # one torch thread per process (a busy machine)

1. ``examples/quick_sweep.yaml`` and ``examples/lamp_allocations.yaml`` are run with
   ``prunekit sweep`` (one worker) in fresh project folders, then ``prunekit report``; the wall
   time of each command is measured, and the report's top-1 table is copied into the result.
2. Throughput: the quick sweep again, in fresh folders, with ``--workers 1`` and
   ``--workers 2`` (runs per second and their ratio). On this 2-core machine one worker
   already uses both cores through torch's threads, so two workers (one thread each) can only
   win back the serial parts (Python overhead, evaluation, saving): expect a small ratio.

On a machine busy with other work, torch's default of one thread per core is several times
slower than one thread (its threads wait for each other on contended cores): ``--threads 1``
sets ``PRUNEKIT_THREADS=1`` for every ``prunekit`` command, and the result says so.

Writes ``results/experiments.md`` (a BENCHMARKS.md section) and ``results/experiments.json``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


THREADS = {}  # extra environment: PRUNEKIT_THREADS when --threads is given


def prunekit(*args: str) -> float:
    """Run ``prunekit ARGS`` in a subprocess (as a user would); return its wall time."""
    env = {**os.environ, **THREADS,
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prunekit", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def count_runs(project: Path) -> int:
    import sqlite3

    with sqlite3.connect(project / "results.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()[0]


def top1_table(report_md: Path) -> str:
    """The report's "Top-1 accuracy by method and requested sparsity" table (Markdown)."""
    text = report_md.read_text()
    match = re.search(r"### Top-1 accuracy.*?\n\n((?:\|.*\n)+)", text)
    dense = re.search(r"- Dense reference.*", text)
    return (dense.group(0).lstrip("- ") + "\n\n" if dense else "") + (match.group(1) if match else "(no table)")


def example(name: str, work: Path) -> dict:
    project = work / name
    sweep_s = prunekit("sweep", str(EXAMPLES / f"{name}.yaml"), "--dir", str(project), "--quiet")
    report_s = prunekit("report", str(project))
    runs = count_runs(project)
    return {"example": name, "runs": runs, "sweep_seconds": round(sweep_s, 1),
            "report_seconds": round(report_s, 1), "table": top1_table(project / "report" / "report.md")}


def throughput(work: Path, repeats: int = 2) -> dict:
    """Best of ``repeats`` alternating fresh sweeps per worker count (alternating spreads the
    machine's other load over both settings)."""
    times = {1: [], 2: []}
    runs = {}
    for r in range(repeats):
        for workers in (1, 2):
            project = work / f"throughput_w{workers}_{r}"
            times[workers].append(prunekit("sweep", str(EXAMPLES / "quick_sweep.yaml"), "--dir", str(project),
                                           "--quiet", "--workers", str(workers)))
            runs[workers] = count_runs(project)
    result = {w: {"seconds": round(min(times[w]), 2), "all_seconds": [round(t, 2) for t in times[w]],
                  "runs": runs[w], "runs_per_s": round(runs[w] / min(times[w]), 3)} for w in (1, 2)}
    result["ratio"] = round(result[2]["runs_per_s"] / result[1]["runs_per_s"], 2)
    return result


def explain(budget: int) -> str:
    cores = os.cpu_count() or 1
    if budget >= cores:
        return ("One worker already uses every core through torch's threads, so a second worker only "
                "overlaps the serial parts (Python overhead, evaluation, checkpoint and model writes), pays its "
                "own start-up (importing torch) and waits for the shared dense runs: expect little from "
                "--workers on 2 cores; it pays where a run cannot use all the cores.")
    return (f"With {budget} torch thread(s) per process (fewer than the {cores} cores), a second worker uses "
            "cores the first leaves idle; how much that gives depends on the other load on the machine.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-lamp", action="store_true", help="skip examples/lamp_allocations.yaml (~12 min)")
    parser.add_argument("--keep", default=None, help="keep the project folders here (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=None,
                        help="PRUNEKIT_THREADS for every command (default: all cores)")
    args = parser.parse_args()
    if args.threads is not None:
        THREADS["PRUNEKIT_THREADS"] = str(args.threads)
    budget = args.threads or os.cpu_count() or 1
    threads = f"{args.threads} (PRUNEKIT_THREADS)" if args.threads else f"{budget} (all cores)"
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="prunekit_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    try:
        examples = [example("quick_sweep", work)]
        if not args.skip_lamp:
            examples.append(example("lamp_allocations", work))
        speed = throughput(work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]

    lines = ["## Experiments: examples end to end, sweep throughput", "",
             f"Machine: {machine()}. Load average before/after: {load_before:.1f} / {load_after:.1f} "
             "(other work on the machine slows every figure here).", "",
             f"Command: `{command_line()}` (each step runs `prunekit` in a subprocess, fresh project folders; "
             f"torch threads per process budget: {threads}).", "",
             "| example | runs | `prunekit sweep` (s) | `prunekit report` (s) |", "|---|---|---|---|"]
    for ex in examples:
        lines.append(f"| examples/{ex['example']}.yaml | {ex['runs']} | {ex['sweep_seconds']} | {ex['report_seconds']} |")
    for ex in examples:
        lines += ["", f"Top-1 (%) of examples/{ex['example']}.yaml, mean ± std over seeds:", "", ex["table"].rstrip()]
    lines += ["", "Sweep throughput on examples/quick_sweep.yaml (fresh folders, Fashion-MNIST, 2 cores; best of 2 "
              "alternating sweeps per setting):", "",
              "| workers | runs | wall time (s) | runs/s |", "|---|---|---|---|",
              f"| 1 ({budget} torch threads) | {speed[1]['runs']} | {speed[1]['seconds']} | {speed[1]['runs_per_s']} |",
              f"| 2 ({max(1, budget // 2)} torch thread(s) each) | {speed[2]['runs']} | {speed[2]['seconds']} | {speed[2]['runs_per_s']} |",
              "", f"Ratio (2 workers / 1): **{speed['ratio']}x**. " + explain(budget)]
    write_section("experiments", "\n".join(lines),
                  {"machine": machine(), "threads": threads, "load": [load_before, load_after], "examples": examples,
                   "throughput": speed})


if __name__ == "__main__":
    main()
