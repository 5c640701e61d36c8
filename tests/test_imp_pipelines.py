"""The IMP family in experiment specs: pipelines imp and gmp, baselines lottery and random_reinit."""
import json

import pytest

from prunekit.artifacts import load_model
from prunekit.experiments.project import Project
from prunekit.experiments.spec import Sweep
from prunekit.experiments.sweep import plan, run_sweep

SWEEP = """
name: imp_tiny
data: {name: synthetic, train_subset: 256}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 2, lr: 0.05, schedule: cosine}
method: {name: imp, params: {sparsity: 0.9, phases: 2, retrain_epochs: 1, schedule: allr}}
seeds: [0]
baselines: [lottery, random_reinit]
"""

GMP = """
name: gmp_tiny
data: {name: synthetic, train_subset: 256}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 2, lr: 0.05, schedule: cosine}
method: {name: gmp, params: {sparsity: 0.8, end_epoch: 1.5, prune_every: 1}}
seeds: [0]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("imp_project")
    sweep = Sweep.from_yaml(SWEEP)
    summary = run_sweep(root, sweep, quiet=True)
    assert not summary.failed and not summary.blocked
    return root, sweep, {p.spec.baseline.name if p.spec.baseline else p.spec.method.name: p.spec
                         for p in plan(sweep)}


def test_imp_run_counts_dense_and_phases(finished):
    root, _, specs = finished
    record = Project(root).read_record(specs["imp"].id)
    metrics = record["metrics"]
    assert metrics["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert metrics["epochs"] == 4                     # dense 2 + 2 phases x 1 epoch
    assert [p["phase"] for p in record["trail"]] == ["pruned_01", "phase_01", "pruned_02", "phase_02", "final"]
    assert {row["phase"] for row in record["history"]} == {"phase_01", "phase_02"}


def test_lottery_and_random_reinit_reuse_the_main_mask(finished):
    root, _, specs = finished
    project = Project(root)
    _, main = load_model(project.run_folder(specs["imp"].id) / "model.pt")
    for name in ("lottery", "random_reinit"):
        _, data = load_model(project.run_folder(specs[name].id) / "model.pt")
        for key, m in main["mask"].items():
            assert bool((data["mask"][key] == m).all())
        assert project.read_record(specs[name].id)["metrics"]["epochs"] == 4 + 2  # main's cost + own training


def test_rerun_does_nothing(finished):
    root, sweep, _ = finished
    assert run_sweep(root, sweep, quiet=True).ran == 0


def test_gmp_pipeline(tmp_path):
    sweep = Sweep.from_yaml(GMP)
    assert not run_sweep(tmp_path, sweep, quiet=True).failed
    spec = plan(sweep)[-1].spec
    record = json.loads((Project(tmp_path).run_folder(spec.id) / "metrics.json").read_text())
    assert record["metrics"]["achieved_sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert record["metrics"]["epochs"] == 2
    assert record["extra"]["gmp_end_step"] == 3       # 1.5 epochs of 2 steps (256 images / 128)


def test_spec_rejects_unknown_schedule():
    with pytest.raises(Exception, match="schedule"):
        Sweep.from_yaml(SWEEP.replace("schedule: allr", "schedule: cosine"))
