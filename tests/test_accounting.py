"""Parameter and FLOPs accounting against hand-computed values."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.accounting import count_parameters, flops_per_module, report

from conftest import TinyNet


def test_flops_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    per_module, total = flops_per_module(model, input_shape=(3, 8, 8))
    conv = 2 * 8 * 3 * 9 * 6 * 6        # 2 FLOPs per multiply-add, 6x6 outputs
    fc = 2 * 288 * 10
    assert per_module == {"0": conv, "2": fc}
    assert total == conv + fc


def test_report_counts_and_effective_flops(tiny_net):
    pk.prune(tiny_net, 0.75, allocation="uniform")
    rep = report(tiny_net)
    assert rep.prunable_params == 216 + 72 + 4096 + 320
    assert rep.prunable_nonzero == round(0.25 * rep.prunable_params)
    assert rep.sparsity == pytest.approx(0.75, abs=1e-4)
    total = sum(p.numel() for p in tiny_net.parameters())
    assert rep.total_params == total
    for row in rep.layers:
        assert row.effective_flops == round(row.flops * row.kept / row.params)
    assert rep.flops - rep.effective_flops == sum(r.flops - r.effective_flops for r in rep.layers)
    d = rep.as_dict()
    assert d["layers"][0]["name"] == "conv.weight" and d["prunable_nonzero"] == rep.prunable_nonzero
    text = rep.table()
    assert "depthwise.weight" in text and "sparsity 0.7500" in text


def test_count_parameters_sees_biases_and_bn(tiny_net):
    counts = count_parameters(tiny_net)
    assert counts["total"] - counts["prunable"] == 8 + 8 + 16 + 32 + 10   # biases + BN affine


def test_flops_need_an_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        report(nn.Linear(3, 3))
    assert report(nn.Linear(3, 3), flops=False).flops is None


def test_kept_fraction_reads_both_conventions_of_stored_ratios():
    """*_ratio metrics are fractions kept; records written before that stored dense / pruned
    (> 1 for a pruned model): both read as the fraction kept."""
    from prunekit.core.accounting import kept_fraction

    assert kept_fraction(0.25) == 0.25
    assert kept_fraction(4.0) == 0.25  # an old record: dense / pruned
    assert kept_fraction(1.0) == 1.0
    for bad in (0, -2.0, None, True, "0.5"):
        with pytest.raises(ValueError, match="must be a positive number"):
            kept_fraction(bad)
