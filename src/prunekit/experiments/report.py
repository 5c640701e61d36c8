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
"""
from __future__ import annotations

import base64
import html
import json
import re
import statistics
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..export.bench import bench_model
from . import plots
from .project import Project, atomic_write_text
from .schema import dump_yaml

STAT_KEYS = ("top1", "top5", "loss", "achieved_sparsity", "params", "nonzero_params", "flops",
             "effective_flops", "epochs", "steps", "wall_time", "elapsed")


@dataclass
class Table:
    headers: List[str]
    rows: List[List[str]]


@dataclass
class Section:
    """Everything one sweep's part of the report shows, already formatted."""

    name: str
    setting: str
    spec_yaml: str
    notes: List[str] = field(default_factory=list)
    tables: List[Tuple[str, Table]] = field(default_factory=list)
    figures: List[Tuple[str, Path]] = field(default_factory=list)


# ------------------------------------------------------------------------ numbers


def kind_of(row: Dict[str, Any]) -> str:
    """dense (the reference), baseline, or main (a method under comparison)."""
    if row.get("baseline"):
        return "baseline"
    return "dense" if row["pipeline"] == "dense" else "main"


def _configuration(row: Dict[str, Any]) -> str:
    """What a row's runs share across seeds and sparsities (its spec minus those and display
    fields): two configurations must not be averaged together even if given one label."""
    spec = json.loads(row["spec"])
    spec.pop("seed", None)
    spec.get("data", {}).pop("data_dir", None)
    spec.get("data", {}).pop("test_batch_size", None)
    method = spec.get("method", {})
    method.pop("label", None)
    (method.get("params") or {}).pop("sparsity", None)
    return json.dumps(spec, sort_keys=True)


def display_labels(rows: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """Run id -> its label, with ``#1``, ``#2`` appended where one label names several
    configurations (e.g. a grid over the dense epochs with fixed method labels)."""
    configs: "OrderedDict[str, List[str]]" = OrderedDict()
    for row in rows:
        keys = configs.setdefault(row["label"], [])
        if _configuration(row) not in keys:
            keys.append(_configuration(row))
    out = {}
    for row in rows:
        keys = configs[row["label"]]
        out[row["id"]] = row["label"] if len(keys) == 1 else f"{row['label']} #{keys.index(_configuration(row)) + 1}"
    return out


def aggregate(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Group finished runs by (label, requested sparsity); mean and sample std over seeds.

    Order: the dense reference, then methods in order of appearance, then baselines; each
    by increasing sparsity.
    """
    label_of = display_labels(rows)
    groups: "OrderedDict[Tuple[str, Optional[float]], Dict[str, Any]]" = OrderedDict()
    for row in rows:
        if row["status"] != "done":
            continue
        requested = row["requested_sparsity"]
        label = label_of[row["id"]]
        key = (label, None if requested is None else round(float(requested), 9))
        group = groups.setdefault(key, {"label": label, "kind": kind_of(row),
                                        "requested_sparsity": requested, "runs": []})
        group["runs"].append(row)
    # A baseline's family is its main run's label: plots draw them in the same colour.
    for group in groups.values():
        parent = group["runs"][0].get("parent")
        group["family"] = label_of.get(parent, group["label"]) if group["kind"] == "baseline" else group["label"]
    order = {"dense": 0, "main": 1, "baseline": 2}
    first_seen = {}
    for i, (label, _) in enumerate(groups):
        first_seen.setdefault(label, i)
    result = sorted(groups.values(), key=lambda g: (order[g["kind"]], first_seen[g["label"]],
                                                    g["requested_sparsity"] if g["requested_sparsity"] is not None else -1))
    for group in result:
        group["n"] = len(group["runs"])
        group["seeds"] = sorted(r["seed"] for r in group["runs"])
        group["mean"], group["std"] = {}, {}
        for key in STAT_KEYS:
            values = [float(r[key]) for r in group["runs"] if r.get(key) is not None]
            group["mean"][key] = statistics.fmean(values) if values else None
            group["std"][key] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
    return result


def mean_std(group: Dict[str, Any], key: str, digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± std`` (just the mean for one seed; "-" when there is no value)."""
    mean, std = group["mean"].get(key), group["std"].get(key)
    if mean is None:
        return "-"
    if group["n"] > 1:
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"


def _count(group: Dict[str, Any], key: str) -> str:
    mean = group["mean"].get(key)
    return "-" if mean is None else f"{mean:,.0f}"


def _sparsity_name(s: Optional[float]) -> str:
    return "-" if s is None else f"{100 * s:g}%"


# ----------------------------------------------------------------------- sections


def build_section(store, project: Project, name: str, spec: Dict[str, Any], out: Path,
                  y: str = "accuracy", bench: Optional[Dict[str, Any]] = None) -> Section:
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
                             f"{_count(g, 'params')} parameters and {_count(g, 'flops')} FLOPs.")
    if any(re.search(r" #\d+$", g["label"]) for g in groups):
        section.notes.append("Labels ending in #1, #2, ... are one label given to different configurations "
                             "(e.g. a grid over the training recipe); their resolved specs are in the run folders.")
    compared = [g for g in groups if g["kind"] != "dense"]
    if compared:
        section.tables.append(("Top-1 accuracy (%) by method and requested sparsity", pivot_table(compared)))
    if groups:
        section.tables.append(("Details (mean ± std over seeds)", details_table(groups)))
    problems = [r for r in rows if r["status"] != "done"]
    if problems:
        section.tables.append(("Runs not finished", Table(
            ["run", "method", "seed", "status", "error"],
            [[r["id"], r["label"], str(r["seed"]), _live_status(project, r), r.get("error") or ""]
             for r in problems])))
    if bench is not None and groups:
        section.tables.append(("Measured inference, first seed's model (median latency; speedup = dense / form, "
                               "paired; FLOPs ratio = dense / effective FLOPs)", speed_table(project, groups, **bench)))
    if groups:
        section.figures = _figures(store, name, groups, out, y, setting)
    return section


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
            rows.append([g["label"], _sparsity_name(g["requested_sparsity"]), r["form"], str(r["batch_size"]),
                         f"{r['latency_ms']:.3f}", f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-",
                         f"{r['flops_ratio']:.2f}x" if r.get("flops_ratio") is not None else "-"])
    return Table(["method", "sparsity", "form", "batch", "latency (ms)", "speedup", "FLOPs ratio"], rows)


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


def pivot_table(groups: Sequence[Dict[str, Any]]) -> Table:
    sparsities = sorted({g["requested_sparsity"] for g in groups if g["requested_sparsity"] is not None})
    labels = list(OrderedDict.fromkeys(g["label"] for g in groups))
    cells = {(g["label"], g["requested_sparsity"]): g for g in groups}
    rows = []
    for label in labels:
        row = [label]
        for s in sparsities:
            g = cells.get((label, s))
            row.append(mean_std(g, "top1") if g else "")
        rows.append(row)
    return Table(["method"] + [_sparsity_name(s) for s in sparsities], rows)


def details_table(groups: Sequence[Dict[str, Any]]) -> Table:
    headers = ["method", "kind", "requested", "achieved sparsity (%)", "top-1 (%)", "top-5 (%)", "loss",
               "nonzero params", "eff. FLOPs", "epochs (total)", "train time (s)", "seeds"]
    rows = []
    for g in groups:
        rows.append([g["label"], g["kind"], _sparsity_name(g["requested_sparsity"]),
                     mean_std(g, "achieved_sparsity", 2, 100.0), mean_std(g, "top1"), mean_std(g, "top5"),
                     mean_std(g, "loss", 4), _count(g, "nonzero_params"), _count(g, "effective_flops"),
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
            file = out / f"{slug}_layers_s{_sparsity_name(s).rstrip('%').replace('.', 'p')}.png"
            figures.append((f"Per-layer sparsity at {_sparsity_name(s)} overall",
                            plots.layer_sparsity(per_label, file, f"{name}: per-layer sparsity at "
                                                 f"{_sparsity_name(s)}", plots.family_colours(groups))))
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
            rows.append({"x": offset, "test_top1": _fmean(starts), "train_loss": None})
        rows += [{"x": offset + i + 1,
                  "test_top1": _fmean(history[r["id"]][i]["test_top1"] for r in runs),
                  "train_loss": _fmean(history[r["id"]][i]["train_loss"] for r in runs)} for i in range(length)]
        label = g["label"] if g["kind"] == "dense" else f"{g['label']} ({_sparsity_name(top)})"
        curves[label] = rows
        colours[label] = family[g["label"]]
    drawn = plots.training_curves(curves, path, f"{name}: training curves (mean over seeds)", colours)
    if drawn is None:
        return None
    return (f"Training curves (dense training, then pruning and fine-tuning at {_sparsity_name(top)})", drawn)


def _fmean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


# ---------------------------------------------------------------------- rendering


def _md(text: str) -> str:
    """Markdown-safe text: names from specs must not become HTML or break a table."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: Sequence[Section], title: str) -> str:
    lines = [f"# {_md(title)}", ""]
    for s in sections:
        lines += [f"## {_md(s.name)}", "", _md(s.setting), ""]
        lines += [f"- {_md(note)}" for note in s.notes] + [""]
        for caption, table in s.tables:
            lines += [f"### {_md(caption)}", "", "| " + " | ".join(map(_md, table.headers)) + " |",
                      "|" + "|".join("---" for _ in table.headers) + "|"]
            lines += ["| " + " | ".join(map(_md, row)) + " |" for row in table.rows]
            lines.append("")
        for caption, path in s.figures:
            lines += [f"### {_md(caption)}", "", f"![{_md(caption)}]({path.name})", ""]
        lines += ["<details><summary>resolved spec</summary>", "", "```yaml", s.spec_yaml.rstrip(), "```", "",
                  "</details>", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def render_html(sections: Sequence[Section], title: str) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{e(s.name)}</h2><p>{e(s.setting)}</p><ul>")
        parts += [f"<li>{e(note)}</li>" for note in s.notes]
        parts.append("</ul>")
        for caption, table in s.tables:
            parts.append(f"<h3>{e(caption)}</h3><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers)
                         + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in table.rows]
            parts.append("</table>")
        for caption, path in s.figures:
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f"<h3>{e(caption)}</h3><img alt='{e(caption, quote=True)}' "
                         f"src='data:image/png;base64,{data}'>")
        parts.append(f"<details><summary>resolved spec</summary><pre>{e(s.spec_yaml)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
        known = OrderedDict((row["name"], json.loads(row["resolved"])) for row in store.sweeps())
        if sweep is not None and sweep not in known:
            raise KeyError(f"no sweep {sweep!r} in {root}; sweeps there: {', '.join(known) or '(none)'}")
        names = [sweep] if sweep is not None else list(known)
        speed = {"batch_sizes": tuple(bench_batch_sizes), "repeats": bench_repeats} if bench else None
        sections = [build_section(store, project, name, known[name], out, y, speed) for name in names]
    title = f"prunekit report: {sweep or project.root.resolve().name}"
    md = atomic_write_text(out / "report.md", render_markdown(sections, title))
    page = atomic_write_text(out / "report.html", render_html(sections, title))
    return [md, page]
