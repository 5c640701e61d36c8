"""Li et al.'s ImageNet targets ResNet-34-A/B (Liu et al. 2019, Table 1): on torchvision's
resnet34 the predefined ratios shrink the model by the parameter fractions the paper reports
(7.6% and 10.8%), and the configurations refuse other models."""
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
