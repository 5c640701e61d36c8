"""The equal-budget leaderboard: list grids, the torch_prune pipeline, boards in the report.

examples/leaderboard.yaml is planned (not run); a tiny list-grid sweep on synthetic data with a
2-epoch budget is run end to end (about 10 s).
"""
import json

import pytest
import torch

import prunekit as pk
from prunekit.cli.main import main
from prunekit.experiments import report_boards
from prunekit.experiments.project import Project
from prunekit.experiments.report import write_report
from prunekit.experiments.schema import SpecError
from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan, run_sweep
from prunekit.pipelines.torch_prune import remove_reparametrisation, torch_prune_model

from test_examples import EXAMPLES

LEADERBOARD = next(p for p in EXAMPLES if p.name == "leaderboard.yaml")


def _planned_epochs(spec) -> int:
    """What a main run of the leaderboard costs in total, from its spec alone."""
    p, e = spec.method.params, spec.train.epochs
    if spec.method.name in ("oneshot", "torch_prune"):
        return e + p.finetune_epochs
    if spec.method.name == "imp":
        return e + p.phases * p.retrain_epochs
    return e + getattr(p, "finetune_epochs", 0)


def test_leaderboard_spec_gives_every_method_the_same_total_epochs():
    sweep = Sweep.from_yaml(LEADERBOARD)
    mains = [item.spec for item in plan(sweep) if item.role == "main"]
    budgets = {}
    for spec in mains:
        budgets.setdefault((spec.data.name, spec.label), set()).add(_planned_epochs(spec))
    # 10 and 20 epochs for every method; 40 only for GMP at 98% (what bounds the 98% target)
    assert all(b <= {10, 20} and b for (data, label), b in budgets.items() if label != "GMP"), budgets
    assert budgets[("fashion_mnist", "GMP")] == {10, 20, 40}
    assert {round(s.requested_sparsity, 4) for s in mains if _planned_epochs(s) == 40} == {0.98}
    fmnist = {label for (data, label) in budgets if data == "fashion_mnist"}
    assert {"GMP", "IMP SLR", "one-shot global + FT", "one-shot LAMP + FT", "one-shot ERK + FT", "ste_fixed",
            "ste_fixed lr 0.01", "sparsity_loss", "torch.nn.utils.prune global L1 + FT", "dense"} <= fmnist
    sparsities = {round(s.requested_sparsity, 4) for s in mains if s.data.name == "fashion_mnist" and s.method.name != "dense"}
    assert sparsities == {0.9, 0.95, 0.98, 0.99}
    assert {s.seed for s in mains if s.data.name == "fashion_mnist"} == {0, 1, 2}
    cifar = [s for s in mains if s.data.name == "cifar10"]
    assert {s.seed for s in cifar} == {0} and {s.model.name for s in cifar} == {"resnet20"}
    assert {round(s.requested_sparsity, 4) for s in cifar if s.method.name != "dense"} == {0.9, 0.98}
    # the first runs are the 98% column at 10 epochs
    first = [s for s in mains if s.method.name != "dense"][:6]
    assert all(round(s.requested_sparsity, 4) == 0.98 and _planned_epochs(s) == 10 for s in first)


def test_leaderboard_dry_run(tmp_path, capsys):
    assert main(["sweep", str(LEADERBOARD), "--dir", str(tmp_path / "p"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "torch_prune-" in out and "runs, 0 done" in out


def test_a_list_grid_is_the_union_of_its_products():
    sweep = Sweep.from_yaml("""
name: union
data: {name: synthetic}
model: {name: lenet5}
method: {name: gmp}
grid:
  - {method.params.sparsity: [0.5, 0.9]}
  - {train.epochs: [3], method: [{name: oneshot}], method.params.sparsity: [0.8]}
""")
    got = [(p.method.name, p.train.epochs, p.method.params.sparsity) for p in sweep.points]
    assert got == [("gmp", 1, 0.5), ("gmp", 1, 0.9), ("oneshot", 3, 0.8)]
    assert Sweep.from_dict(sweep.to_dict()).points == sweep.points


@pytest.mark.parametrize("grid, path", [("[5]", "grid[0]"),
                                        ("[{method.params.sparsity: []}]", "grid[0].method.params.sparsity")])
def test_bad_list_grids_name_their_path(grid, path):
    with pytest.raises(SpecError) as err:
        Sweep.from_yaml(f"name: x\ndata: {{name: synthetic}}\nmodel: {{name: lenet5}}\nmethod: {{name: gmp}}\n"
                        f"grid: {grid}\n")
    assert err.value.path == path


def test_torch_global_l1_removes_what_prunekit_global_magnitude_removes():
    torch.manual_seed(0)
    model = pk.models.get("lenet5")
    ours = pk.prune(_copy(model), 0.9, score="magnitude", allocation="global")
    theirs_model = _copy(model)
    targets = torch_prune_model(theirs_model, 0.9, "global_l1")
    assert any(k.endswith("weight_orig") for k in theirs_model.state_dict())
    theirs = remove_reparametrisation(theirs_model, targets)
    assert not any(k.endswith(("_orig", "_mask")) for k in theirs_model.state_dict())  # plain keys again
    assert theirs.kept() == ours.kept() == round(0.1 * ours.total())
    assert all(torch.equal(theirs[n], ours[n]) for n in ours)  # distinct |w|: the same weights
    layer = _copy(model)
    per_layer = remove_reparametrisation(layer, torch_prune_model(layer, 0.9, "layer_l1"))
    assert all(abs(float(per_layer[n].float().mean()) - 0.1) < 0.01 for n in per_layer)


def _copy(model):
    other = pk.models.get("lenet5")
    other.load_state_dict(model.state_dict())
    return other


TINY = """
name: tiny_board
data: {name: synthetic, train_subset: 256}
model: {name: lenet5, width: 0.5}
train: {epochs: 2, lr: 0.05, schedule: cosine}
method: {name: dense, label: dense}
seeds: [0]
grid:
  - {method: [{name: dense, label: dense}]}
  - {method: [{name: gmp, label: GMP}], method.params.sparsity: [0.9]}
  - train.epochs: [1]
    method:
      - {name: oneshot, label: one-shot, params: {finetune_epochs: 1}}
      - {name: torch_prune, label: torch global L1, params: {finetune_epochs: 1}}
    method.params.sparsity: [0.9]
"""


def test_tiny_leaderboard_sweep_and_its_board(tmp_path):
    root = tmp_path / "project"
    summary = run_sweep(root, Sweep.from_yaml(TINY), quiet=True)
    assert not summary.failed
    with Project(root).store() as store:
        rows = store.runs(sweep="tiny_board")
    boards = report_boards.boards(rows)
    assert len(boards) == 1  # the 1-epoch dense run the one-shot runs built on has no board of its own
    (key, board_rows), = boards.items()
    assert key[-1] == 2.0
    notes, accuracy, cost = report_boards.board_tables(board_rows)
    assert [r[0] for r in accuracy.rows] == ["GMP", "one-shot", "torch global L1"]
    assert accuracy.headers == ["method", "90%"] and notes and notes[0].startswith("Dense reference (dense)")
    torch_row = next(r for r in board_rows if r["pipeline"] == "torch_prune")
    assert abs(torch_row["achieved_sparsity"] - 0.9) < 1e-3 and torch_row["epochs"] == 2
    assert all(row[4].endswith("x") for row in cost.rows)  # a FLOPs ratio for every cell
    assert all(" at " not in cell for row in accuracy.rows for cell in row[1:])  # exact methods: no flag
    missed = [dict(r, achieved_sparsity=0.9156) for r in board_rows if r["pipeline"] == "gmp"]
    _, flagged, _ = report_boards.board_tables(missed)
    assert flagged.rows[0][1].endswith("(1) at 91.6%")
    md, _ = write_report(root, out=tmp_path / "report")
    text = md.read_text()
    assert "2 epochs in total: top-1 (%) by method" in text and "torch global L1" in text
    data = report_boards.board_data(board_rows)
    assert json.dumps(data) and {d["label"] for d in data} >= {"GMP", "one-shot", "torch global L1"}


def _row(run_id, method, params, label):
    spec = {"seed": 0, "data": {"name": "fashion_mnist"}, "method": {"name": method, "label": label, "params": params}}
    return {"id": run_id, "label": label, "spec": json.dumps(spec)}


def test_a_method_targeted_by_another_param_is_one_row_across_its_targets():
    from prunekit.experiments.report_aggregate import display_labels

    rows = [_row("a", "sparsity_loss", {"budget": 0.02}, "sparsity_loss"),
            _row("b", "sparsity_loss", {"budget": 0.1}, "sparsity_loss"),
            _row("c", "gmp", {"sparsity": 0.9, "end_epoch": 5.0}, "GMP"),
            _row("d", "gmp", {"sparsity": 0.98, "end_epoch": 5.0}, "GMP"),
            _row("e", "gmp", {"sparsity": 0.98, "end_epoch": 4.0}, "GMP")]  # another recipe: its own row
    labels = display_labels(rows)
    assert labels["a"] == labels["b"] == "sparsity_loss"
    assert labels["c"] == labels["d"] == "GMP #1" and labels["e"] == "GMP #2"


def test_target_params_must_be_fields_of_the_params():
    from dataclasses import dataclass

    from prunekit.pipelines.registry import register_pipeline

    @dataclass
    class P:
        budget: float = 0.1

    with pytest.raises(ValueError, match=r"target_params \['fraction'\] are not fields of P"):
        register_pipeline("not_registered_here", P, target=lambda p: 1 - p.budget, target_params=("fraction",))
