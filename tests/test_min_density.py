"""Layer collapse: a tensor pruned to 0 weights is reported (one warning naming it), and
``min_density`` keeps at least ceil(min_density * numel) weights in every tensor, for every
allocation, with the total kept still exactly round((1 - s) * N)."""
import math
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import ALLOCATIONS, prunable_parameters
from prunekit.core.allocation import apply_floors, density_floors
from prunekit.core.prune import EmptyTensorWarning

from conftest import TORCHVISION, TinyNet


class Collapsing(nn.Module):
    """A large layer of big weights between two small layers of tiny ones: global magnitude
    at high sparsity takes every weight of the small layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.small_in = nn.Linear(4, 10, bias=False)
        self.big = nn.Linear(10, 100, bias=False)
        self.small_out = nn.Linear(100, 3, bias=False)
        with torch.no_grad():
            self.small_in.weight.mul_(1e-3)
            self.small_out.weight.mul_(1e-3)
            self.big.weight.add_(torch.sign(self.big.weight))


TOTAL = 4 * 10 + 10 * 100 + 100 * 3


def test_emptied_tensors_are_named_in_one_warning():
    with pytest.warns(EmptyTensorWarning) as caught:
        mask = pk.prune(Collapsing(), 0.5)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "2 tensor(s)" in message and "small_in.weight" in message and "small_out.weight" in message
    assert int(mask["small_in.weight"].sum()) == 0 and "\n" not in message


def test_no_warning_when_every_tensor_keeps_a_weight():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptyTensorWarning)
        mask = pk.prune(Collapsing(), 0.5, min_density=0.01)
    assert [w for w in caught if issubclass(w.category, EmptyTensorWarning)] == []
    assert all(int(m.sum()) >= 1 for m in mask.values())


def test_floor_by_hand():
    # floors ceil(0.1 * n): 4, 100, 30 (n = 40, 1000, 300); global gives 0 to the small ones
    model = Collapsing()
    mask = pk.prune(model, 0.5, min_density=0.1)
    counts = {n: int(m.sum()) for n, m in mask.items()}
    assert counts == {"small_in.weight": 4, "big.weight": 670 - 4 - 30, "small_out.weight": 30}
    assert mask.kept() == round(0.5 * TOTAL)


def test_floor_reads_the_decimal():
    assert density_floors([100, 300], 0.07) == [7, 21], "0.07 * 100 is 7, not the float 7.000000000000001"
    assert density_floors([100], 0.07, capacity=[5]) == [5]


def test_apply_floors_takes_in_proportion_to_the_margin():
    # counts 0, 60, 20 with floors 10, 10, 10: the 10 needed come 50:10 from the two donors
    assert apply_floors([0, 60, 20], [10, 10, 10], 0.1) == [10, 52, 18]


def test_impossible_floor_is_an_error():
    with pytest.raises(ValueError, match="min_density=0.6 keeps at least"):
        pk.prune(Collapsing(), 0.5, min_density=0.6)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_min_density_says_what_is_accepted(bad):
    with pytest.raises(ValueError, match=r"min_density must be None or a number in \(0, 1\]"):
        pk.prune(TinyNet(), 0.5, min_density=bad)


@pytest.mark.parametrize("allocation", ALLOCATIONS.names())
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_every_allocation_honours_the_floor_exactly(allocation, sparsity):
    torch.manual_seed(3)
    model = TinyNet()
    total = sum(p.numel() for p in prunable_parameters(model).values())
    try:
        mask = pk.prune(model, sparsity, allocation=allocation, min_density=0.02)
    except ValueError as err:
        assert allocation == "uniform_plus" and "cannot reach" in str(err)
        return
    assert mask.kept() == round((1 - sparsity) * total)
    for name, m in mask.items():
        assert int(m.sum()) >= math.ceil(0.02 * m.numel()), name


def test_a_newly_registered_allocation_gets_the_floor_too(monkeypatch):
    """The floor is applied after any allocation, e.g. one that fills tensors in order."""
    from prunekit.core.thresholds import largest_remainder

    def first_come(tensors, density):
        total = round(density * sum(t.numel for t in tensors))
        sizes = [t.numel for t in tensors]
        counts = []
        for n in sizes:
            counts.append(min(n, total - sum(counts)))
        return largest_remainder(counts, total, sizes)

    monkeypatch.setitem(ALLOCATIONS._entries, "first_come", first_come)
    mask = pk.prune(Collapsing(), 0.5, allocation="first_come", min_density=0.1)
    # first_come keeps 40, 630, 0; floors 4, 100, 30: the 30 for small_out come from the
    # margins 36 and 530 in proportion: 1.9 and 28.1, rounded by largest remainder to 2 and 28
    assert [int(m.sum()) for m in mask.values()] == [38, 602, 30]


def test_floor_with_an_earlier_mask_never_regrows():
    model = Collapsing()
    first = pk.prune(model, 0.5, min_density=0.01)
    second = pk.prune(model, 0.8, mask=first, min_density=0.01)
    assert second.is_subset_of(first) and second.kept() == round(0.2 * TOTAL)
    assert all(int(m.sum()) >= math.ceil(0.01 * m.numel()) for m in second.values())


@pytest.mark.skipif(not TORCHVISION, reason="torchvision models do not import here")
def test_mobilenet_v2_global_90_collapses_without_a_floor_and_not_with_one():
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    model = mobilenet_v2()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(EmptyTensorWarning) as caught:
        mask = pk.prune(model, 0.9)
    empty = [n for n, m in mask.items() if not bool(m.any())]
    assert len(empty) >= 1 and "classifier.1.weight" in empty
    message = str(caught[0].message)
    assert f"{len(empty)} tensor(s)" in message and empty[0] in message

    model.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyTensorWarning)
        mask = pk.prune(model, 0.9, min_density=0.01)
    total = sum(m.numel() for m in mask.values())
    assert mask.kept() == round(0.1 * total)
    assert all(int(m.sum()) >= math.ceil(0.01 * m.numel()) for m in mask.values())


def test_cli_and_oneshot_expose_min_density():
    from prunekit.cli.main import build_parser
    from prunekit.pipelines.oneshot import OneShotParams

    args = build_parser().parse_args(["prune", "m.pt", "--sparsity", "0.9", "--min-density", "0.01", "--out", "o.pt"])
    assert args.min_density == 0.01
    assert build_parser().parse_args(["prune", "m.pt", "--sparsity", "0.9", "--out", "o.pt"]).min_density is None
    assert OneShotParams(sparsity=0.9).min_density is None
