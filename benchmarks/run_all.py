"""Run the benchmarks and assemble BENCHMARKS.md from their sections.

    python benchmarks/run_all.py                 # quick ones (minutes), then assemble
    python benchmarks/run_all.py --assemble-only # only rebuild BENCHMARKS.md from results/
    python benchmarks/run_all.py --all           # also the long accuracy grids (resumable)

Every section in results/*.md was written by the script named in it, with the command line
and the machine it ran on. Long grids cache their runs in results/*.json and resume.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = ["bench_enforcement.py", "bench_prune_speed.py", "bench_export.py", "bench_threshold_overhead.py"]
# The long grids; bench_structured.py needs CIFAR-10 (see its docstring) and runs by hand.
LONG = ["bench_accuracy.py", "experiments_bench.py", "bench_imp.py", "bench_thresholds.py", "bench_ddp.py"]
# Order of sections in BENCHMARKS.md; sections not listed follow alphabetically.
ORDER = ["enforcement", "prune_speed", "accuracy", "experiments", "imp", "thresholds", "thresholds_resnet20",
         "threshold_overhead", "structured", "export", "minilm_export", "minilm_export_2threads", "ddp"]

HEADER = """# Benchmarks

Measured on this project's machines (2 CPU cores, no GPU), reported as medians and as ratios
measured side by side in one run. Each section names the command that produced it; rerun it
to reproduce. `make bench` runs the quick ones and reassembles this file
(`python benchmarks/run_all.py --all` adds the long accuracy grids, which resume from their
caches in `benchmarks/results/`).

Timing sections (mask enforcement, export, threshold-method overhead, DDP) were rerun on
2026-11-26 on an otherwise idle machine; each says its load. The accuracy grids ran as one
thread per job, often two jobs at a time (and on 2026-11-25 beside other work, load 2-5):
their accuracy figures do not depend on that, but their recorded seconds per epoch do, so
compare speed only through the side-by-side sections.
"""


def assemble() -> None:
    sections = {p.stem: p.read_text() for p in (HERE / "results").glob("*.md")}
    names = [n for n in ORDER if n in sections] + sorted(n for n in sections if n not in ORDER)
    text = HEADER + "\n" + "\n".join(sections[n] for n in names)
    (HERE.parent / "BENCHMARKS.md").write_text(text)
    print(f"wrote BENCHMARKS.md ({len(names)} sections)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--assemble-only", action="store_true")
    args = ap.parse_args()
    if not args.assemble_only:
        for script in QUICK + (LONG if args.all else []):
            subprocess.run([sys.executable, str(HERE / script)], check=True, cwd=HERE)
    assemble()


if __name__ == "__main__":
    main()
