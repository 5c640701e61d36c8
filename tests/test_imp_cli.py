"""``prunekit imp`` on the synthetic dataset: flags, outputs, resume, one-line errors."""
import json

import pytest

from prunekit.artifacts import load_model
from prunekit.cli.main import main

run = main


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # main() sets torch's threads from PRUNEKIT_THREADS (default: every core); the tests share
    # 2 cores with other work, where two threads per process run many times slower.
    monkeypatch.setenv("PRUNEKIT_THREADS", "1")


def test_imp_command_trains_prunes_and_resumes(tmp_path, capsys):
    out = tmp_path / "imp"
    argv = ["imp", "--model", "lenet_300_100", "--width", "0.25", "--data", "synthetic", "--epochs", "1",
            "--sparsity", "0.9", "--phases", "2", "--retrain-epochs", "1", "--retrain-schedule", "allr",
            "--allocation", "erk", "--out", str(out), "--quiet"]
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "sparsity 0.9000 (requested 0.9)" in printed and "3 epochs in total" in printed
    model, data = load_model(out / "model.pt")
    assert data["metrics"]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert data["metrics"]["total_epochs"] == 3
    for phase in ("phase_01", "phase_02"):
        assert (out / phase / "mask.pt").exists()
        load_model(out / phase / "model.pt")          # every operating point is a usable model file
    result = json.loads((out / "result.json").read_text())
    assert [r["phase"] for r in result["history"]] == [0, 1, 2]
    assert run(argv) == 0                               # a rerun loads the finished phases
    assert json.loads((out / "result.json").read_text())["history"] == result["history"]


def test_imp_from_a_trained_model_file(tmp_path, capsys):
    dense = tmp_path / "dense"
    assert main(["train", "--model", "lenet_300_100", "--width", "0.25", "--data", "synthetic", "--epochs", "2",
                 "--out", str(dense), "--quiet"]) == 0
    out = tmp_path / "imp"
    # --schedule: the older spelling of --retrain-schedule keeps working
    assert run(["imp", "--from", str(dense / "model.pt"), "--sparsity", "0.8", "--phases", "1",
                "--schedule", "lrw", "--out", str(out), "--quiet"]) == 0
    history = json.loads((out / "result.json").read_text())["history"]
    assert history[0]["stage"] == "given" and history[0]["epochs"] == 2


def test_imp_bad_input_is_one_line(tmp_path, capsys):
    code = main(["imp", "--model", "lenet_300_100", "--data", "synthetic", "--sparsity", "1.5",
                 "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sparsity must be a number in [0, 1)" in err
    assert main(["imp", "--data", "synthetic", "--sparsity", "0.5", "--out", str(tmp_path / "y")]) == 2
    assert "give --model" in capsys.readouterr().err
