"""shrink(): the smaller model computes exactly what the masked original computes; the
predefined L1-filter configurations give the published channel counts; selections are exact."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structured import (by_ratios, global_fraction, kept_counts, out_channels, predefined_ratios,
                                 prunable_layers, shrink, uniform_for_flops, uniform_ratios, zero_channels)

from conftest import TinyNet


def _randomise_bn(model):
    # Non-trivial BN statistics and betas: a BN bias left in place would leak into the output.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _every_third(model, layers):
    modules = dict(model.named_modules())
    return {n: list(range(1, out_channels(modules[n]), 3)) for n in layers}


CASES = [  # (model, kwargs): plain, residual (A and B shortcuts, pre-activation), concat, depthwise
    ("vgg11", dict(width=0.25)),
    ("resnet20", dict(width=0.5)),
    ("resnet20", dict(width=0.5, shortcut="B")),
    ("preresnet110", dict(width=0.25)),
    ("densenet40", dict(width=0.25)),
    ("mobilenetv2_cifar", dict(width=0.25)),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{k.get('shortcut', 'A')}" for n, k in CASES])
def test_shrunk_model_equals_the_masked_original(name, kwargs):
    torch.manual_seed(0)
    model = pk.models.get(name, **kwargs).eval()
    _randomise_bn(model)
    x = torch.randn(3, *model.input_shape)
    layers = prunable_layers(model)
    plan = _every_third(model, layers[:: max(1, len(layers) // 8)])
    small = shrink(model, x, plan)
    masked = zero_channels(copy.deepcopy(model), x, plan)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(small) < params(model), "the shrunk model is physically smaller"
    assert set(small.state_dict()) == set(model.state_dict())
    with torch.no_grad():
        y_small, y_masked, y = small(x), masked(x), model(x)
    assert y_small.shape == y.shape
    scale = y_masked.abs().max().item()
    assert torch.allclose(y_small, y_masked, atol=1e-5 * max(1.0, scale), rtol=1e-4)
    assert not torch.allclose(y_masked, y, atol=1e-3), "the removed channels mattered (the test is not vacuous)"


def test_tinynet_depthwise_and_linear_channels():
    torch.manual_seed(0)
    model = TinyNet().eval()
    _randomise_bn(model)
    x = torch.randn(4, 3, 8, 8)
    plan = {"conv": [0, 5], "fc1": [3, 4, 30]}
    small = shrink(model, x, plan)
    assert small.conv.out_channels == 6 and small.depthwise.out_channels == 6 and small.depthwise.groups == 6
    assert small.bn.num_features == 6 and small.fc1.in_features == 6 * 16 and small.fc1.out_features == 29
    assert small.fc2.in_features == 29
    masked = zero_channels(copy.deepcopy(model), x, plan)
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-6)
    assert model.conv.out_channels == 8, "shrink copies unless inplace=True"


def test_shrink_rejects_bad_requests():
    torch.manual_seed(0)
    model = pk.models.get("resnet20", width=0.25)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="option-A"):
        shrink(model, x, {"conv1": [0]})  # the stem feeds the padded residual stream
    with pytest.raises(ValueError, match="classes"):
        shrink(pk.models.get("lenet5"), torch.randn(1, 1, 28, 28), {"classifier.4": [0]})
    with pytest.raises(ValueError, match="at least one"):
        shrink(model, x, {"layer1.0.conv1": list(range(4))})
    with pytest.raises(KeyError):
        shrink(model, x, {"nope": [0]})


# The published configurations (Li et al. 2017 Table 1; Liu et al. 2019 Table 1), conv numbering
# from the stem = 1, block b = convs 2b, 2b+1.
def _expected_resnet(n_blocks, ratios, skipped):
    base, out = (16, 32, 64), {}
    per_stage = n_blocks // 3
    for b in range(1, n_blocks + 1):
        stage = (b - 1) // per_stage
        c = base[stage]
        out[f"layer{stage + 1}.{(b - 1) % per_stage}.conv1"] = c if 2 * b in skipped else int(c * (1 - ratios[stage]))
    return out


@pytest.mark.parametrize("config,depth,ratios,skipped,pruned_pct", [
    ("resnet56-a", 56, (0.1, 0.1, 0.1), {16, 20, 38, 54}, 9.4),
    ("resnet56-b", 56, (0.6, 0.3, 0.1), {16, 18, 20, 34, 38, 54}, 13.7),
    ("resnet110-a", 110, (0.5, 0.0, 0.0), {36}, 2.3),
    ("resnet110-b", 110, (0.5, 0.4, 0.3), {36, 38, 74}, 32.4),
])
def test_predefined_resnet_configs_give_the_published_channel_counts(config, depth, ratios, skipped, pruned_pct):
    model = pk.models.get(f"resnet{depth}")
    small = shrink(model, torch.randn(1, 3, 32, 32), by_ratios(model, predefined_ratios(config, model)))
    expected = _expected_resnet((depth - 2) // 2, ratios, skipped)
    modules = dict(small.named_modules())
    assert {n: modules[n].out_channels for n in expected} == expected
    # spot checks by hand: 56-B stage 1 keeps int(16 * 0.4) = 6, conv 16 (layer1.7) is skipped
    if config == "resnet56-b":
        assert modules["layer1.0.conv1"].out_channels == 6 and modules["layer1.7.conv1"].out_channels == 16
        assert modules["layer2.1.conv1"].out_channels == 22 and modules["layer3.1.conv1"].out_channels == 57
    # every block output keeps its width; the published parameter reduction (within 0.15 %)
    assert all(modules[n.replace("conv1", "conv2")].out_channels == modules[n].in_channels or "0.conv1" in n
               for n in expected)
    p0, p1 = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    assert abs(100 * (1 - p1 / p0) - pruned_pct) < 0.15


def test_predefined_vgg16_a():
    model = pk.models.get("vgg16")
    ratios = predefined_ratios("vgg16-a", model)
    small = shrink(model, torch.randn(1, 3, 32, 32), by_ratios(model, ratios))
    widths = [m.out_channels for m in small.features if isinstance(m, nn.Conv2d)]
    assert widths == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]
    p0, p1 = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    assert abs(100 * (1 - p1 / p0) - 64.0) < 0.5  # "Pruned %: 64%"
    with pytest.raises(KeyError, match="resnet56-a"):
        predefined_ratios("vgg16-z", model)
    with pytest.raises(ValueError, match="ResNet-56"):
        predefined_ratios("resnet56-a", pk.models.get("resnet20"))


def test_l1_filter_removes_the_lowest_norm_filters_and_ties_by_index():
    model = TinyNet()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([3., 1., 4., 1., 5., 9., 2., 6.]).view(8, 1, 1, 1).expand_as(model.conv.weight))
    assert kept_counts(model, {"conv": 0.5}) == {"conv": 4}
    assert by_ratios(model, {"conv": 0.5}) == {"conv": [0, 1, 3, 6]}  # norms 3,1,1,2 (the two 1s: both go)
    assert by_ratios(model, {"conv": 0.25}) == {"conv": [1, 3]}


def test_global_fraction_removes_exactly_the_requested_share_of_bn_channels():
    torch.manual_seed(0)
    model = pk.models.get("vgg11", width=0.25)
    layers = [n for n in prunable_layers(model)]
    plan = global_fraction(model, 0.4, score="bn_scale")
    total = sum(out_channels(dict(model.named_modules())[n]) for n in layers)
    assert sum(len(v) for v in plan.values()) == round(0.4 * total)
    gammas = {n: pk.structured.CHANNEL_SCORES.get("bn_scale")(model, n) for n in layers}
    removed = torch.cat([gammas[n][v] for n, v in plan.items()])
    kept = torch.cat([gammas[n][[c for c in range(len(gammas[n])) if c not in set(plan.get(n, []))]] for n in layers])
    assert removed.max() <= kept.min(), "one global threshold"


def test_uniform_ratio_for_a_flops_budget():
    torch.manual_seed(0)
    model = pk.models.get("vgg11", width=0.25)
    x = torch.randn(1, 3, 32, 32)
    small = shrink(model, x, uniform_for_flops(model, x, 0.5))
    f0, f1 = (pk.core.accounting.flops_per_module(m, (3, 32, 32))[1] for m in (model, small))
    assert abs(f1 / f0 - 0.5) < 0.08
    assert set(uniform_ratios(model, 0.3).values()) == {0.3}


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "mobilenet_v2"])
def test_torchvision_models_shrink_exactly(name):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = pk.models.get(name, num_classes=10).eval()
    _randomise_bn(model)
    x = torch.randn(1, 3, 64, 64)
    layers = prunable_layers(model)
    plan = _every_third(model, layers[:: max(1, len(layers) // 6)])
    small = shrink(model, x, plan)
    masked = zero_channels(copy.deepcopy(model), x, plan)
    with torch.no_grad():
        a, b = small(x), masked(x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, b.abs().max().item()), rtol=1e-4)


def test_block_inner_ratios_prune_the_first_conv_of_every_block():
    from prunekit.structured.configs import block_inner_ratios

    model = pk.models.get("resnet20", width=0.5)
    ratios = block_inner_ratios(model, 0.5)
    assert len(ratios) == 9 and all(name.endswith(".conv1") for name in ratios)
    small = shrink(model, torch.randn(1, 3, 32, 32), pk.structured.by_ratios(model, ratios))
    assert small.layer1[0].conv1.out_channels == 4 and small.layer3[2].conv1.out_channels == 16
    with pytest.raises(ValueError):
        block_inner_ratios(model, 1.0)


def test_compare_reports_the_fractions_kept_and_the_reductions():
    """``*_ratio`` is the fraction kept (shrunk / original) as in every flops_ratio= target;
    ``*_reduction`` the "x fewer" figure."""
    torch.manual_seed(0)
    model = pk.models.get("resnet20", width=0.25, shortcut="B").eval()
    x = torch.zeros(1, 3, 32, 32)
    small = pk.structured.shrink(model, x, pk.structured.uniform_for_flops(model, x, 0.5))
    got = pk.structured.compare(model, small, (3, 32, 32), batch_sizes=())
    assert got["flops_ratio"] == pytest.approx(got["flops_shrunk"] / got["flops"]) and got["flops_ratio"] < 1
    assert got["params_ratio"] == pytest.approx(got["params_shrunk"] / got["params"]) and got["params_ratio"] < 1
    assert got["flops_reduction"] == pytest.approx(1 / got["flops_ratio"])
    assert got["params_reduction"] == pytest.approx(1 / got["params_ratio"])
