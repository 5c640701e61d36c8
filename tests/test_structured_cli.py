"""``prunekit shrink`` (cli/structured.py) through its own parser (cli/main.py wires it)."""
import argparse
import json

import pytest
import torch

from prunekit.cli import structured as structured_cli
from prunekit.structured import load_shrunk


def _run(argv):
    parser = argparse.ArgumentParser()
    structured_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_shrink_writes_a_rebuildable_smaller_model(tmp_path, capsys):
    out = tmp_path / "r56b"
    assert _run(["shrink", "--model", "resnet56", "--width", "0.25", "--config", "resnet56-b",
                 "--latency-repeats", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params_shrunk"] < report["params"] and 0 < report["flops_ratio"] < 1
    assert report["flops_ratio"] == pytest.approx(report["flops_shrunk"] / report["flops"])  # kept
    assert report["flops_reduction"] == pytest.approx(1 / report["flops_ratio"])
    assert {"speedup_b1", "speedup_b64"} <= set(report)
    model, _ = load_shrunk(out)
    assert sum(p.numel() for p in model.parameters()) == report["params_shrunk"]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert "FLOPs" in capsys.readouterr().out


def test_shrink_rejects_a_bad_selection(tmp_path):
    with pytest.raises(KeyError, match="resnet56-a"):
        _run(["shrink", "--model", "resnet20", "--config", "nope", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):  # two selections: argparse refuses
        _run(["shrink", "--model", "resnet20", "--ratio", "0.5", "--fraction", "0.2", "--out", str(tmp_path)])
