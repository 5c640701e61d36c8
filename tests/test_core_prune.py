"""Exact counts, hand-computed scores and allocations, iterative shrinking, bad inputs."""
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import ALLOCATIONS, SCORES, Mask, erk_densities, prunable_parameters
from prunekit.core.allocation import PrunableTensor
from prunekit.core.scores import lamp
from prunekit.core.thresholds import global_counts, largest_remainder, topk_mask

from conftest import TinyNet

SPARSITIES = [0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.98]


def _prunable_total(model):
    return sum(p.numel() for p in prunable_parameters(model).values())


@pytest.mark.parametrize("allocation", ALLOCATIONS.names())
@pytest.mark.parametrize("score", SCORES.names())
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_exact_kept_count_for_every_score_and_allocation(score, allocation, sparsity):
    torch.manual_seed(1)
    model = TinyNet()
    total = _prunable_total(model)
    try:
        mask = pk.prune(model, sparsity, score=score, allocation=allocation, seed=0)
    except ValueError as err:
        # uniform+ keeps the first conv dense and 20% of the last linear: infeasible when
        # the budget is smaller than that, and it must say so.
        assert allocation == "uniform_plus" and "cannot reach" in str(err)
        return
    expected = round((1 - sparsity) * total)
    assert mask.kept() == expected
    # the weights themselves carry exactly the mask
    params = prunable_parameters(model)
    assert sum(int((p != 0).sum()) for p in params.values()) == expected
    for name, p in params.items():
        assert torch.equal(p != 0, mask[name])
    if allocation in ("erk",) or score == "lamp" and allocation == "global":
        assert all(int(m.sum()) > 0 for m in mask.values()), "LAMP/ERK never empty a layer"


def test_lamp_scores_by_hand():
    w = torch.tensor([3.0, -1.0, 2.0])
    # ascending |w|: 1, 2, 3 -> squares 1, 4, 9; suffix sums 14, 13, 9
    assert torch.allclose(lamp(w), torch.tensor([1.0, 1 / 14, 4 / 13], dtype=torch.float64))
    assert lamp(torch.randn(5, 5)).max().item() == pytest.approx(1.0)


def test_lamp_global_pruning_by_hand():
    model = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, -1.0, 2.0]]))   # lamp: 1, 1/14, 4/13
        model[1].weight.copy_(torch.tensor([[0.1], [0.2]]))      # lamp: 0.01/0.05=0.2, 1
    mask = pk.prune(model, 0.4, score="lamp")   # keep 3 of 5: scores 1, 1, 4/13
    assert mask["0.weight"].tolist() == [[True, False, True]]
    assert mask["1.weight"].tolist() == [[False], [True]]
    # plain magnitude would have emptied the second layer
    model2 = nn.Sequential(nn.Linear(3, 1, bias=False), nn.Linear(1, 2, bias=False))
    model2.load_state_dict({"0.weight": torch.tensor([[3.0, -1.0, 2.0]]), "1.weight": torch.tensor([[0.1], [0.2]])})
    assert int(pk.prune(model2, 0.4)["1.weight"].sum()) == 0


def test_erk_densities_by_hand():
    # (10,5): raw (10+5)/50 = 0.3; (4,10): raw 14/40 = 0.35; eps = 0.5*90 / (15+14) = 45/29
    d = erk_densities([(10, 5), (4, 10)], 0.5)
    assert d == pytest.approx([0.3 * 45 / 29, 0.35 * 45 / 29])
    tensors = [PrunableTensor("a", (10, 5), torch.zeros(10, 5)), PrunableTensor("b", (4, 10), torch.zeros(4, 10))]
    # real counts 23.28 and 21.72 -> floors 23 + 21, the larger remainder (b) gets the last one
    assert ALLOCATIONS.get("erk")(tensors, 0.5) == [23, 22]


def test_erk_saturated_layer_is_dense_and_factor_recomputed():
    # (2,3): raw 5/6 saturates; then eps = (1000.6 - 6) / 200 for the big layer
    d = erk_densities([(100, 100), (2, 3)], 0.1)
    assert d[1] == 1.0
    assert d[0] == pytest.approx((0.1 * 10006 - 6) / 10000)
    tensors = [PrunableTensor("a", (100, 100), torch.zeros(100, 100)), PrunableTensor("b", (2, 3), torch.zeros(2, 3))]
    assert ALLOCATIONS.get("erk")(tensors, 0.1) == [995, 6]


def test_uniform_plus_by_hand():
    shapes = [(4, 1, 3, 3), (8, 4, 3, 3), (10, 72)]   # 36, 288, 720 weights
    tensors = [PrunableTensor(str(i), s, torch.zeros(s)) for i, s in enumerate(shapes)]
    counts = ALLOCATIONS.get("uniform_plus")(tensors, 0.3)   # keep round(0.3*1044) = 313
    # first conv dense (36); sharing 277 over 1008 gives 0.275 >= 0.2 for the last linear
    assert counts[0] == 36 and sum(counts) == 313
    assert counts[1] / 288 == pytest.approx(counts[2] / 720, abs=2 / 288)
    counts = ALLOCATIONS.get("uniform_plus")(tensors, 0.2)   # keep 209: 36 + 144 (20% of 720) + 29
    assert counts == [36, 29, 144]
    with pytest.raises(ValueError, match="cannot reach"):
        ALLOCATIONS.get("uniform_plus")(tensors, 0.1)


def test_uniform_keeps_same_fraction_everywhere(tiny_net):
    mask = pk.prune(tiny_net, 0.75, allocation="uniform")
    for row in mask.layer_report():
        assert abs(row["kept"] - 0.25 * row["params"]) < 1


def test_ties_are_broken_by_index_deterministically():
    scores = torch.ones(10)
    assert topk_mask(scores, 3).tolist() == [True] * 3 + [False] * 7
    # global ties go to the earlier tensor first
    assert global_counts([torch.ones(4), torch.ones(4)], 5) == [4, 1]
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.5)
    mask = pk.prune(model, 0.75)
    assert mask["weight"].reshape(-1).tolist() == [True] * 4 + [False] * 12


def test_largest_remainder_sums_exactly():
    assert largest_remainder([1.5, 1.5, 1.0], 4, [10, 10, 10]) == [2, 1, 1]
    assert sum(largest_remainder([0.3] * 7, 2, [1] * 7)) == 2


def test_iterative_pruning_only_shrinks_and_hits_exact_counts(tiny_net):
    total = _prunable_total(tiny_net)
    previous = None
    for s in [0.2, 0.5, 0.8, 0.9]:
        mask = pk.prune(tiny_net, s, score="random", allocation="global", seed=int(s * 10), mask=previous)
        assert mask.kept() == round((1 - s) * total)
        if previous is not None:
            assert mask.is_subset_of(previous)
        previous = mask


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
def test_iterative_without_explicit_mask_uses_the_zeros(tiny_net, allocation):
    first = pk.prune(tiny_net, 0.5, allocation=allocation)
    second = pk.prune(tiny_net, 0.8, allocation=allocation)
    assert second.is_subset_of(first)
    assert second.kept() == round(0.2 * _prunable_total(tiny_net))


def test_lower_sparsity_than_the_model_has_is_an_error(tiny_net):
    pk.prune(tiny_net, 0.8)
    with pytest.raises(ValueError, match="only removes weights"):
        pk.prune(tiny_net, 0.5)


def test_same_seed_same_random_mask():
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    ma = pk.prune(a, 0.7, score="random", seed=3)
    mb = pk.prune(b, 0.7, score="random", seed=3)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf"), "0.5", True, None])
def test_bad_sparsity_is_rejected_with_the_accepted_range(tiny_net, bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pk.prune(tiny_net, bad)


def test_unknown_names_list_the_choices(tiny_net):
    with pytest.raises(KeyError, match="lamp.*magnitude.*random"):
        pk.prune(tiny_net, 0.5, score="magnitud")
    with pytest.raises(KeyError, match="erk.*global.*uniform"):
        pk.prune(tiny_net, 0.5, allocation="lamp")


def test_model_without_prunable_tensor_is_an_error():
    with pytest.raises(ValueError, match="no prunable tensor"):
        pk.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.5)
    with pytest.raises(ValueError, match="no prunable tensor"):
        pk.prune(TinyNet(), 0.5, include="nothing*")


def test_nan_weights_are_rejected(tiny_net):
    with torch.no_grad():
        tiny_net.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pk.prune(tiny_net, 0.5)


def test_include_exclude_and_types(tiny_net):
    names = list(prunable_parameters(tiny_net, exclude=["fc2"]))
    assert names == ["conv.weight", "depthwise.weight", "fc1.weight"]
    assert list(prunable_parameters(tiny_net, types=[nn.Linear])) == ["fc1.weight", "fc2.weight"]
    mask = pk.prune(tiny_net, 0.5, include="fc*")
    assert set(mask) == {"fc1.weight", "fc2.weight"}
    assert bool((tiny_net.conv.weight != 0).all()), "excluded tensors are untouched"
    assert bool((tiny_net.conv.bias != 0).all()) and bool((tiny_net.fc1.bias != 0).all()), "biases untouched"


def test_global_threshold_on_more_than_16m_weights():
    # torch.quantile refuses inputs above 16M elements; the exact selection must not.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096, bias=False), nn.Linear(4096, 200, bias=False))
    n = 4096 * 4096 + 4096 * 200
    mask = pk.prune(model, 0.9)
    assert mask.kept() == round(0.1 * n)


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
def test_lamp_fast_path_equals_per_weight_lamp_scores(monkeypatch, allocation):
    """prune() keeps top-|w| per layer with counts from sorted LAMP scores; the generic path
    with per-weight LAMP scores must choose the same weights (ties and earlier pruning too)."""
    from prunekit.core import scores

    torch.manual_seed(4)
    base = TinyNet()
    with torch.no_grad():
        base.fc1.weight[:, :8] = 0.25          # many exact ties
    masks = []
    for fast in (True, False):
        model = TinyNet()
        model.load_state_dict(base.state_dict())
        if not fast:
            monkeypatch.delattr(scores.lamp, "top_scores")
        first = pk.prune(model, 0.4, score="lamp", allocation=allocation)
        masks.append((first, pk.prune(model, 0.85, score="lamp", allocation=allocation)))
    (f1, f2), (s1, s2) = masks
    for k in f1:
        assert torch.equal(f1[k], s1[k]) and torch.equal(f2[k], s2[k]), k
