"""The report's numbers: store rows grouped by configuration (method x sparsity x recipe),
with means and sample standard deviations over seeds, and their text formats.
"""
from __future__ import annotations

import json
import statistics
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..pipelines.registry import PIPELINES
from .report_types import Table

STAT_KEYS = ("top1", "top5", "loss", "achieved_sparsity", "params", "nonzero_params", "flops",
             "effective_flops", "epochs", "steps", "wall_time", "elapsed")


def kind_of(row: Dict[str, Any]) -> str:
    """dense (the reference), baseline, or main (a method under comparison)."""
    if row.get("baseline"):
        return "baseline"
    return "dense" if row["pipeline"] == "dense" else "main"


def configuration(row: Dict[str, Any]) -> str:
    """What a row's runs share across seeds and sparsities (its spec minus those and display
    fields): two configurations must not be averaged together even if given one label."""
    spec = json.loads(row["spec"])
    spec.pop("seed", None)
    spec.get("data", {}).pop("data_dir", None)
    spec.get("data", {}).pop("test_batch_size", None)
    method = spec.get("method", {})
    method.pop("label", None)
    name = method.get("name")
    # the params the requested sparsity comes from (sparsity_loss: its budget): a sweep over
    # them is one method at several sparsities
    targets = PIPELINES.get(name).target_params if name in PIPELINES else ("sparsity",)
    for key in targets:
        (method.get("params") or {}).pop(key, None)
    return json.dumps(spec, sort_keys=True)


def display_labels(rows: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """Run id -> its label, with ``#1``, ``#2`` appended where one label names several
    configurations (e.g. a grid over the dense epochs with fixed method labels)."""
    configs: "OrderedDict[str, List[str]]" = OrderedDict()
    for row in rows:
        keys = configs.setdefault(row["label"], [])
        if configuration(row) not in keys:
            keys.append(configuration(row))
    out = {}
    for row in rows:
        keys = configs[row["label"]]
        out[row["id"]] = row["label"] if len(keys) == 1 else f"{row['label']} #{keys.index(configuration(row)) + 1}"
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


def count_text(group: Dict[str, Any], key: str) -> str:
    """A count's mean with thousands separators ("-" when unknown)."""
    mean = group["mean"].get(key)
    return "-" if mean is None else f"{mean:,.0f}"


def sparsity_name(s: Optional[float]) -> str:
    """A sparsity as a column name: 0.9 -> "90%"."""
    return "-" if s is None else f"{100 * s:g}%"


def fmean_present(values) -> Optional[float]:
    """The mean of the values that are not None (None when there are none)."""
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def pivot_table(groups: Sequence[Dict[str, Any]], cell: Optional[Callable[[Dict[str, Any]], str]] = None,
                empty: str = "") -> Table:
    """Method (row) x requested sparsity (column) table of ``groups``: ``cell(group)`` per
    configuration (default: mean +- std of top-1), ``empty`` where a method has no such run."""
    cell = cell or (lambda g: mean_std(g, "top1"))
    sparsities = sorted({g["requested_sparsity"] for g in groups if g["requested_sparsity"] is not None})
    labels = list(OrderedDict.fromkeys(g["label"] for g in groups))
    cells = {(g["label"], g["requested_sparsity"]): g for g in groups}
    rows = [[label] + [cell(cells[(label, s)]) if (label, s) in cells else empty for s in sparsities]
            for label in labels]
    return Table(["method"] + [sparsity_name(s) for s in sparsities], rows)
