"""Registry-wide model tests: every registered model is checked by being registered."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn as nn

import prunekit.models as M

NAMES = M.names()
LENETS = {"lenet_300_100", "lenet5"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return M.get(name, **kwargs)


# ---------------------------------------------------------------------------- registry-wide


def test_registry_lists_every_family():
    expected = {
        "lenet_300_100", "lenet5", "conv2", "conv4", "conv6",
        "vgg11", "vgg13", "vgg16", "vgg19",
        "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
        "preresnet110", "preresnet164", "wrn", "densenet40", "mobilenetv2_cifar",
    }
    assert set(NAMES) == expected
    assert M.MODELS.names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_input_shape(name):
    model = build(name)
    x = torch.randn(2, *model.input_shape)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_natural_input_shape(name):
    model = build(name)
    expected = (1, 28, 28) if name in LENETS else (3, 32, 32)
    assert model.input_shape == expected


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_in_channels_are_honoured(name):
    model = build(name, num_classes=7, in_channels=2).eval()
    assert model.input_shape[0] == 2
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    fan_in = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    assert fan_in == (2 * 28 * 28 if name == "lenet_300_100" else 2)
    with torch.no_grad():
        assert model(torch.randn(2, *model.input_shape)).shape == (2, 7)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7


@pytest.mark.parametrize("name", NAMES)
def test_width_half_reduces_parameters(name):
    full, half = n_params(build(name)), n_params(build(name, width=0.5))
    assert half < full
    # Hidden widths shrink by 2 in both dimensions, so most layers lose ~3/4 of their weights.
    assert half < 0.5 * full


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    a, b, c = build(name, seed=1), build(name, seed=1), build(name, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_kwarg_names_the_accepted_ones(name):
    with pytest.raises(TypeError) as err:
        M.get(name, no_such_option=1)
    assert isinstance(err.value, ValueError)  # the CLI reports ValueErrors as user errors
    message = str(err.value)
    assert "no_such_option" in message and "num_classes" in message and "width" in message


# ---------------------------------------------------------------------------- the interface


def test_unknown_name_is_a_key_error_listing_names():
    with pytest.raises(KeyError) as err:
        M.get("resnet21")
    assert "resnet20" in str(err.value) and "lenet5" in str(err.value)


def test_bad_common_values_are_value_errors():
    for kwargs in ({"width": 0}, {"width": -1.0}, {"num_classes": 0}, {"in_channels": 0}):
        with pytest.raises(ValueError):
            M.get("resnet20", **kwargs)
    with pytest.raises(ValueError):
        M.get("resnet20", shortcut="C")
    with pytest.raises(ValueError):
        M.get("wrn", depth=15)
    with pytest.raises(ValueError):
        M.get("lenet5", input_size=8)


def test_width_is_floored_and_never_zero():
    m = M.get("lenet_300_100", width=0.25)
    assert (m.fc1.out_features, m.fc2.out_features, m.fc3.out_features) == (75, 25, 10)
    m = M.get("lenet_300_100", width=0.001)
    assert (m.fc1.out_features, m.fc2.out_features) == (1, 1)
    m = M.get("resnet20", width=0.7)  # 16*0.7 = 11.2, 32*0.7 = 22.4, 64*0.7 = 44.8
    assert (m.conv1.out_channels, m.layer2[0].conv1.out_channels, m.fc.in_features) == (11, 22, 44)
    assert m.conv1.in_channels == 3 and m.fc.out_features == 10  # inputs/classes unscaled


def test_input_size_kwarg():
    for name, size in [("lenet5", 32), ("lenet_300_100", (20, 24)), ("conv4", 16),
                       ("conv6", (24, 40))]:
        model = M.get(name, input_size=size).eval()
        hw = (size, size) if isinstance(size, int) else size
        assert model.input_shape[1:] == hw
        with torch.no_grad():
            assert model(torch.randn(1, *model.input_shape)).shape == (1, 10)


def test_standard_init():
    torch.manual_seed(0)
    model = M.get("vgg11")
    conv = model.features[0]
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.1 * (2.0 / fan_out) ** 0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    # Linear keeps PyTorch's default: uniform within +-1/sqrt(fan_in).
    assert model.classifier.weight.abs().max() <= 512 ** -0.5


# ---------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize("name, count", [
    # 784*300+300 + 300*100+100 + 100*10+10
    ("lenet_300_100", 266_610),
    # conv 1*6*25+6, conv 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
    ("lenet5", 61_706),
    # He et al.'s 0.27M: 3x3 convs without bias, BN (2 per channel), option-A shortcuts
    ("resnet20", 269_722),
    ("resnet56", 853_018),   # 0.85M in He et al. / Li et al.
    ("resnet110", 1_727_962),  # 1.7M
    ("vgg19", 20_035_018),   # 20.04M in network slimming (Liu et al. 2017)
    ("densenet40", 1_019_722),  # 1.02M in network slimming
    ("preresnet164", 1_703_258),  # 1.70M in Rethinking (Liu et al. 2019)
    ("wrn", 2_748_890),  # WRN-16-4: 2.7M in Zagoruyko & Komodakis
    ("conv2", 4_301_642),  # 4.3M in Frankle & Carbin
    ("conv4", 2_425_930),  # 2.4M
])
def test_parameter_counts(name, count):
    assert n_params(M.get(name)) == count


# ---------------------------------------------------------------------------- per family


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_resnet_shortcut_b_adds_projections():
    a, b = M.get("resnet20"), M.get("resnet20", shortcut="B")
    assert len(convs(a)) == 19 and len(convs(b)) == 21
    # two projections: 16->32 and 32->64 1x1 convs, each with a BN
    assert n_params(b) - n_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert isinstance(b.layer2[0].shortcut, nn.Sequential)
    assert isinstance(b.layer1[0].shortcut, nn.Identity)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = M.get("resnet20").layer2[0]
    assert n_params(block.shortcut) == 0
    x = torch.randn(1, 16, 8, 8)
    y = block.shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.all(y[:, :8] == 0) and torch.all(y[:, 24:] == 0)


def test_resnet_structure():
    model = M.get("resnet56")
    assert [n for n, _ in model.named_children()] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert all(len(getattr(model, f"layer{i}")) == 9 for i in (1, 2, 3))
    assert [n for n, _ in model.layer1[0].named_children()] == [
        "conv1", "bn1", "conv2", "bn2", "shortcut"]


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_conv_numbering_resnet56(shortcut):
    model = M.get("resnet56", shortcut=shortcut)
    numbering = M.resnet.conv_numbering(model)
    assert len(numbering) == 55
    assert [n for n, _ in numbering] == list(range(1, 56))
    modules = dict(model.named_modules())
    assert all(isinstance(modules[name], nn.Conv2d) for _, name in numbering)
    as_dict = dict(numbering)
    assert as_dict[1] == "conv1"
    assert as_dict[2] == "layer1.0.conv1" and as_dict[3] == "layer1.0.conv2"
    # block b = 10 is the first block of stage 2: convs 20 and 21
    assert as_dict[20] == "layer2.0.conv1" and as_dict[55] == "layer3.8.conv2"
    assert all(name.endswith("conv1") for n, name in numbering if n % 2 == 0)


def test_conv_numbering_resnet110_has_109_convs():
    assert len(M.resnet.conv_numbering(M.get("resnet110"))) == 109


def test_vgg_conv_order_is_features_order():
    model = M.get("vgg16")
    feature_convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(feature_convs) == 13 and feature_convs == convs(model)
    assert [c.out_channels for c in feature_convs] == [
        64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512


def test_preresnet164_uses_bottlenecks():
    model = M.get("preresnet164")
    assert len(model.layer1) == 18 and model.fc.in_features == 256
    assert len(convs(model)) == 1 + 3 * 18 * 3 + 3  # stem, 3 per block, 3 projections


def test_wrn_kwargs():
    model = M.get("wrn", depth=10, widen_factor=2)
    assert len(model.layer1) == 1 and model.fc.in_features == 128
    assert n_params(model) < n_params(M.get("wrn"))
    assert M.get("wrn", dropout=0.3).layer1[0].dropout.p == 0.3


def test_densenet40_channels():
    model = M.get("densenet40")
    assert len(model.dense1) == 12 and model.conv1.out_channels == 16
    assert model.trans1.conv.in_channels == 16 + 12 * 12
    assert model.fc.in_features == 16 + 36 * 12


def test_mobilenetv2_has_depthwise_convs():
    model = M.get("mobilenetv2_cifar")
    depthwise = [c for c in convs(model) if c.groups > 1]
    assert len(depthwise) == 17
    assert all(c.groups == c.in_channels == c.out_channels for c in depthwise)


# ---------------------------------------------------------------------------- torchvision


def test_torchvision_fallback_real():
    pytest.importorskip("torchvision")
    model = M.get("resnet18", num_classes=7).eval()
    assert model.input_shape == (3, 224, 224)
    with torch.no_grad():
        assert model(torch.randn(1, *model.input_shape)).shape == (1, 7)
    assert "resnet18" not in M.names()


def test_torchvision_fallback_with_stub(monkeypatch):
    """The fallback path, exercised without torchvision installed."""
    calls = []

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return nn.Linear(4, kwargs["num_classes"])

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["alexnet", "resnet18"]
    models.get_model = get_model
    stub = types.ModuleType("torchvision")
    stub.models = models
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)

    model = M.get("alexnet", num_classes=5)
    assert model.input_shape == (3, 224, 224) and model.out_features == 5
    assert calls == [("alexnet", {"num_classes": 5, "weights": None})]
    with pytest.raises(ValueError):
        M.get("alexnet", width=0.5)
    with pytest.raises(ValueError):
        M.get("alexnet", in_channels=1)
    with pytest.raises(KeyError):
        M.get("not_a_model")
    assert isinstance(M.get("resnet20"), nn.Module)  # our own names win


def test_torchvision_prefix_reaches_the_names_prunekit_shadows(monkeypatch, tmp_path):
    """``torchvision:vgg16`` is torchvision's ImageNet VGG-16 (what He et al.'s VGG-16-5x prunes),
    ``vgg16`` stays prunekit's CIFAR one; specs and model files take the prefixed name; a bad
    name is one clear error (stubbed torchvision: exercised without building a 138M model)."""
    from prunekit.artifacts import load_model, save_model
    from prunekit.experiments.spec import SpecError, Sweep

    calls = []

    def get_model(name, **kwargs):
        calls.append(name)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, kwargs["num_classes"]))

    models = types.ModuleType("torchvision.models")
    models.list_models = lambda module=None: ["resnet18", "vgg16"]
    models.get_model = get_model
    stub = types.ModuleType("torchvision")
    stub.models = models
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)

    assert type(M.get("vgg16")).__module__ == "prunekit.models.vgg" and calls == []  # prunekit's CIFAR VGG
    model = M.get("torchvision:vgg16", num_classes=1000)
    assert calls == ["vgg16"] and model[1].out_features == 1000 and model.input_shape == (3, 224, 224)
    M.get("torchvision:resnet18")  # also for names prunekit does not have
    with pytest.raises(KeyError, match="unknown torchvision model 'vgg61'.*vgg16"):
        M.get("torchvision:vgg61")
    with pytest.raises(ValueError, match="no width multiplier"):
        M.get("torchvision:vgg16", width=0.5)
    M.check_name("torchvision:vgg16")
    with pytest.raises(KeyError, match="torchvision:NAME"):
        M.check_name("vgg61")

    save_model(tmp_path / "model.pt", model, model_name="torchvision:vgg16", model_kwargs={"num_classes": 1000})
    again, stored = load_model(tmp_path)
    assert stored["model"]["name"] == "torchvision:vgg16"
    assert torch.equal(again[1].weight, model[1].weight)

    base = {"name": "x", "data": {"name": "synthetic"}, "method": {"name": "oneshot", "params": {"sparsity": 0.5}}}
    assert Sweep.from_dict({**base, "model": {"name": "torchvision:vgg16"}}).points[0].model.name == "torchvision:vgg16"
    with pytest.raises(SpecError, match="^model.name: unknown torchvision model 'vgg61'"):
        Sweep.from_dict({**base, "model": {"name": "torchvision:vgg61"}})
