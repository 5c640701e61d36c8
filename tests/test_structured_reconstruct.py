"""ThiNet and LASSO channel selection with least-squares refit reconstruct the next layer's
output better than L1-filter pruning at the same layer and ratio."""
import pytest
import torch

import prunekit as pk
from prunekit.structured.reconstruct import (lasso_select, prune_with_reconstruction, reconstruction_error,
                                             thinet_select)


def test_thinet_greedy_picks_channels_that_cancel_out():
    # channels 0 and 1 cancel exactly; channel 2 is large; channel 3 is small
    z = torch.tensor([[1.0, -1.0, 5.0, 0.1], [2.0, -2.0, 4.0, -0.1], [-1.0, 1.0, 6.0, 0.2]])
    assert thinet_select(z, 1) == [3]
    assert thinet_select(z, 3) == [0, 1, 3]


def test_lasso_keeps_the_channels_that_explain_the_output():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 6, generator=g, dtype=torch.float64)
    z[:, [1, 4]] *= 0.01  # two channels contribute almost nothing
    assert lasso_select(z, 2) == [1, 4]


@pytest.mark.parametrize("method", ["thinet", "lasso"])
def test_reconstruction_beats_l1_filter_on_the_same_layer_and_ratio(method):
    torch.manual_seed(0)
    model = pk.models.get("vgg11", width=0.25).eval()
    images = torch.randn(16, 3, 32, 32)
    name, nxt = "features.8", "features.11"  # conv3_1 (64 ch) -> conv3_2
    l1 = prune_with_reconstruction(model, name, nxt, images, 0.5, "l1_filter")
    ours = prune_with_reconstruction(model, name, nxt, images, 0.5, method, samples=1500)
    held_out = torch.randn(8, 3, 32, 32)
    e_l1, e_ours = (reconstruction_error(model, m, nxt, held_out) for m in (l1, ours))
    assert dict(ours.named_modules())[name].out_channels == dict(l1.named_modules())[name].out_channels == 32
    assert e_ours < e_l1, (e_ours, e_l1)


def test_reconstruct_layers_prunes_every_block_conv1_of_a_resnet():
    from prunekit.structured.reconstruct import next_conv, reconstruct_layers

    torch.manual_seed(0)
    model = pk.models.get("resnet20", width=0.5).eval()
    images = torch.randn(8, 3, 32, 32)
    layers = {f"layer{s}.{b}.conv1": 0.5 for s in (1, 2, 3) for b in range(3)}
    assert next_conv(model, "layer2.0.conv1") == "layer2.0.conv2"
    small, plan = reconstruct_layers(model, layers, images, "thinet", samples=500)
    modules = dict(small.named_modules())
    assert all(modules[n].out_channels == dict(model.named_modules())[n].out_channels // 2 for n in layers)
    assert set(plan) == set(layers)
    with pytest.raises(ValueError, match="ungrouped Conv2d"):
        next_conv(model, "layer3.2.conv2")  # followed by the classifier
