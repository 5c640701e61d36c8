"""Dense-equivalent models, and the threshold pipelines (ste_fixed, sparsity_loss, ltp) run by the
experiment runner with the dense_equivalent baseline."""
import math

import pytest
import torch

import prunekit as pk
from prunekit.experiments import sweep as sweep_mod
from prunekit.pipelines.dense_equivalent import dense_equivalent, equivalent_width


@pytest.mark.parametrize("name,kw", [("lenet5", {"in_channels": 1}), ("resnet20", {}), ("vgg11", {})])
@pytest.mark.parametrize("kept", [0.5, 0.15])
def test_channels_scale_by_sqrt_kept_and_params_match(name, kw, kept):
    model = dense_equivalent(name, kept, **kw)
    info = model.dense_equivalent_info
    assert info["width"] == pytest.approx(math.sqrt(kept))
    assert info["params"] == sum(p.numel() for p in model.parameters())
    # every hidden channel count is floor(c * sqrt(kept)); inputs and classes are not scaled
    full = pk.models.get(name, **kw)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    full_convs = [m for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == full_convs[0].in_channels
    for thin, wide in zip(convs, full_convs):
        assert thin.out_channels == max(1, int(wide.out_channels * math.sqrt(kept)))
    assert list(model.modules())[-1].out_features == 10 if isinstance(list(model.modules())[-1], torch.nn.Linear) else True
    assert info["params"] <= info["target_params"] * 1.05
    assert abs(info["ratio"] - kept) < 0.03


def test_equivalent_width_and_errors():
    assert equivalent_width(0.25, 0.5) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="kept_fraction"):
        dense_equivalent("lenet5", 0.0)
    with pytest.raises(ValueError):
        equivalent_width(1.5)


def test_building_does_not_change_the_rng_stream():
    torch.manual_seed(3)
    a = dense_equivalent("lenet5", 0.3, in_channels=1)
    after_a = torch.rand(1)
    torch.manual_seed(3)
    b = pk.models.get("lenet5", in_channels=1, width=math.sqrt(0.3))
    after_b = torch.rand(1)
    assert torch.equal(after_a, after_b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ----------------------------------------------------------------- through the runner

SWEEP = """
name: thresholds_tiny
data: {name: synthetic, train_subset: 256}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 2, lr: 0.05, schedule: cosine}
method: {name: sparsity_loss, params: {budget: 0.3, min_weights: 0, r_lr_factor: 0.1}}
seeds: [0]
baselines: [dense_equivalent]
"""

LTP = """
name: ltp_tiny
data: {name: synthetic, train_subset: 256}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 2, lr: 0.05, schedule: constant}
method: {name: ltp, params: {lam: 20.0, trail: [0.1, 0.2, 0.3], finetune_epochs: 1}}
seeds: [0]
"""

STE = """
name: ste_tiny
data: {name: synthetic, train_subset: 256}
model: {name: lenet_300_100, width: 0.25}
train: {epochs: 1, lr: 0.05}
method: {name: ste_fixed, params: {sparsity: 0.7, bound: topk, min_weights: 0}}
seeds: [0]
"""


def _run(tmp_path, text):
    from prunekit.experiments.project import Project
    from prunekit.experiments.spec import Sweep

    sweep = Sweep.from_yaml(text)
    summary = sweep_mod.run_sweep(tmp_path, sweep, quiet=True)
    assert not summary.failed and not summary.blocked
    project = Project(tmp_path)
    return {(p.spec.baseline.name if p.spec.baseline else p.spec.method.name): project.read_record(p.spec.id)
            for p in sweep_mod.plan(sweep)}


def test_sparsity_loss_pipeline_and_dense_equivalent_baseline(tmp_path):
    records = _run(tmp_path, SWEEP)
    main, thin = records["sparsity_loss"]["metrics"], records["dense_equivalent"]
    assert main["requested_sparsity"] == pytest.approx(0.7)
    assert 0.0 < main["achieved_sparsity"] < 1.0
    predicted = records["sparsity_loss"]["extra"]["predicted_sparsity"]  # the loss's Gaussian estimate
    assert 0.0 < predicted < 1.0
    kept = main["nonzero_params"] / main["params"]
    assert thin["extra"]["kept_fraction"] == pytest.approx(kept)
    assert thin["metrics"]["params"] == thin["extra"]["equivalent_params"] < main["params"]
    assert thin["metrics"]["achieved_sparsity"] < 0.05  # a dense model


def test_ltp_pipeline_records_the_trail(tmp_path):
    record = _run(tmp_path, LTP)["ltp"]
    phases = [p["phase"] for p in record["trail"]]
    assert "finalized" in phases and phases[-1] == "final"
    trail = [p for p in record["trail"] if p["phase"].startswith("trail_")]
    assert trail, phases
    assert [p["sparsity"] for p in trail] == sorted(p["sparsity"] for p in trail)
    finalized = next(p for p in record["trail"] if p["phase"] == "finalized")
    assert record["metrics"]["achieved_sparsity"] == pytest.approx(finalized["sparsity"])  # fine-tuning keeps the mask


def test_ste_fixed_pipeline_hits_the_sparsity(tmp_path):
    record = _run(tmp_path, STE)["ste_fixed"]
    assert record["metrics"]["achieved_sparsity"] == pytest.approx(0.7, abs=2e-3)


def test_the_threshold_examples_load():
    from pathlib import Path

    from prunekit.experiments.spec import Sweep

    root = Path(__file__).resolve().parents[1] / "examples"
    files = sorted(root.glob("thresholds_*.yaml")) + sorted(root.glob("ltp_*.yaml"))
    assert len(files) >= 4
    for f in files:
        assert sweep_mod.plan(Sweep.from_yaml(f.read_text())), f.name


def test_train_sparse_cli(tmp_path):
    import argparse
    import json

    from prunekit.cli import thresholds

    parser = argparse.ArgumentParser()
    thresholds.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "ltp"
    # --relative-tau: at this tiny budget (recipe lr 0.1 for tau, no pretraining) the paper's
    # absolute tau overshoots to 100% sparsity; this test is about the CLI's plumbing.
    args = parser.parse_args(["train-sparse", "--method", "ltp", "--lam", "20", "--trail", "0.1", "0.2", "--relative-tau",
                              "--model", "lenet_300_100", "--width", "0.25", "--data", "synthetic",
                              "--train-subset", "256", "--epochs", "1", "--finetune-epochs", "1", "--quiet",
                              "--out", str(out)])
    assert args.func(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert 0 < result["achieved_sparsity"] < 1 and result["trail"]
    from prunekit.artifacts import load_model

    model, data = load_model(out / "model.pt")
    for name, keep in data["mask"].items():
        assert bool((dict(model.named_parameters())[name][~keep] == 0).all())
    with pytest.raises(ValueError, match="--sparsity"):
        bad = parser.parse_args(["train-sparse", "--method", "ste_fixed", "--model", "lenet5", "--out", str(tmp_path / "x")])
        bad.func(bad)


def test_ltp_pipeline_after_dense_pretraining(tmp_path):
    text = LTP.replace("epochs: 2,", "epochs: 3,").replace("finetune_epochs: 1", "pretrain_epochs: 1, ltp_lr: 0.01")
    record = _run(tmp_path, text)["ltp"]
    assert record["metrics"]["epochs"] == 3  # 1 dense + 2 LTP: the spec's budget
    assert [(row["phase"], row["lr"]) for row in record["history"]] == [
        ("pretrain", 0.05), ("train", 0.01), ("train", 0.01)]  # constant schedule: the lr of each phase


def test_ltp_pretrain_epochs_must_leave_ltp_epochs():
    from prunekit.pipelines.threshold_pipelines import LtpParams, run_ltp

    class Ctx:
        recipe = {"epochs": 2}
        model = None

    with pytest.raises(ValueError, match="pretrain_epochs \\(2\\) must be below train.epochs \\(2\\)"):
        run_ltp(Ctx(), LtpParams(pretrain_epochs=2))


def test_train_sparse_cli_pretrains_then_runs_the_method(tmp_path):
    import argparse
    import json

    from prunekit.cli import thresholds

    parser = argparse.ArgumentParser()
    thresholds.register(parser.add_subparsers(dest="command"))
    common = ["train-sparse", "--method", "ltp", "--lam", "20", "--trail", "0.1", "--model", "lenet_300_100",
              "--width", "0.25", "--data", "synthetic", "--train-subset", "256", "--schedule", "constant", "--quiet"]
    args = parser.parse_args(common + ["--epochs", "2", "--pretrain-epochs", "1", "--lr", "0.05",
                                       "--method-lr", "0.01", "--out", str(tmp_path / "a")])
    assert args.func(args) == 0
    history = json.loads((tmp_path / "a" / "result.json").read_text())["history"]
    assert [(r.get("phase", "train"), r["lr"]) for r in history] == [("pretrain", 0.05), ("train", 0.01)]
    bad = parser.parse_args(common + ["--epochs", "2", "--pretrain-epochs", "2", "--out", str(tmp_path / "b")])
    with pytest.raises(ValueError, match=r"--pretrain-epochs must be in \[0, --epochs\)"):
        bad.func(bad)


def test_train_sparse_cli_reports_the_sparsity_loss_prediction_beside_the_achieved_sparsity(tmp_path):
    import argparse
    import json

    from prunekit.cli import thresholds

    parser = argparse.ArgumentParser()
    thresholds.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-sparse", "--method", "sparsity_loss", "--budget", "0.3", "--min-weights", "0",
                              "--model", "lenet_300_100", "--width", "0.25", "--data", "synthetic",
                              "--train-subset", "256", "--epochs", "1", "--quiet", "--out", str(tmp_path / "sl")])
    assert args.func(args) == 0
    result = json.loads((tmp_path / "sl" / "result.json").read_text())
    assert result["requested_sparsity"] == pytest.approx(0.7)
    assert 0.0 < result["predicted_sparsity"] < 1.0 and 0.0 < result["achieved_sparsity"] < 1.0
