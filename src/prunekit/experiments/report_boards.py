"""Leaderboards: a sweep's runs split by dataset x model x *total* training epochs (the
report uses them for sweeps whose file has a list grid).

A sweep whose grid compares methods at equal cost (``examples/leaderboard.yaml``) gives each
method its own split of the budget -- a 16-epoch dense run + 4 fine-tuning epochs, or one
20-epoch run -- so their specs differ; what they share is the cost every run records
(``epochs``: its own epochs plus those of the runs it built on). Grouping by that measured
cost is also the check: a method whose split does not add up lands on a board of its own.

A board is kept when it holds a run under comparison (dense-only boards are the shared dense
runs other methods built on). For each: top-1 by method x requested sparsity (mean ± sample
std over seeds), then per (method, sparsity) the achieved sparsity, the theoretical speedup
dense FLOPs / effective FLOPs (``core.accounting``: a masked layer counts density x dense
FLOPs) and, with ``prunekit report --bench``, the measured one of the sparse export.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .report_aggregate import aggregate, mean_std, pivot_table, sparsity_name
from .report_types import Table


def board_key(row: Dict[str, Any]) -> Tuple[Any, ...]:
    """``(dataset, train subset, model, width, total epochs)`` of a finished run."""
    spec = json.loads(row["spec"])
    data, model = spec.get("data", {}), spec.get("model", {})
    epochs = row.get("epochs")
    return (data.get("name"), data.get("train_subset"), model.get("name"), float(model.get("width", 1.0)),
            None if epochs is None else round(float(epochs), 6))


def board_title(key: Tuple[Any, ...]) -> str:
    data, subset, model, width, epochs = key
    where = f"{data}" + (f" ({subset} training images)" if subset else "")
    arch = f"{model}" + (f" width {width:g}" if width != 1.0 else "")
    return f"{where}, {arch}: {epochs:g} epochs in total"


def boards(rows: Sequence[Dict[str, Any]]) -> "OrderedDict[Tuple[Any, ...], List[Dict[str, Any]]]":
    """Finished runs by board, in order of first appearance; boards without a compared run
    (only dense runs) are left out."""
    out: "OrderedDict[Tuple[Any, ...], List[Dict[str, Any]]]" = OrderedDict()
    for row in rows:
        if row["status"] == "done" and row.get("epochs") is not None:
            out.setdefault(board_key(row), []).append(row)
    return OrderedDict((k, v) for k, v in out.items() if any(r["pipeline"] != "dense" or r.get("baseline") for r in v))


def is_leaderboard(split: Dict[Tuple[Any, ...], List[Dict[str, Any]]]) -> bool:
    """Boards are shown when there are several, or when one board's runs trained with different
    ``train.epochs`` (methods splitting one budget differently)."""
    if len(split) > 1:
        return True
    for board_rows in split.values():
        if len({json.loads(r["spec"]).get("train", {}).get("epochs") for r in board_rows}) > 1:
            return True
    return False


def flops_ratio(group: Dict[str, Any]) -> Optional[float]:
    """Mean over seeds of dense FLOPs / effective FLOPs."""
    values = [float(r["flops"]) / float(r["effective_flops"]) for r in group["runs"]
              if r.get("flops") and r.get("effective_flops")]
    return sum(values) / len(values) if values else None


MISSED = 0.005  # achieved sparsity this far from the requested one is shown in the cell


def _cell(group: Dict[str, Any]) -> str:
    """``top-1 ± std (seeds)``, plus the achieved sparsity where a method missed the requested
    one (approximate methods: a cell must not pass for a sparsity it did not reach)."""
    text = f"{mean_std(group, 'top1')} ({group['n']})"
    achieved, requested = group["mean"].get("achieved_sparsity"), group["requested_sparsity"]
    if achieved is not None and requested is not None and abs(achieved - requested) > MISSED:
        text += f" at {100 * achieved:.1f}%"
    return text


def board_tables(board_rows: Sequence[Dict[str, Any]],
                 speed: Optional[Callable[[Dict[str, Any]], Optional[float]]] = None) -> Tuple[List[str], Table, Table]:
    """``(notes, accuracy table, cost table)`` of one board. ``speed(group)``: the measured
    speedup of a configuration (None: not measured)."""
    groups = aggregate(board_rows)
    notes = [f"Dense reference ({g['label']}): top-1 {mean_std(g, 'top1')}% ({g['n']} seeds)"
             for g in groups if g["kind"] == "dense"]
    compared = [g for g in groups if g["kind"] != "dense"]
    accuracy = pivot_table(compared, cell=_cell, empty="not run")
    cost_rows = []
    for g in compared:
        ratio = flops_ratio(g)
        measured = speed(g) if speed is not None else None
        cost_rows.append([g["label"], sparsity_name(g["requested_sparsity"]),
                          mean_std(g, "achieved_sparsity", 2, 100.0), mean_std(g, "top1"),
                          f"{ratio:.1f}x" if ratio is not None else "-",
                          f"{measured:.2f}x" if measured is not None else "not measured",
                          f"{g['mean']['epochs']:g}" if g["mean"].get("epochs") is not None else "-",
                          mean_std(g, "wall_time", 0), str(g["n"])])
    cost = Table(["method", "requested", "achieved sparsity (%)", "top-1 (%)", "FLOPs ratio (dense / effective)",
                  "measured speedup (sparse export)", "epochs (total)", "train time (s)", "seeds"], cost_rows)
    return notes, accuracy, cost


def board_data(board_rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The board's numbers as plain data (one entry per method x sparsity), for JSON."""
    out = []
    for g in aggregate(board_rows):
        out.append({"label": g["label"], "kind": g["kind"], "requested_sparsity": g["requested_sparsity"],
                    "seeds": g["seeds"], "top1": [r["top1"] for r in g["runs"]],
                    "top1_mean": g["mean"].get("top1"), "top1_std": g["std"].get("top1"),
                    "achieved_sparsity_mean": g["mean"].get("achieved_sparsity"),
                    "flops_ratio": flops_ratio(g), "epochs": g["mean"].get("epochs"),
                    "run_ids": [r["id"] for r in g["runs"]]})
    return out
