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
from prunekit.models.resnet import CifarResNet
from prunekit.structured import RECONSTRUCTIONS, channel_methods, layer_floor, prune_to_budget
from prunekit.structured.reconstruct import capture
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


def resnet(shortcut, seed=0):
    """A held-out ResNet-8 (option A or B) with non-trivial BN statistics, at 16x16 inputs."""
    torch.manual_seed(seed)
    m = CifarResNet(8, width=0.5, shortcut=shortcut)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.2, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


XR = torch.zeros(1, 3, 16, 16)


def rimages(n, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


STREAMS = [["conv1", "layer1.0.conv2"], ["layer2.0.conv2", "layer2.0.shortcut.0"],
           ["layer3.0.conv2", "layer3.0.shortcut.0"]]  # the convs adding into each residual stream


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("method", channel_methods())
def test_residual_streams_are_one_unit_for_every_method(method, allocation):
    """Option B: the convs adding into one stream lose the same channels, counted once: the
    target is met within one channel step, the plan names one layer per stream, and a
    reconstruction (which has no single consumer to refit there) falls back on the streams."""
    model = resnet("B")
    res = prune_to_budget(model, XR, flops_ratio=0.5, method=method, allocation=allocation, images=rimages(20),
                          min_channels=2)
    dense = flops_per_module(model, example_input=XR)[1]
    measured = flops_per_module(res.model, example_input=XR)[1]
    assert res.met and res.achieved == pytest.approx(measured / dense)
    step = max(dense - flops_per_module(shrink(model, XR, {n: [0]}), example_input=XR)[1]
               for n in pk.structured.prunable_layers(model))
    assert abs(measured - 0.5 * dense) <= step
    assert res.model(rimages(2)).shape == (2, 10)
    for stream in STREAMS:
        assert len({res.widths[n][1] for n in stream}) == 1  # tied widths
        assert len([n for n in stream if n in res.plan]) <= 1  # planned (and removed) once
        if method in RECONSTRUCTIONS.names() and stream[0] in res.plan:
            assert stream[0] in res.fallbacks
    assert min(k for _, k in res.widths.values()) >= 2
    if method in RECONSTRUCTIONS.names():  # the blocks' first convs have one consumer: reconstructed
        assert not [n for n in res.fallbacks if n.endswith(".conv1") and "layer" in n]


@pytest.mark.parametrize("method", channel_methods())
def test_option_a_resnets_prune_every_block_inner_conv_without_fallback(method):
    model = resnet("A")
    res = prune_to_budget(model, XR, flops_ratio=0.5, method=method, images=rimages(20))
    assert res.met and not res.fallbacks
    assert sorted(res.widths) == ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    assert res.model(rimages(2)).shape == (2, 10)


def test_a_consumer_in_a_pruned_stream_is_refit_towards_the_dense_output_it_kept():
    """Option B: the stem's stream loses channels (no refit), then the first block's conv1 is
    reconstructed; its consumer conv2 now outputs fewer channels than the dense one, and the
    refit targets the dense conv2 output at the channels kept."""
    model = resnet("B", seed=7)
    calib = rimages(200, 1)
    res = prune_to_budget(model, XR, flops_ratio=0.8, method="lasso", layers=["conv1", "layer1.0.conv1"],
                          images=calib, locations=64, ridge=1e-10)
    assert res.plan["conv1"] and res.plan["layer1.0.conv1"] and res.fallbacks == ["conv1"]
    kept_stream = [c for c in range(8) if c not in set(res.plan["conv1"])]
    kept_inner = [c for c in range(8) if c not in set(res.plan["layer1.0.conv1"])]
    with torch.no_grad():
        dense_y = capture(model, "layer1.0.conv2", calib, output=True)[:, kept_stream]
        got = capture(res.model, "layer1.0.conv2", calib, output=True)
        plain = shrink(model, XR, {"conv1": res.plan["conv1"], "layer1.0.conv1": res.plan["layer1.0.conv1"]})
        assert plain.layer1[0].conv2.weight.shape == res.model.layer1[0].conv2.weight.shape
        sliced = capture(plain, "layer1.0.conv2", calib, output=True)
    assert got.shape == dense_y.shape == sliced.shape and len(kept_inner) < 8
    err = float(((got - dense_y) ** 2).sum() / (dense_y ** 2).sum())
    assert err < float(((sliced - dense_y) ** 2).sum() / (dense_y ** 2).sum())


def test_reconstruct_refuses_two_layers_of_one_residual_stream():
    with pytest.raises(ValueError, match="conv1 and layer1.0.conv2 share their channels"):
        pk.structured.budget.reconstruct(resnet("B"), XR, {"conv1": 1, "layer1.0.conv2": 1}, rimages(4))


def test_find_consumer_sees_residual_readers():
    model = resnet("B")
    assert pk.structured.find_consumer(model, "layer1.0.conv1", XR) == ("layer1.0.conv2", 9)
    assert pk.structured.find_consumer(model, "conv1", XR) is None  # a stream: several producers and readers
    assert pk.structured.find_consumer(held_out(0), "features.7", X) == ("fc", 16)
    assert pk.structured.find_consumer(model, "layer3.0.conv1") == ("layer3.0.conv2", 9)  # traced at .input_shape
    with pytest.raises(ValueError, match="pass example_input="):
        pk.structured.find_consumer(held_out(0), "features.7")


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ValueError, "exactly one of flops_ratio= or params_ratio="),
    ({"flops_ratio": 0.5, "params_ratio": 0.5}, ValueError, "exactly one"),
    ({"flops_ratio": 0.0}, ValueError, "flops_ratio"),
    ({"flops_ratio": 1.5}, ValueError, "flops_ratio"),
    ({"flops_ratio": 0.5, "method": "nope"}, KeyError, "known: bn_scale, l1_filter, random, lasso, thinet"),
    ({"flops_ratio": 0.5, "allocation": "even"}, ValueError, "allocation must be one of uniform, global"),
    ({"flops_ratio": 0.5, "min_channels": 0}, ValueError, "min_channels: must be an integer >= 1"),
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
    with pytest.raises(ValueError, match="per_class: must be an integer >= 1"):
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
