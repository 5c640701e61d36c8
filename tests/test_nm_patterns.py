"""N:M patterns with every score: exactly N kept in every group of M inputs; bad patterns."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import patterns
from prunekit.core.scores import names as score_names


def _stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 4),
                         nn.Flatten(), nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 4, 2), nn.Flatten())


def _loader():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 16, generator=g) for _ in range(2)]


@pytest.mark.parametrize("nm", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("score", score_names())
def test_every_group_keeps_exactly_n(score, nm):
    n, m = (int(v) for v in nm.split(":"))
    model = _stack()
    if m == 8:   # the conv has 4 inputs (1 x 2 x 2): 8 does not divide it
        model = nn.Sequential(*list(model)[:5])
    mask = pk.prune(model, 1 - n / m, score=score, pattern=nm, calibration=_loader(), seed=0)
    for name, keep in mask.items():
        groups = keep.reshape(keep.shape[0], -1, m)
        assert bool((groups.sum(-1) == n).all()), name
        assert int(keep.sum()) == keep.numel() * n // m
    weights = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(weights[name] != 0, keep)


def test_pattern_chooses_by_score_within_each_group():
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.0, 0.1, -0.3, 0.2]]))
    mask = pk.prune(nn.Sequential(layer), 0.5, pattern="2:4")
    assert mask["0.weight"].int().tolist() == [[0, 1, 1, 0, 0, 0, 1, 1]]


@pytest.mark.parametrize("bad, message", [
    ("4:4", "0 < N < M"), ("5:4", "0 < N < M"), ("0:4", "0 < N < M"),
    ("2-4", "unknown pattern"), ("two:four", "unknown pattern"), ("", "unknown pattern"),
])
def test_malformed_patterns(bad, message):
    with pytest.raises(ValueError, match=message):
        pk.prune(_stack(), 0.5, pattern=bad)


def test_m_must_divide_the_input_width():
    with pytest.raises(ValueError, match="pattern 2:8 needs an input width divisible by 8; 7.weight has 4 inputs"):
        pk.prune(_stack(), 0.75, pattern="2:8")


def test_sparsity_and_allocation_must_agree_with_the_pattern():
    with pytest.raises(ValueError, match="pass sparsity=0.5"):
        pk.prune(_stack(), 0.6, pattern="2:4")
    with pytest.raises(ValueError, match="leave allocation unset or 'uniform'"):
        pk.prune(_stack(), 0.5, pattern="2:4", allocation="global")
    with pytest.raises(ValueError, match="not 'per_output'"):
        pk.prune(_stack(), 0.5, score="sparsegpt", pattern="per_output", calibration=_loader())


def test_registry_lists_the_patterns():
    assert patterns.names() == ["per_output", "unstructured", "N:M"]
    assert patterns.get("2:4") == patterns.NM(2, 4)
