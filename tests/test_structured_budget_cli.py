"""``prunekit shrink --flops-ratio/--params-ratio --method ...`` (issue #19): every channel method
from the command line, achieved vs requested printed and in report.json; bad input one line."""
import json

import pytest
import torch

from prunekit.cli.main import main
from prunekit.structured import load_shrunk


@pytest.mark.parametrize("argv", [
    ["--flops-ratio", "0.5", "--method", "l1_filter"],
    ["--flops-ratio", "0.5", "--method", "l1_filter", "--allocation", "global", "--min-channels", "3"],
    ["--params-ratio", "0.5", "--method", "random", "--max-ratio", "0.6"],
    ["--flops-ratio", "0.5", "--method", "thinet", "--data", "synthetic", "--calib-per-class", "2"],
    ["--flops-ratio", "0.5", "--method", "lasso", "--data", "synthetic", "--calib-per-class", "2", "--scale", "full"],
])
def test_shrink_at_a_budget(tmp_path, capsys, argv):
    out = tmp_path / "small"
    assert main(["shrink", "--model", "lenet5", *argv, "--latency-repeats", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    b = report["budget"]
    assert b["met"] and abs(b["achieved"] - b["requested"]) <= b["step"] + 1e-12
    assert "achieved" in capsys.readouterr().out
    model, _ = load_shrunk(out)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    if "--min-channels" in argv:
        assert min(k for _, k in b["widths"].values()) >= 3
    assert "classifier.0" in b["widths"] or "features.3" in b["widths"]


@pytest.mark.parametrize("argv,message", [
    (["--flops-ratio", "0.5", "--method", "thinet"], "give --data"),
    (["--flops-ratio", "0.5", "--method", "nope"], "unknown channel method 'nope'"),
    (["--flops-ratio", "1.5"], "flops_ratio"),
    (["--flops-ratio", "0.5", "--method", "bn_scale"], "applies to no prunable layer"),
    (["--flops-ratio", "0.5", "--min-channels", "0"], "min_channels: must be an integer >= 1"),
])
def test_shrink_budget_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert main(["shrink", "--model", "lenet5", *argv, "--latency-repeats", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
