"""The command line: train -> prune -> eval on the synthetic dataset, and one-line errors."""
import json

import pytest
import torch

from prunekit.artifacts import load_model
from prunekit.cli.main import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "dense"
    code = main(["train", "--model", "lenet_300_100", "--data", "synthetic", "--epochs", "1", "--lr", "0.05",
                 "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_train_writes_a_rebuildable_model_file(trained):
    model, data = load_model(trained / "model.pt")
    assert data["model"]["name"] == "lenet_300_100" and data["dataset"] == "synthetic"
    assert data["metrics"]["test_top1"] > 50
    assert (trained / "checkpoints" / "last.pt").exists()


def test_prune_fine_tune_and_eval(trained, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code = main(["prune", str(trained / "model.pt"), "--sparsity", "0.9", "--allocation", "erk",
                 "--finetune-epochs", "1", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "requested sparsity 0.9000, achieved 0.9000" in printed
    model, data = load_model(out)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    kept = sum(int((p != 0).sum()) for p in weights)
    assert kept == round(0.1 * sum(p.numel() for p in weights))
    assert set(data["mask"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["metrics"]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-6)
    assert main(["eval", str(out)]) == 0
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["prune", "MODEL", "--sparsity", "1.5", "--out", "x.pt"], "[0, 1)"),
    (["prune", "MODEL", "--sparsity", "0.5", "--score", "magnitud", "--out", "x.pt"], "lamp, magnitude, random"),
    (["prune", "MODEL", "--sparsity", "0.5", "--allocation", "lamp", "--out", "x.pt"], "erk, global, uniform"),
    (["train", "--model", "lenet", "--data", "synthetic", "--out", "OUT"], "lenet5, lenet_300_100"),
    (["train", "--model", "lenet5", "--data", "fmnist", "--out", "OUT"], "fashion_mnist"),
    (["eval", "BAD"], "cannot read checkpoint"),
    (["eval", "MISSING"], "no checkpoint"),
])
def test_bad_input_is_one_line_and_exit_code_2(trained, tmp_path, capsys, argv, needle):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    subst = {"MODEL": str(trained / "model.pt"), "BAD": str(bad), "MISSING": str(tmp_path / "nope.pt"),
             "OUT": str(tmp_path / "out"), "x.pt": str(tmp_path / "x.pt")}
    argv = [subst.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert bad.read_bytes() == b"garbage", "a bad file is never overwritten"


def test_demo_small(tmp_path, capsys):
    from prunekit.cli.demo import run_demo

    rows = run_demo(out=tmp_path, epochs=1, finetune_epochs=1, finetune_subset=512, dataset="synthetic",
                    model_name="lenet_300_100", sparsities=(0.5, 0.9), quiet=True)
    assert len(rows) == 2 * 5
    ok = [r for r in rows if "error" not in r]
    assert all(abs(r["achieved_sparsity"] - r["requested_sparsity"]) < 1e-4 for r in ok)
    assert (tmp_path / "accuracy_vs_sparsity.png").stat().st_size > 1000
    # a rerun skips what is done
    again = run_demo(out=tmp_path, epochs=1, finetune_epochs=1, finetune_subset=512, dataset="synthetic",
                     model_name="lenet_300_100", sparsities=(0.5, 0.9), quiet=True)
    assert again == rows
