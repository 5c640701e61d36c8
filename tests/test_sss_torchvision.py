"""SSS on torchvision's ResNet-50 (seed 001, "Sparse Structure Selection": ResNet-50 ->
ResNet-41 / 32 / 26): its identity-shortcut Bottlenecks get a factor, blocks with a downsample
do not; removing k blocks whose factor is 0 gives a model that computes what the finalized
(masked) one does, with ResNet-50's parameters minus those blocks' and depth 50 - 3k."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.methods.sss import RemovedBlock
from prunekit.structured.blocks import block_spec, residual_blocks

from conftest import TORCHVISION

pytestmark = pytest.mark.skipif(TORCHVISION == "absent", reason="torchvision not installed")

# Depth counts the convs and the fc on the main path (the stem, 3 per bottleneck, the fc), not
# the downsample convs: 1 + 3 * 16 + 1 = 50.
REMOVED = {
    41: ["layer3.3", "layer3.4", "layer3.5"],
    32: ["layer2.3", "layer3.2", "layer3.3", "layer3.4", "layer3.5", "layer4.2"],
    26: ["layer1.2", "layer2.2", "layer2.3", "layer3.2", "layer3.3", "layer3.4", "layer3.5", "layer4.2"],
}


def _depth(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for n, m in model.named_modules() if "downsample" not in n)


def test_only_identity_bottlenecks_get_a_factor():
    import torchvision

    model = torchvision.models.resnet50()
    names = [n for n, _ in residual_blocks(model)]
    assert len(names) == 12 and _depth(model) == 50
    assert all(not n.endswith(".0") for n in names)  # the first block of each stage has a downsample
    assert block_spec(model.layer1[0]) is None and block_spec(model.layer1[1]) == ("bn3", True)
    basic = torchvision.models.resnet18()
    assert [n for n, _ in residual_blocks(basic)] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


@pytest.mark.parametrize("depth", [41, 32, 26])
def test_resnet50_to_resnet_depth_by_zero_factors(depth):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = pk.methods.get("sss")(gamma=0.1, lr=0.5, input_shape=(3, 64, 64)).attach(model, opt)
    assert method.kind == "blocks" and len(method.factors) == 12
    names = [n for n, _, _ in method.targets]
    modules = dict(model.named_modules())
    removed_params = sum(p.numel() for n in REMOVED[depth] for p in modules[n].parameters())
    before = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for n in REMOVED[depth]:
            method.factors[names.index(n)].fill_(0.0)
        masked_out = model(x)  # the factors' hooks: a zero factor leaves relu(shortcut(x))
    method.finalize()
    assert method.zeroed() == REMOVED[depth]
    small = method.shrunk().eval()
    assert [n for n, m in small.named_modules() if isinstance(m, RemovedBlock)] == REMOVED[depth]
    assert _depth(small) == depth == 50 - 3 * len(REMOVED[depth])
    assert sum(p.numel() for p in small.parameters()) == before - removed_params
    with torch.no_grad():
        out = small(x)
        assert torch.allclose(out, model(x), atol=1e-5)   # the finalized (zeroed-block) model
        assert torch.allclose(out, masked_out, atol=1e-5)
