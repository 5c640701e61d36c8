"""The report's measured-inference table (``prunekit report --bench``): each configuration's
first-seed model timed by ``prunekit.export.bench``, cached per run in ``bench.json`` so that
re-rendering a report measures nothing again.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

from ..export.bench import bench_model
from .project import Project, atomic_write_text
from .report_aggregate import sparsity_name
from .report_types import Table


def run_speed(project: Project, run_id: str, batch_sizes: Sequence[int], repeats: int) -> List[Dict[str, Any]]:
    """``bench_model`` rows of one finished run, cached in its folder's ``bench.json``
    (re-measured when the batch sizes or repeats asked for change)."""
    folder = project.run_folder(run_id)
    cache = folder / "bench.json"
    settings = {"batch_sizes": [int(b) for b in batch_sizes], "repeats": int(repeats)}
    if cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("settings") == settings:
                return saved["rows"]
        except (ValueError, KeyError):
            pass  # a damaged cache is measured again
    if not project.has_model(run_id):
        return []  # a records-only folder: nothing to measure, the cell says "not measured"
    rows = bench_model(folder, batch_sizes=batch_sizes, repeats=repeats, memory=False)
    atomic_write_text(cache, json.dumps({"settings": settings, "rows": rows}, indent=1))
    return rows


def speed_table(project: Project, groups: Sequence[Dict[str, Any]], batch_sizes: Sequence[int] = (1, 256),
                repeats: int = 10) -> Table:
    """One row per (configuration, form, batch size): what each pruned model buys in time."""
    rows = []
    for g in groups:
        if g["kind"] == "dense":
            continue
        run = g["runs"][0]
        for r in run_speed(project, run["id"], batch_sizes, repeats):
            if r["form"] == "dense":
                continue
            rows.append([g["label"], sparsity_name(g["requested_sparsity"]), r["form"], str(r["batch_size"]),
                         f"{r['latency_ms']:.3f}", f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-",
                         f"{r['flops_ratio']:.2f}x" if r.get("flops_ratio") is not None else "-"])
    return Table(["method", "sparsity", "form", "batch", "latency (ms)", "speedup", "FLOPs ratio"], rows)
