"""The ImageNet predefined targets of seed 001 on torchvision's models: Li et al.'s ResNet-34-A/B
shrink resnet34 by the parameter fractions Liu et al. report (7.6% and 10.8%); ThiNet's
ResNet-50-70/50/30% (fraction of conv1/conv2 filters kept) match ThiNet's parameter counts and
FLOPs; He et al.'s FLOPs targets ResNet-50-2x and VGG-16-5x keep 1/2 and 1/5 of the FLOPs on
the layers they prune; the configurations refuse other models."""
import pytest
import torch

from prunekit.structured import predefined_ratios, shrink
from prunekit.structured.select import by_ratios

from conftest import TORCHVISION

pytestmark = pytest.mark.skipif(TORCHVISION == "absent", reason="torchvision not installed")


@pytest.mark.parametrize("name, paper_pruned", [("resnet34-a", 0.076), ("resnet34-b", 0.108)])
def test_resnet34_configs_remove_the_papers_parameter_fraction(name, paper_pruned):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet34()
    ratios = predefined_ratios(name, model)
    assert "layer1.0.conv1" not in ratios and "layer4.0.conv1" not in ratios  # conv 2 skipped; stage 4 kept
    assert all(k.endswith(".conv1") for k in ratios)
    small = shrink(model, torch.randn(1, 3, 64, 64), by_ratios(model, ratios))
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert abs((1 - after / before) - paper_pruned) < 0.002, 1 - after / before
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_resnet34_configs_refuse_other_models():
    import prunekit as pk

    with pytest.raises(ValueError, match="needs an ImageNet ResNet-34"):
        predefined_ratios("resnet34-a", pk.models.get("resnet56"))


# ThiNet's Table (Luo et al. 2017): parameters and GFLOPs of ResNet-50 and ThiNet-70/50/30
# (not in seed 001, which gives only the accuracies); the percentage is the fraction KEPT.
THINET_PAPER = {"resnet50-thinet-70": (16.94e6, 4.88), "resnet50-thinet-50": (12.38e6, 3.41),
                "resnet50-thinet-30": (8.66e6, 2.20)}


@pytest.mark.parametrize("name, kept_width", [("resnet50-thinet-70", 44), ("resnet50-thinet-50", 32),
                                              ("resnet50-thinet-30", 19)])
def test_thinet_resnet50_matches_the_papers_parameters_and_flops(name, kept_width):
    import torchvision
    from prunekit.core.accounting import flops_per_module

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    ratios = predefined_ratios(name, model)
    assert len(ratios) == 32 and all(k.endswith((".conv1", ".conv2")) for k in ratios)
    x = torch.randn(1, 3, 224, 224)
    small = shrink(model, x, by_ratios(model, ratios))
    assert small.layer1[1].conv1.out_channels == small.layer1[1].conv2.out_channels == kept_width
    assert small.layer4[2].conv3.out_channels == 2048 and small.layer4[0].downsample[0].out_channels == 2048
    params = sum(p.numel() for p in small.parameters())
    paper_params, paper_gflops = THINET_PAPER[name]
    assert abs(params - paper_params) < 0.015e6, params
    flops_kept = flops_per_module(small, (3, 224, 224))[1] / flops_per_module(model, (3, 224, 224))[1]
    assert abs(flops_kept - paper_gflops / 7.72) < 0.005, flops_kept   # ThiNet: ResNet-50 = 7.72 GFLOPs
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_thinet_configs_refuse_other_models():
    import torchvision

    with pytest.raises(ValueError, match="needs an ImageNet ResNet-50"):
        predefined_ratios("resnet50-thinet-50", torchvision.models.resnet34())


def test_resnet50_2x_halves_the_flops_on_the_inner_convs():
    import torchvision
    from prunekit.core.accounting import flops_per_module
    from prunekit.structured.select import flops_target_ratios

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    x = torch.randn(1, 3, 224, 224)
    ratios = flops_target_ratios("resnet50-2x", model, x)
    assert len(ratios) == 32 and all(k.endswith((".conv1", ".conv2")) for k in ratios)
    assert len(set(ratios.values())) == 1 and 0.40 < next(iter(ratios.values())) < 0.48
    small = shrink(model, x, by_ratios(model, ratios))
    flops_kept = flops_per_module(small, (3, 224, 224))[1] / flops_per_module(model, (3, 224, 224))[1]
    assert abs(flops_kept - 0.5) < 0.01, flops_kept
    assert small.layer1[1].conv1.out_channels == 36 and small.layer1[1].conv3.out_channels == 256
    with pytest.raises(KeyError, match="FLOPs target"):
        predefined_ratios("resnet50-2x", model)


def test_vgg16_5x_keeps_a_fifth_of_the_flops_with_conv5_intact():
    """As the spec runs it (examples/paper/imagenet_channel_pruning_vgg16.yaml): the model
    ``torchvision:vgg16``, the structured pipeline's plan for ``config: vgg16-5x``; the widths
    and sizes are the ones prunekit.structured.configs documents."""
    import prunekit as pk
    from prunekit.core.accounting import flops_per_module
    from prunekit.pipelines.structured_pipelines import StructuredParams, structured_plan
    from prunekit.structured.plan import example_input

    torch.manual_seed(0)
    model = pk.models.get("torchvision:vgg16", num_classes=1000)
    assert isinstance(model.classifier[0], torch.nn.Linear) and model.classifier[0].in_features == 512 * 7 * 7
    x = example_input(model)   # 224x224: the classifier's FLOPs are fixed, so the size matters
    assert x.shape == (1, 3, 224, 224)
    plan = structured_plan(model, x, StructuredParams(config="vgg16-5x"))
    convs = [n for n, m in model.features.named_children() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(plan, key=lambda k: int(k.split(".")[1])) == [f"features.{n}" for n in convs[:10]]
    small = shrink(model, x, plan)
    widths = [m.out_channels for m in small.features if isinstance(m, torch.nn.Conv2d)]
    assert widths == [23, 23, 47, 47, 94, 94, 94, 188, 188, 188, 512, 512, 512], widths
    flops_kept = flops_per_module(small, (3, 224, 224))[1] / flops_per_module(model, (3, 224, 224))[1]
    assert abs(flops_kept - 0.2) < 0.01, flops_kept
    assert abs(sum(p.numel() for p in small.parameters()) - 130.26e6) < 0.01e6


def test_structured_pipeline_takes_the_flops_targets_and_thinet_as_config():
    import torchvision
    from prunekit.core.accounting import flops_per_module
    from prunekit.pipelines.structured_pipelines import StructuredParams, structured_plan

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    x = torch.randn(1, 3, 64, 64)
    plan = structured_plan(model, x, StructuredParams(config="resnet50-2x"))
    small = shrink(model, x, plan)
    assert abs(flops_per_module(small, (3, 64, 64))[1] / flops_per_module(model, (3, 64, 64))[1] - 0.5) < 0.01
    plan = structured_plan(model, x, StructuredParams(config="resnet50-thinet-50"))
    assert len(plan["layer1.0.conv1"]) == 32
    from prunekit.params import validate

    validate(StructuredParams(config="VGG16-5x"))
    with pytest.raises(ValueError, match="unknown predefined configuration"):
        validate(StructuredParams(config="resnet50-3x"))


def test_resnet50_2x_ratios_run_he_et_als_lasso_selection():
    import torchvision
    from prunekit.structured.reconstruct import reconstruct_layers
    from prunekit.structured.select import flops_target_ratios

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    images = torch.randn(4, 3, 64, 64)
    ratios = flops_target_ratios("resnet50-2x", model, images[:1], iters=6)
    first = {k: v for k, v in ratios.items() if k.startswith("layer1.0.")}  # two layers keep it quick
    small, plan = reconstruct_layers(model, first, images, "lasso", samples=200)
    kept = 64 - len(plan["layer1.0.conv1"])
    assert small.layer1[0].conv1.out_channels == small.layer1[0].conv2.out_channels == kept < 64
    assert small(images).shape == (4, 1000)
