"""Wanda (Sun et al. 2023): |W| * ||X_j||, compared per output row, exact counts."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import calibration
from prunekit.core.wanda import wanda


def _stack(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 6))


def _loader(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 12, generator=g) * torch.linspace(0.1, 3, 12) for _ in range(3)]


def test_scores_by_hand():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    stats = calibration.LayerStats(sq_norms=torch.tensor([16.0, 1.0], dtype=torch.float64))
    assert torch.allclose(wanda(w, stats=stats), torch.tensor([[4.0, 2.0], [12.0, 0.5]]))


def test_activation_norms_change_the_choice():
    # row 0: weights 1.0 and 0.5, but feature 1 is 10x louder: magnitude keeps w0, wanda keeps w1
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5]]))
    x = torch.tensor([[1.0, 10.0], [-1.0, 10.0]])
    model = nn.Sequential(layer)
    magnitude_model = nn.Sequential(nn.Linear(2, 1, bias=False))
    magnitude_model[0].weight.data.copy_(layer.weight.data)
    by_magnitude = pk.prune(magnitude_model, 0.5, score="magnitude")
    by_wanda = pk.prune(model, 0.5, score="wanda", calibration=[x])
    assert by_magnitude["0.weight"].tolist() == [[True, False]]
    assert by_wanda["0.weight"].tolist() == [[False, True]]
    assert model[0].weight.tolist() == [[0.0, 0.5]]   # Wanda never changes the kept weights


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_exact_counts_and_every_row_keeps_the_same_count(sparsity):
    model = _stack()
    mask = pk.prune(model, sparsity, score="wanda", calibration=_loader())
    total = sum(m.numel() for m in mask.values())
    assert mask.kept() == round((1 - sparsity) * total)
    for name, m in mask.items():     # uniform allocation, per-output rows: rows differ by <= 1
        per_row = m.sum(1)
        assert int(per_row.max() - per_row.min()) <= 1
        assert abs(int(m.sum()) - (1 - sparsity) * m.numel()) <= 1


def test_per_output_keeps_each_rows_top_scores():
    model = _stack()
    loader = _loader()
    stats = calibration.collect(_stack(), ["0.weight"], loader)
    scores = wanda(model[0].weight, stats=stats["0.weight"])
    mask = pk.prune(model, 0.5, score="wanda", calibration=loader)
    for row, keep in zip(scores, mask["0.weight"]):
        assert keep.sum() == 6
        assert row[keep].min() >= row[~keep].max()


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
def test_other_allocations_and_unstructured_pattern(allocation):
    model = _stack()
    mask = pk.prune(model, 0.6, score="wanda", allocation=allocation, pattern="unstructured",
                    calibration=_loader())
    total = sum(m.numel() for m in mask.values())
    assert mask.kept() == round(0.4 * total)
