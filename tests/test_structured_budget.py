"""Structured pruning at a budget (issue #19; issue #15 point 4): ``prune_to_budget``.

- every channel method (parametrized over ``CHANNEL_SCORES`` and ``RECONSTRUCTIONS``) meets a
  FLOPs / parameter target within one channel step, and reports what it achieved;
- per-layer floors ``min_channels`` / ``max_ratio`` hold exactly;
- a conv feeding a Linear is pruned and the Linear's input columns refitted: the refit model's
  outputs are the least-squares optimum (held-out random nets);
- reconstruction memory: the streamed statistics do not grow with the calibration images, the
  reported peak stays under ``memory_bytes``;
- reconstruction towards the unpruned model's output (He et al.) and ThiNet's per-channel
  scaling by default, the alternatives by name;
- bad input: one clear error each.
"""
import math
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.accounting import flops_per_module
from prunekit.structured import RECONSTRUCTIONS, channel_methods, layer_floor, prune_to_budget
from prunekit.structured.scores import CHANNEL_SCORES
from prunekit.structured.shrink import shrink

X = torch.zeros(1, 3, 8, 8)


class ConvLinear(nn.Module):
    """Three conv + BN + ReLU (a max-pool after the first), flatten, one Linear: the last conv
    feeds the Linear (the case ThiNet / LASSO could not prune)."""

    def __init__(self, widths=(8, 12, 6), classes=5):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(3, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Conv2d(b, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.fc = nn.Linear(c * 16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def held_out(seed, **kw):
    torch.manual_seed(seed)
    m = ConvLinear(**kw)
    with torch.no_grad():  # non-trivial BN statistics and gammas
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def images(n, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def flops(model):
    return flops_per_module(model, example_input=X)[1]


def one_channel_step(model, metric):
    """The most FLOPs (or params) one output channel of any prunable layer costs in ``model``."""
    count = flops if metric == "flops" else (lambda m: sum(p.numel() for p in m.parameters()))
    base = count(model)
    return max(base - count(shrink(model, X, {name: [0]})) for name in pk.structured.prunable_layers(model))


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("method", channel_methods())
@pytest.mark.parametrize("metric,ratio", [("flops", 0.5), ("params", 0.3)])
def test_every_channel_method_meets_the_target_within_one_channel_step(method, allocation, metric, ratio):
    model = held_out(1)
    kw = {"flops_ratio": ratio} if metric == "flops" else {"params_ratio": ratio}
    res = prune_to_budget(model, X, method=method, allocation=allocation, images=images(40), **kw)
    dense = flops(model) if metric == "flops" else sum(p.numel() for p in model.parameters())
    measured = flops(res.model) if metric == "flops" else sum(p.numel() for p in res.model.parameters())
    assert res.requested == ratio and res.metric == metric and res.met
    assert res.achieved == pytest.approx(measured / dense)  # what it reports is what the model has
    assert abs(measured - ratio * dense) <= one_channel_step(model, metric)
    assert res.speedup == pytest.approx(dense / measured)
    out = res.model(images(4))
    assert out.shape == (4, 5)
    # every prunable layer was eligible, the last conv (feeding the Linear) included
    assert "features.7" in res.widths


@pytest.mark.parametrize("method", ["l1_filter", "bn_scale", "thinet"])
def test_floors_are_exact(method):
    model = held_out(2)
    with pytest.warns(UserWarning, match="out of reach"):
        res = prune_to_budget(model, X, flops_ratio=0.01, method=method, min_channels=3, images=images(20))
    assert not res.met and res.achieved > 0.01
    assert {n: k for n, (c, k) in res.widths.items()} == {"features.0": 3, "features.4": 3, "features.7": 3}
    with pytest.warns(UserWarning):
        res = prune_to_budget(model, X, flops_ratio=0.01, method=method, max_ratio=0.5, images=images(20))
    assert {n: k for n, (c, k) in res.widths.items()} == {"features.0": 4, "features.4": 6, "features.7": 3}
    # a reachable target: the global threshold would empty a layer, the floor stops it there
    res = prune_to_budget(model, X, flops_ratio=0.3, method=method, allocation="global", min_channels=2,
                          max_ratio=0.75, images=images(20))
    assert res.met
    for name, (c, k) in res.widths.items():
        assert k >= layer_floor(c, 2, 0.75) == max(2, c - math.floor(0.75 * c))


def test_layer_floor():
    assert layer_floor(64, 1, 1.0) == 1
    assert layer_floor(64, 8, 1.0) == 8
    assert layer_floor(64, 1, 0.75) == 16
    assert layer_floor(10, 1, 0.55) == 5
    assert layer_floor(4, 8, 0.5) == 4


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("method", ["thinet", "lasso"])
def test_conv_feeding_a_linear_is_pruned_and_the_linear_refit_to_the_least_squares_optimum(seed, method):
    model = held_out(seed)
    calib = images(300, seed)
    res = prune_to_budget(model, X, flops_ratio=0.9, method=method, layers=["features.7"], images=calib,
                          scale="full", ridge=1e-10)
    kept_c = res.widths["features.7"][1]
    assert kept_c < 6 and res.plan["features.7"] and not res.fallbacks
    removed = set(res.plan["features.7"])
    kept = [c for c in range(6) if c not in removed]
    cols = torch.tensor([c * 16 + t for c in kept for t in range(16)])
    with torch.no_grad():
        xin = torch.flatten(model.features(calib), 1).double()
        y = (model.fc(torch.flatten(model.features(calib), 1)) - model.fc.bias).double()
        w_opt = torch.linalg.lstsq(xin[:, cols], y, driver="gelsd").solution  # the least-squares optimum
        best = xin[:, cols] @ w_opt
        got = (res.model(calib) - res.model.fc.bias).double()
        plain = xin[:, cols] @ model.fc.weight.double()[:, cols].T  # columns dropped, no refit
    err = ((got - y) ** 2).sum() / (y ** 2).sum()
    opt = ((best - y) ** 2).sum() / (y ** 2).sum()
    assert float(((got - best) ** 2).sum() / (best ** 2).sum()) < 1e-8
    assert float(err) <= float(opt) * (1 + 1e-6) + 1e-12
    assert float(err) < float(((plain - y) ** 2).sum() / (y ** 2).sum())


def test_thinet_scales_each_kept_channel_by_default_and_refits_the_filter_by_name():
    model = held_out(3)
    calib = images(50)
    res = prune_to_budget(model, X, flops_ratio=0.85, method="thinet", layers=["features.4"], images=calib)
    removed = set(res.plan["features.4"])
    kept = [c for c in range(12) if c not in removed]
    old = model.features[7].weight.detach()[:, kept]
    new = res.model.features[7].weight.detach()
    for j in range(len(kept)):  # each kept channel's slice is the old one times one scalar
        ratio = new[:, j] / old[:, j]
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4, atol=1e-6)
    full = prune_to_budget(model, X, flops_ratio=0.85, method="thinet", layers=["features.4"], images=calib,
                           scale="full")
    w = full.model.features[7].weight.detach()
    ratio = w / old
    assert not torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-2)


def test_reconstruction_targets_the_unpruned_model_output_by_default():
    """He et al.: the refit of a later layer reduces the error accumulated by earlier ones, so on
    the calibration images the final output is closer to the dense model's with target=dense."""
    model = held_out(4)
    calib = images(200)
    errs = {}
    for target in ("dense", "pruned"):
        res = prune_to_budget(model, X, flops_ratio=0.45, method="lasso", layers=["features.4", "features.7"],
                              images=calib, scale="full", target=target, ridge=1e-10)
        with torch.no_grad():
            errs[target] = float(((res.model(calib) - model(calib)) ** 2).sum())
    assert errs["dense"] < errs["pruned"]


def test_reconstruction_memory_is_bounded_and_independent_of_the_number_of_images():
    model = held_out(5)
    bound = 150_000
    reports = {}
    for n in (16, 256):
        res = prune_to_budget(model, X, flops_ratio=0.5, method="thinet", images=images(n), memory_bytes=bound,
                              scale="full")
        reports[n] = res.memory
        assert res.memory["peak_bytes"] <= bound
    assert reports[16]["stats_bytes"] == reports[256]["stats_bytes"] > 0
    assert reports[256]["chunk_images"] < 256  # the images were streamed in chunks
    assert reports[256]["peak_bytes"] <= bound
    with pytest.raises(ValueError, match="memory_bytes=1000 is below"):
        prune_to_budget(model, X, flops_ratio=0.5, method="thinet", images=images(8), memory_bytes=1000)


def test_depthwise_convs_prune_through_their_group_and_grouped_ones_stay_whole():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(12 * 64, 4)).eval()
    for method in ("l1_filter", "thinet"):
        res = prune_to_budget(model, X, flops_ratio=0.8, method=method, images=images(20))
        assert res.met and res.model(images(2)).shape == (2, 4)
        assert res.widths["0"][1] < 8 and res.widths["3"][1] == res.widths["0"][1]  # depthwise follows
        assert "6" not in res.widths and "9" not in res.widths  # groups=3: left whole
    assert "0" in res.fallbacks  # a depthwise consumer has no reconstruction: l1_filter, no refit


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ValueError, "exactly one of flops_ratio= or params_ratio="),
    ({"flops_ratio": 0.5, "params_ratio": 0.5}, ValueError, "exactly one"),
    ({"flops_ratio": 0.0}, ValueError, "flops_ratio"),
    ({"flops_ratio": 1.5}, ValueError, "flops_ratio"),
    ({"flops_ratio": 0.5, "method": "nope"}, KeyError, "known: bn_scale, l1_filter, random, lasso, thinet"),
    ({"flops_ratio": 0.5, "allocation": "even"}, ValueError, "allocation must be one of uniform, global"),
    ({"flops_ratio": 0.5, "min_channels": 0}, ValueError, "min_channels must be an integer >= 1"),
    ({"flops_ratio": 0.5, "max_ratio": 1.5}, ValueError, r"max_ratio .* must be in \[0, 1\]"),
    ({"flops_ratio": 0.5, "method": "thinet"}, ValueError, "pass images="),
    ({"flops_ratio": 0.5, "method": "thinet", "images": images(2), "scale": "filter"}, ValueError,
     "scale must be one of channel, full"),
    ({"flops_ratio": 0.5, "method": "lasso", "images": images(2), "target": "x"}, ValueError,
     "target must be one of dense, pruned"),
    ({"flops_ratio": 0.5, "layers": ["fc"]}, ValueError, "not prunable"),
])
def test_bad_input_one_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        prune_to_budget(held_out(0), X, **kwargs)


def test_registries_cover_every_method():
    assert set(channel_methods()) == set(CHANNEL_SCORES.names()) | set(RECONSTRUCTIONS.names())
    assert {"l1_filter", "bn_scale", "random", "thinet", "lasso"} <= set(channel_methods())


def test_calibration_images_take_per_class_images_in_loader_order():
    batches = [(torch.arange(8.0).view(8, 1), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])),
               (torch.arange(8.0, 16.0).view(8, 1), torch.tensor([2, 2, 2, 0, 1, 0, 1, 0]))]
    got = pk.structured.calibration_images(batches, per_class=2, classes=3)
    assert got.flatten().tolist() == [0.0, 2.0, 1.0, 3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="per_class must be an integer >= 1"):
        pk.structured.calibration_images(batches, per_class=0)


def test_distillation_loss_is_cross_entropy_at_alpha_0_and_zero_against_itself():
    from prunekit.training.distill import Distillation

    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    kd = Distillation(net, net, temperature=4.0, alpha=1.0)
    assert float(kd(net(x), y).detach()) == pytest.approx(0.0, abs=1e-6)  # the student is its teacher
    kd.close()
    ce = Distillation(net, net, alpha=0.0)
    out = net(x)
    assert float(ce(out, y).detach()) == pytest.approx(float(nn.functional.cross_entropy(out, y).detach()))
    with pytest.raises(ValueError, match="temperature > 0 and alpha in"):
        Distillation(net, net, temperature=0.0)
