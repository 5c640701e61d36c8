"""Inference form of CNNs: BatchNorm folding (exact in eval mode), memory-format choice (an
injected timer: nothing here is timed), and the thin export built on them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.export import thin
from prunekit.structured import by_ratios, compare, shrink, uniform_ratios
from prunekit.structured.inference import (choose_memory_format, fold_batchnorm, foldable_pairs,
                                           prepare_for_inference, to_memory_format)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (a fresh BN is the identity map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g))
                    m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


@pytest.mark.parametrize("name, kwargs, pairs", [
    ("resnet20", {"width": 0.5, "shortcut": "B"}, 19 + 2),  # 19 conv-BN pairs + 2 projection shortcuts
    ("resnet20", {"width": 0.5, "shortcut": "A"}, 19),
    ("vgg11", {"width": 0.25}, 8),
    ("preresnet110", {"width": 0.25}, None),   # pre-activation: only the inner conv -> BN pairs fold
    ("mobilenetv2_cifar", {"width": 0.25}, None),
    ("densenet40", {}, 0),                     # BN-ReLU-conv, conv outputs concatenated: nothing folds
])
def test_fold_batchnorm_is_exact_in_eval_mode(name, kwargs, pairs):
    torch.manual_seed(0)
    model = _randomise_bn(pk.models.get(name, **kwargs))
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batchnorm(model)
    found = len(foldable_pairs(model))
    assert found == pairs if pairs is not None else found > 0
    pairs = found
    assert type(folded) is type(model)                      # still the eager model
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()) == \
        sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) - pairs
    with torch.no_grad():
        want, got = model(x), folded(x)
    # exact to 1e-5 of the output's scale (random BN statistics over 110 layers grow it to ~1e8)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max().clamp_min(1.0)
    # the original is untouched
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Shared(nn.Module):
    """conv1's output feeds its BN and the return value: folding it would change the latter."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv1(x)
        z = self.bn2(self.conv2(self.bn1(y)))
        return self.bn3(self.conv3(z)) + y


def test_foldable_pairs_skip_shared_outputs_and_batch_statistics():
    model = _randomise_bn(_Shared())
    # conv1 is read twice, bn2 has no running statistics: only conv3 -> bn3 folds
    assert foldable_pairs(model) == [("conv3", "bn3")]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_untraceable_model_is_one_clear_error():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x   # data-dependent branch

    with pytest.raises(ValueError, match="torch.fx can trace"):
        fold_batchnorm(Dynamic())


def _fake_timer(seconds):
    calls = []

    def timer(fns):
        calls.append({name: fn() for name, fn in fns.items()})   # run each candidate once
        return {name: seconds[name] for name in fns}
    return timer, calls


@pytest.mark.parametrize("seconds, want", [
    ({"contiguous": 2.0, "channels_last": 1.0}, "channels_last"),
    ({"contiguous": 1.0, "channels_last": 2.0}, "contiguous"),
    ({"contiguous": 1.0, "channels_last": 1.0}, "contiguous"),   # a tie keeps the layout as is
])
def test_choose_memory_format_takes_the_faster_by_the_timer(seconds, want):
    model = pk.models.get("resnet20", width=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    timer, calls = _fake_timer(seconds)
    choice = choose_memory_format(model, x, timer=timer)
    assert choice.memory_format == want and choice.seconds == seconds
    # the timer was handed one runnable candidate per format, each in its own layout
    (outputs,) = calls
    assert set(outputs) == {"contiguous", "channels_last"}
    with torch.no_grad():
        for out in outputs.values():
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    assert model.conv1.weight.is_contiguous()                # the model itself is not converted


def test_choose_memory_format_without_4d_weights_does_not_measure():
    timer, calls = _fake_timer({"contiguous": 2.0, "channels_last": 1.0})
    choice = choose_memory_format(pk.models.get("lenet_300_100"), torch.randn(2, 1, 28, 28), timer=timer)
    assert choice.memory_format == "contiguous" and not calls


def test_choose_memory_format_bad_timer_and_bad_format_are_errors():
    model = pk.models.get("resnet20", width=0.25).eval()
    with pytest.raises(ValueError, match="missing"):
        choose_memory_format(model, torch.randn(1, 3, 32, 32), timer=lambda fns: {"contiguous": 1.0})
    with pytest.raises(ValueError, match="memory_format must be"):
        to_memory_format(model, "nhwc")
    with pytest.raises(ValueError, match="example_input"):
        prepare_for_inference(model)                          # auto needs a batch to measure on


def test_prepare_for_inference_folds_and_applies_the_chosen_format():
    torch.manual_seed(0)
    model = _randomise_bn(pk.models.get("resnet20", width=0.5, shortcut="B"))
    x = torch.randn(3, 3, 32, 32)
    timer, _ = _fake_timer({"contiguous": 2.0, "channels_last": 1.0})
    prepared = prepare_for_inference(model, x, timer=timer)
    assert prepared.memory_format.memory_format == "channels_last" and len(prepared.folded) == 21
    assert prepared.module.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert prepared.describe() == "21 BN folded, channels_last"
    with torch.no_grad():
        torch.testing.assert_close(prepared.module(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    model = _randomise_bn(pk.models.get("resnet20", width=0.25, shortcut="B"))
    x = torch.randn(1, 3, 32, 32)
    return model, shrink(model, x, by_ratios(model, uniform_ratios(model, 0.5))).eval()


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_thin_program_is_folded_and_equals_eager(small_resnet, tmp_path, memory_format):
    _, small = small_resnet
    result = thin(small, tmp_path, torch.randn(1, 3, 32, 32), memory_format=memory_format)
    assert result.prepared.memory_format.memory_format == memory_format
    program = torch.export.load(tmp_path / "model.pt2").module()
    # the program has no BatchNorm left (all of this model's BNs follow a conv)
    assert not any("batch_norm" in str(n.target) for n in result.program.graph.nodes)
    assert program.conv1.weight.is_contiguous(memory_format=pk.structured.inference.MEMORY_FORMATS[memory_format])
    for b in (1, 7):
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program(x), result.module(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(program(x), small(x), rtol=1e-5, atol=1e-5)
    # the state_dict stays the trainable (unfolded) model's
    state = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    assert state.keys() == small.state_dict().keys()


def test_thin_keeps_batchnorm_when_asked(small_resnet):
    _, small = small_resnet
    result = thin(small, None, torch.randn(2, 3, 32, 32), fold_bn=False, memory_format="contiguous")
    assert any("batch_norm" in str(n.target) for n in result.program.graph.nodes)
    assert result.prepared.folded == [] and result.compiled is None


@pytest.mark.slow
def test_thin_aoti_package_equals_eager(tmp_path):
    """AOTInductor compiles a small program (tens of seconds: a C++ compile)."""
    torch.manual_seed(0)
    model = _randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))
    result = thin(model, tmp_path, torch.randn(1, 3, 16, 16), memory_format="contiguous", aoti=True)
    assert (tmp_path / "model_aoti.pt2").exists()
    loaded = torch._inductor.aoti_load_package(str(tmp_path / "model_aoti.pt2"))
    for b in (1, 5):
        x = torch.randn(b, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(result.compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_compare_times_prepared_forms_and_reports_them(small_resnet):
    dense, small = small_resnet
    stats = compare(dense, small, (3, 32, 32), batch_sizes=(2,), repeats=1)
    assert stats["flops_ratio"] < 1 and stats["flops_reduction"] > 1 and stats["latency_b2"] > 0 and stats["latency_shrunk_b2"] > 0
    assert stats["realised_b2"] == pytest.approx(stats["speedup_b2"] / stats["flops_reduction"])
    assert stats["timed"].startswith("BN folded")
    assert dense.training is False and isinstance(dense.bn1, nn.BatchNorm2d)   # inputs not modified
    plain = compare(dense, small, (3, 32, 32), batch_sizes=(2,), repeats=1, prepare=False)
    assert plain["timed"].startswith("as given")


def test_bench_model_of_a_shrunk_folder_times_dense_and_thin_in_the_inference_form(small_resnet, tmp_path):
    dense, small = small_resnet
    plan = by_ratios(dense, uniform_ratios(dense, 0.5))
    thin(small, tmp_path, torch.randn(1, 3, 32, 32), model_name="resnet20",
         model_kwargs={"width": 0.25, "shortcut": "B"}, structure={"plan": plan})
    rows = pk.export.bench_model(tmp_path, batch_sizes=(2,), repeats=1, memory=False, sparse_repeats=1)
    assert {r["form"] for r in rows} == {"dense", "thin", "thin-pt2", "sparse"}
    thin_row = next(r for r in rows if r["form"] == "thin")
    assert thin_row["flops_ratio"] > 1.5 and thin_row["speedup"] > 0


def test_round_kept_and_uniform_for_flops_multiple_of_give_kernel_friendly_widths():
    from prunekit.structured.select import round_kept
    model = pk.models.get("resnet20", shortcut="B").eval()        # widths 16 / 32 / 64
    assert round_kept(model, {"conv1": 8, "layer1.0.conv1": 7, "layer3.0.conv1": 40, "layer2.0.conv1": 30}, 16) == \
        {"conv1": 16, "layer1.0.conv1": 16, "layer3.0.conv1": 48, "layer2.0.conv1": 32}   # halves up, >= 16, <= C
    with pytest.raises(ValueError, match="multiple_of"):
        round_kept(model, {"conv1": 8}, 0)
    x = torch.randn(1, 3, 32, 32)
    small = shrink(model, x, pk.structured.uniform_for_flops(model, x, 0.5, multiple_of=16))
    widths = {m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)} - {10}
    assert widths and all(w % 16 == 0 for w in widths)
    plain = shrink(model, x, pk.structured.uniform_for_flops(model, x, 0.5))
    assert any(m.out_channels % 16 for m in plain.modules() if isinstance(m, nn.Conv2d))   # 11 / 23 / 46
