"""The public API's verbs, as the README's "For contributors" section states them."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.registry import Registry


def test_build_makes_an_instance_and_get_returns_the_entry():
    torch.manual_seed(0)
    built = pk.models.build("lenet_300_100", width=0.25)
    torch.manual_seed(0)
    aliased = pk.models.get("lenet_300_100", width=0.25)       # the kept alias builds too
    assert isinstance(built, nn.Module)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), aliased.state_dict().values()))
    method = pk.methods.build("ste_fixed", sparsity=0.5)
    assert isinstance(method, pk.methods.get("ste_fixed"))
    assert isinstance(pk.methods.get("ste_fixed"), type)
    assert callable(pk.data.get("synthetic")) and callable(pk.core.scores.get("magnitude"))


@pytest.mark.parametrize("module", ["models", "methods", "data", "core.scores", "core.allocation"])
def test_every_registry_module_lists_names_and_rejects_unknown_ones(module):
    mod = eval(f"pk.{module}")
    assert mod.names() and mod.names() == sorted(mod.names())
    with pytest.raises(KeyError, match="choose one of"):
        mod.get("no-such-name")


def test_shrink_returns_a_new_model_and_prune_acts_in_place(tiny_net):
    x = torch.randn(1, *tiny_net.input_shape)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    small = pk.structured.shrink(tiny_net, x, {"conv": [0, 1]})
    assert small is not tiny_net and small.conv.out_channels == 6 and tiny_net.conv.out_channels == 8
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    mask = pk.prune(tiny_net, 0.5)
    assert isinstance(mask, pk.Mask) and int(torch.count_nonzero(tiny_net.fc1.weight)) < tiny_net.fc1.weight.numel()


def test_registry_kind_names_the_registry_in_errors():
    reg = Registry("widget")
    reg.register("a")(object())
    with pytest.raises(KeyError, match="unknown widget 'b'; choose one of: a"):
        reg.get("b")
