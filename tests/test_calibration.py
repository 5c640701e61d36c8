"""Calibration statistics: loaders of every batch kind, conv patches, padding, bad loaders."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.core import calibration


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_linear_stats_are_sums_over_all_tokens():
    model = _mlp()
    x = torch.randn(12, 8)
    stats = calibration.collect(model, ["0.weight", "2.weight"], [x[:5], x[5:]], hessian=True)
    h = torch.relu(model[0](x)).double()
    assert stats["0.weight"].tokens == 12
    assert torch.allclose(stats["0.weight"].sq_norms, x.double().square().sum(0))
    assert torch.allclose(stats["2.weight"].xtx, h.t() @ h, atol=1e-5)
    assert torch.allclose(stats["2.weight"].hessian(), 2 * h.t() @ h, atol=1e-5)


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict", "generator"])
def test_every_batch_kind(kind):
    class Keyword(nn.Module):       # a model called as model(x=...), like HF models
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x)

    model = Keyword()
    xs = [torch.randn(4, 8) for _ in range(3)]
    loader = {"tensor": xs, "tuple": [(x, torch.zeros(4)) for x in xs], "dict": [{"x": x} for x in xs],
              "generator": (x for x in xs)}[kind]
    if kind != "dict":
        model = model.net
    name = "net.0.weight" if kind == "dict" else "0.weight"
    stats = calibration.collect(model, [name], loader)
    assert stats[name].tokens == 12
    assert torch.allclose(stats[name].sq_norms, torch.cat(xs).double().square().sum(0))


@pytest.mark.parametrize("loader", [[], iter([])])
def test_empty_loader_is_one_clear_error(loader):
    with pytest.raises(ValueError, match="yielded no batch"):
        pk.prune(_mlp(), 0.5, score="wanda", calibration=loader)


def test_missing_loader_and_bad_batches():
    with pytest.raises(ValueError, match="needs calibration data"):
        pk.prune(_mlp(), 0.5, score="wanda")
    with pytest.raises(ValueError, match="a tensor, an \\(x, y\\) tuple, a dict"):
        pk.prune(_mlp(), 0.5, score="wanda", calibration=["not a batch"])


def test_conv2d_tokens_are_unfolded_patches():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    model = nn.Sequential(conv)
    x = torch.randn(2, 3, 7, 7)
    stats = calibration.collect(model, ["0.weight"], [x], hessian=True)
    cols = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 27).double()
    assert stats["0.weight"].tokens == cols.shape[0]
    assert torch.allclose(stats["0.weight"].xtx, cols.t() @ cols, atol=1e-6)
    # the patch features line up with weight.reshape(out, -1): W X reproduces the conv
    out = (conv.weight.reshape(4, -1).double() @ cols.t()).t()
    ref = (conv(x) - conv.bias.view(1, 4, 1, 1)).permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.allclose(out, ref.double(), atol=1e-5)


def test_grouped_conv_is_refused_by_name(tiny_net):
    with pytest.raises(ValueError, match="depthwise.weight: calibration reads Conv2d with groups=1"):
        pk.prune(tiny_net, 0.5, score="wanda", calibration=[torch.randn(2, 3, 8, 8)])
    mask = pk.prune(tiny_net, 0.5, score="wanda", calibration=[torch.randn(2, 3, 8, 8)], exclude="depthwise")
    assert mask.kept() == sum(m.numel() for m in mask.values()) // 2


def test_padding_positions_are_not_tokens():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.fc = nn.Linear(6, 3)

        def forward(self, input_ids, attention_mask):
            return self.fc(self.emb(input_ids))

    model = Tokens()
    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    keep = torch.tensor([[1, 1, 1], [1, 0, 0]])
    stats = calibration.collect(model, ["fc.weight"], [{"input_ids": ids, "attention_mask": keep}])
    real = model.emb(torch.tensor([1, 2, 3, 4])).double()
    assert stats["fc.weight"].tokens == 4
    assert torch.allclose(stats["fc.weight"].sq_norms, real.square().sum(0).detach())


@pytest.mark.parametrize("score, pattern", [("wanda", None), ("wanda", "2:4"), ("sparsegpt", None),
                                            ("sparsegpt", "2:4"), ("magnitude", "2:4")])
def test_hf_conv1d_weights_are_read_transposed(score, pattern):
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2Model(config).eval()
    loader = [{"input_ids": torch.randint(0, 50, (3, 8))} for _ in range(2)]
    mask = pk.prune(model, 0.5, score=score, pattern=pattern, calibration=loader, types=(Conv1D,))
    assert len(mask) == 8 and mask.kept() == mask.total() // 2
    for name, keep in mask.items():
        rows = keep.t()     # Conv1D stores (in, out): rows are outputs once transposed
        if pattern == "2:4":
            assert bool((rows.reshape(rows.shape[0], -1, 4).sum(-1) == 2).all()), name
        elif score == "wanda":
            assert int(rows.sum(1).max() - rows.sum(1).min()) <= 1, name
    if score == "wanda":    # the norms are those of the layer's inputs (in = rows of the weight)
        stats = calibration.collect(model, ["h.0.mlp.c_proj.weight"], loader)
        assert stats["h.0.mlp.c_proj.weight"].transposed
        assert stats["h.0.mlp.c_proj.weight"].sq_norms.shape == (128,)
