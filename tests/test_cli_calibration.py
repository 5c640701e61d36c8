"""`prunekit prune` with scores that look at data (wanda, sparsegpt) and N:M patterns: a model
file calibrates on its dataset, an hf: folder on a text file; a missing input is one line."""
import json

import pytest
import torch

import prunekit as pk
from prunekit.artifacts import read_model_file, save_model
from prunekit.cli.main import main

from test_pretrained_sources import sentence_folder  # noqa: F401  (fixture: a tiny sentence-transformers folder)


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = pk.models.build("lenet_300_100")   # input widths 784, 300, 100: all divisible by 4
    path = tmp_path / "dense.pt"
    save_model(path, model, model_name="lenet_300_100", model_kwargs={}, dataset="synthetic")
    return path


@pytest.mark.parametrize("score", ["wanda", "sparsegpt"])
def test_model_file_calibrates_on_its_dataset_with_an_nm_pattern(model_file, tmp_path, score):
    out = tmp_path / f"{score}.pt"
    assert main(["prune", str(model_file), "--sparsity", "0.5", "--score", score, "--pattern", "2:4",
                 "--calibration-batches", "2", "--no-eval", "--out", str(out), "--quiet"]) == 0
    stored = read_model_file(out)
    for name, keep in stored["mask"].items():
        groups = keep.reshape(keep.shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all()), f"{name}: not 2 of every 4"
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["metrics"]["achieved_sparsity"] == pytest.approx(0.5)


def test_hf_folder_calibrates_on_a_text_file(sentence_folder, tmp_path):  # noqa: F811
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox\njumps over the lazy dog\n\nthe dog jumps\n")
    out = tmp_path / "pruned"
    assert main(["prune", "--model", f"hf:{sentence_folder}", "--sparsity", "0.5", "--score", "sparsegpt",
                 "--include", "*encoder*", "--calibration-text", str(text), "--seq-len", "16",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pk.models.get(f"hf:{out}") is not None      # the folder loads back


def test_a_data_score_without_calibration_text_is_one_line(sentence_folder, tmp_path, capsys):  # noqa: F811
    code = main(["prune", "--model", f"hf:{sentence_folder}", "--sparsity", "0.5", "--score", "wanda",
                 "--out", str(tmp_path / "x")])
    # transformers prints its own loading progress on stderr; prunekit's answer is one line
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("prunekit")]
    assert code == 2 and len(err) == 1 and "--calibration-text" in err[0]
