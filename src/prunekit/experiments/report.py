"""``prunekit report DIR``: tables (mean +- std over seeds) and figures from the store.

One section per sweep (or the one asked for). Each section has:

- the setting (dataset, model, recipe) and the resolved spec;
- a pivot table: top-1 accuracy by method (rows) and requested sparsity (columns);
- a details table per method x sparsity: achieved sparsity, top-1/top-5, loss, nonzero
  parameters, effective FLOPs, training cost (epochs including the dense training a method
  built on, seconds) and the number of seeds;
- runs that did not finish, with their errors;
- with ``bench=True`` (``prunekit report --bench``): measured inference latency of each
  configuration's model (first seed) in its executable forms -- dense, masked, the sparse
  export, the thin export of shrunk models -- next to the theoretical FLOPs ratio
  (``prunekit.export.bench``; cached per run in ``bench.json``, so re-rendering is cheap);
- figures (:mod:`.plots`): accuracy (or error) vs sparsity / parameters / FLOPs with the dense
  model and the baselines on the same axes, per-layer sparsity bars per sparsity level, and
  training curves.

Written as ``report.md`` (figures beside it as PNG) and ``report.html``, a self-contained page
(figures embedded as base64; every name that comes from a spec is HTML-escaped).

Modules: this one builds the sections (tables, figures) and writes the files;
``report_aggregate`` (grouping and means over seeds), ``report_bench`` (the measured-inference
table and its cache), ``report_markdown`` and ``report_html`` (rendering), ``report_types``.
"""
from __future__ import annotations

import json
import re
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import plots, report_boards
from .project import Project, atomic_write_text
# Each concern has its own module; their names stay importable from here.
from .report_aggregate import (STAT_KEYS, aggregate, configuration, count_text, display_labels,  # noqa: F401
                               fmean_present, kind_of, mean_std, pivot_table, sparsity_name)
from .report_bench import run_speed, speed_table  # noqa: F401
from .report_html import render_html
from .report_markdown import render_markdown
from .report_types import Section, Table
from .schema import dump_yaml


def build_section(store, project: Project, name: str, spec: Dict[str, Any], out: Path,
                  y: str = "accuracy", bench: Optional[Dict[str, Any]] = None,
                  paper: Optional[Dict[str, Any]] = None, boards: bool = False) -> Section:
    """One sweep's section. ``boards``: the sweep's file has a list grid (methods splitting a
    budget differently, several datasets): its runs are shown as leaderboards
    (:mod:`.report_boards`) when they span several of them."""
    rows = store.runs(sweep=name)
    groups = aggregate(rows)
    setting = _setting(spec)
    section = Section(name, setting, dump_yaml(spec))
    done = sum(r["status"] == "done" for r in rows)
    section.notes.append(f"{done} of {len(rows)} runs finished; means ± sample standard deviations over "
                         f"seeds {', '.join(map(str, spec.get('seeds', [])))}.")
    dense = [g for g in groups if g["kind"] == "dense"]
    for g in dense:
        section.notes.append(f"Dense reference ({g['label']}): top-1 {mean_std(g, 'top1')}% with "
                             f"{count_text(g, 'params')} parameters and {count_text(g, 'flops')} FLOPs.")
    if any(re.search(r" #\d+$", g["label"]) for g in groups):
        section.notes.append("Labels ending in #1, #2, ... are one label given to different configurations "
                             "(e.g. a grid over the training recipe); their resolved specs are in the run folders.")
    compared = [g for g in groups if g["kind"] != "dense"]
    split = report_boards.boards(rows)
    leaderboard = boards and report_boards.is_leaderboard(split)
    if leaderboard:  # one board per dataset x model x total epochs
        section.notes.append("Methods at equal cost: one board per dataset, model and total budget, runs grouped "
                             "by the epochs they cost in total (the dense training they built on included).")
        speed = _sparse_speed(project, bench) if bench is not None else None
        for key, board_rows in split.items():
            notes, accuracy, cost = report_boards.board_tables(board_rows, speed)
            title = report_boards.board_title(key)
            section.tables.append((f"{title}: top-1 (%) by method and requested sparsity, mean ± std (seeds)"
                                   + (f"; {'; '.join(notes)}" if notes else ""), accuracy))
            section.tables.append((f"{title}: achieved sparsity, FLOPs and speed", cost))
    else:
        if compared:
            section.tables.append(("Top-1 accuracy (%) by method and requested sparsity", pivot_table(compared)))
        if groups:
            section.tables.append(("Details (mean ± std over seeds)", details_table(groups)))
    if paper:
        section.tables.append((f"Paper vs reproduced ({paper.get('source') or 'the paper'})",
                               paper_table(paper, groups)))
    problems = [r for r in rows if r["status"] != "done"]
    if problems:
        section.tables.append(("Runs not finished", Table(
            ["run", "method", "seed", "status", "error"],
            [[r["id"], r["label"], str(r["seed"]), _live_status(project, r), r.get("error") or ""]
             for r in problems])))
    warned = _warned_runs(project, rows)
    if warned:
        section.tables.append(("Runs with warnings (from their metrics.json: what prunekit warned while they "
                               "trained, e.g. a collapse to a constant output)", warned))
    if bench is not None and groups and not leaderboard:
        section.tables.append(("Measured inference, first seed's model (median latency; speedup = dense / form, "
                               "paired; FLOPs ratio = dense / effective FLOPs)", speed_table(project, groups, **bench)))
    if groups and not leaderboard:  # figures of several boards would mix datasets and budgets
        section.figures = _figures(store, name, groups, out, y, setting)
    return section


def _warned_runs(project: Project, rows) -> Optional[Table]:
    """The finished runs whose record keeps warnings (``runner._prunekit_warnings``), one row each."""
    found = []
    for r in rows:
        if r["status"] != "done":
            continue
        try:  # one read per run; a missing or damaged record is reported elsewhere
            warned = project.read_record(r["id"]).get("warnings") or []
        except (FileNotFoundError, ValueError):
            continue
        if warned:
            found.append([r["id"], r["label"], str(r["seed"]), "; ".join(warned)])
    return Table(["run", "method", "seed", "warnings"], found) if found else None


def _sparse_speed(project: Project, bench: Dict[str, Any]):
    """``speed(group)``: the sparse export's measured speedup over dense of the group's first
    run at the first batch size (``prunekit.export.bench``, cached per run)."""
    def speed(group: Dict[str, Any]) -> Optional[float]:
        rows = run_speed(project, group["runs"][0]["id"], bench["batch_sizes"], bench["repeats"])
        found = [r.get("speedup") for r in rows if r["form"] == "sparse" and r["batch_size"] == bench["batch_sizes"][0]]
        return found[0] if found else None
    return speed


def _live_status(project: Project, row: Dict[str, Any]) -> str:
    if row["status"] == "running" and project.is_locked(row["id"]) is False:
        return "interrupted"
    return row["status"]


def _setting(spec: Dict[str, Any]) -> str:
    data, model, train = spec.get("data", {}), spec.get("model", {}), spec.get("train", {})
    subset = f", {data['train_subset']} training images" if data.get("train_subset") else ""
    width = f" (width {model['width']:g})" if model.get("width", 1.0) != 1.0 else ""
    return (f"{model.get('name')}{width} on {data.get('name')}{subset}; dense training: "
            f"{train.get('epochs')} epochs of {train.get('optimizer')} at lr {train.get('lr'):g} "
            f"({train.get('schedule')}), batch size {data.get('batch_size')}.")


def paper_table(paper: Dict[str, Any], groups: Sequence[Dict[str, Any]]) -> Table:
    """The paper's reported numbers next to this project's means over seeds, matched by
    configuration label and requested sparsity ("-": not run here yet)."""
    cells = {(g["label"], None if g["requested_sparsity"] is None else round(float(g["requested_sparsity"]), 9)): g
             for g in groups}
    rows = []
    top5 = any(entry.get("top5") is not None for entry in paper["results"])
    for entry in paper["results"]:
        s = entry.get("sparsity")
        g = cells.get((entry["label"], None if s is None else round(float(s), 9)))
        paper_top1 = f"{entry['top1']:.2f}" if entry.get("top1") is not None else "-"
        here = mean_std(g, "top1") if g else "-"
        delta = (f"{g['mean']['top1'] - entry['top1']:+.2f}" if g and entry.get("top1") is not None
                 and g["mean"].get("top1") is not None else "-")
        row = [entry["label"], sparsity_name(s), paper_top1, here, delta]
        if top5:
            row += [f"{entry['top5']:.2f}" if entry.get("top5") is not None else "-",
                    mean_std(g, "top5") if g else "-"]
        rows.append(row + [str(g["n"]) if g else "0", entry.get("note") or ""])
    headers = ["configuration", "sparsity", "paper top-1 (%)", "reproduced top-1 (%)", "difference"]
    if top5:
        headers += ["paper top-5 (%)", "reproduced top-5 (%)"]
    return Table(headers + ["seeds", "paper's note"], rows)


def details_table(groups: Sequence[Dict[str, Any]]) -> Table:
    headers = ["method", "kind", "requested", "achieved sparsity (%)", "top-1 (%)", "top-5 (%)", "loss",
               "nonzero params", "eff. FLOPs", "epochs (total)", "train time (s)", "seeds"]
    rows = []
    for g in groups:
        rows.append([g["label"], g["kind"], sparsity_name(g["requested_sparsity"]),
                     mean_std(g, "achieved_sparsity", 2, 100.0), mean_std(g, "top1"), mean_std(g, "top5"),
                     mean_std(g, "loss", 4), count_text(g, "nonzero_params"), count_text(g, "effective_flops"),
                     f"{g['mean']['epochs']:g}" if g["mean"].get("epochs") is not None else "-",
                     mean_std(g, "wall_time", 1), str(g["n"])])
    return Table(headers, rows)


def _figures(store, name: str, groups, out: Path, y: str, setting: str) -> List[Tuple[str, Path]]:
    figures = []
    slug = name
    path = plots.tradeoff(groups, out / f"{slug}_tradeoff.png", f"{name}: {setting.split(';')[0]}", y)
    figures.append(("Accuracy vs sparsity, nonzero parameters and effective FLOPs" if y == "accuracy"
                    else "Error vs sparsity, nonzero parameters and effective FLOPs", path))
    main = [g for g in groups if g["kind"] == "main"]
    run_ids = [r["id"] for g in groups for r in g["runs"]]
    layers = store.layers(run_ids)
    for s in sorted({g["requested_sparsity"] for g in main if g["requested_sparsity"] is not None}):
        per_label = OrderedDict()
        for g in main:
            if g["requested_sparsity"] == s:
                per_label[g["label"]] = _mean_layers([layers[r["id"]] for r in g["runs"]])
        if per_label:
            file = out / f"{slug}_layers_s{sparsity_name(s).rstrip('%').replace('.', 'p')}.png"
            figures.append((f"Per-layer sparsity at {sparsity_name(s)} overall",
                            plots.layer_sparsity(per_label, file, f"{name}: per-layer sparsity at "
                                                 f"{sparsity_name(s)}", plots.family_colours(groups))))
    curves_path = _curves(store, name, groups, out / f"{slug}_curves.png")
    if curves_path is not None:
        figures.append(curves_path)
    return figures


def _mean_layers(per_run: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    first = per_run[0]
    return [{"name": row["name"], "params": row["params"],
             "sparsity": statistics.fmean(run[i]["sparsity"] for run in per_run)}
            for i, row in enumerate(first)]


def _curves(store, name: str, groups, path: Path) -> Optional[Tuple[str, Path]]:
    """Training curves of the dense model and of every method at the highest sparsity.

    A run's epochs are placed after the training it built on (a fine-tuning starts where
    the dense training ended), and its first trail point (e.g. accuracy right after pruning)
    opens its curve.
    """
    main = [g for g in groups if g["kind"] == "main"]
    top = max((g["requested_sparsity"] for g in main if g["requested_sparsity"] is not None), default=None)
    chosen = [g for g in groups if g["kind"] == "dense"] + [g for g in main if g["requested_sparsity"] == top]
    ids = [r["id"] for g in chosen for r in g["runs"]]
    history, trail = store.history(ids), store.trail(ids)
    curves, colours, family = OrderedDict(), {}, plots.family_colours(groups)
    for g in chosen:
        runs = [r for r in g["runs"] if history[r["id"]]]
        if not runs:
            continue
        length = min(len(history[r["id"]]) for r in runs)
        offset = statistics.fmean(max(0.0, (r.get("epochs") or 0) - len(history[r["id"]])) for r in runs)
        rows = []
        starts = [trail[r["id"]][0]["top1"] for r in runs if len(trail[r["id"]]) > 1]
        if len(starts) == len(runs) and offset > 0:
            rows.append({"x": offset, "test_top1": fmean_present(starts), "train_loss": None})
        rows += [{"x": offset + i + 1,
                  "test_top1": fmean_present(history[r["id"]][i]["test_top1"] for r in runs),
                  "train_loss": fmean_present(history[r["id"]][i]["train_loss"] for r in runs)} for i in range(length)]
        label = g["label"] if g["kind"] == "dense" else f"{g['label']} ({sparsity_name(top)})"
        curves[label] = rows
        colours[label] = family[g["label"]]
    drawn = plots.training_curves(curves, path, f"{name}: training curves (mean over seeds)", colours)
    if drawn is None:
        return None
    return (f"Training curves (dense training, then pruning and fine-tuning at {sparsity_name(top)})", drawn)


def write_report(root: Union[str, Path], out: Optional[Union[str, Path]] = None, sweep: Optional[str] = None,
                 y: str = "accuracy", bench: bool = False, bench_batch_sizes: Sequence[int] = (1, 256),
                 bench_repeats: int = 10) -> List[Path]:
    """Write ``report.md``, ``report.html`` and the PNG figures; return the two report paths.
    ``bench``: add the measured-inference table (see the module docstring)."""
    if y not in ("accuracy", "error"):
        raise ValueError(f"y must be 'accuracy' or 'error', got {y!r}")
    project = Project(root)
    if not project.db_path.is_file():
        raise FileNotFoundError(f"no results database in {root} ({project.db_path} is missing); "
                                "run `prunekit run` or `prunekit sweep` first")
    out = Path(out) if out is not None else project.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    with project.store() as store:
        rows = store.sweeps()
        known = OrderedDict((row["name"], json.loads(row["resolved"])) for row in rows)
        files = {row["name"]: json.loads(row["spec"]) if row.get("spec") else {} for row in rows}
        papers = {n: f.get("paper") for n, f in files.items()}
        if sweep is not None and sweep not in known:
            raise KeyError(f"no sweep {sweep!r} in {root}; sweeps there: {', '.join(known) or '(none)'}")
        names = [sweep] if sweep is not None else list(known)
        speed = {"batch_sizes": tuple(bench_batch_sizes), "repeats": bench_repeats} if bench else None
        sections = [build_section(store, project, name, known[name], out, y, speed, papers.get(name),
                                  boards=isinstance(files.get(name, {}).get("grid"), list))
                    for name in names]
    title = f"prunekit report: {sweep or project.root.resolve().name}"
    md = atomic_write_text(out / "report.md", render_markdown(sections, title))
    page = atomic_write_text(out / "report.html", render_html(sections, title))
    return [md, page]
