"""FLOPs of attention models against hand counts: the MHA fast path, SDPA's CPU kernel,
weights used outside their module's forward (MHA's out_proj, in_proj_weight) and the
effective FLOPs of pruned slices of a packed projection."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.core.accounting import flops_per_module, report
from prunekit.core.flops import count_flops


def _encoder_layer_flops(d: int, heads: int, ff: int, tokens: int) -> dict:
    """Hand count, 2 FLOPs per multiply-add: projections, the two attention products, MLP."""
    return {"in_proj": 2 * tokens * d * 3 * d, "attention": 2 * 2 * tokens * tokens * d,
            "out_proj": 2 * tokens * d * d, "mlp": 2 * 2 * tokens * d * ff}


@pytest.mark.parametrize("fastpath", [True, False])
def test_encoder_layer_counted_whether_or_not_the_fast_path_is_on(fastpath):
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
        per_module, total = flops_per_module(layer, example_input=torch.randn(1, 16, 64))
        assert torch.backends.mha.get_fastpath_enabled() is fastpath      # restored
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    hand = _encoder_layer_flops(64, 4, 128, 16)
    assert total == sum(hand.values())
    assert per_module["self_attn.in_proj_weight"] == hand["in_proj"]
    assert per_module["self_attn.out_proj"] == hand["out_proj"]        # used by MHA, not by its own forward
    assert per_module["linear1"] + per_module["linear2"] == hand["mlp"]


def test_scaled_dot_product_attention_is_counted():
    class Attend(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)

    b, h, length, e = 2, 3, 10, 8
    counted = count_flops(Attend(), torch.randn(b, h, length, e))
    assert counted.total == 2 * 2 * b * h * length * length * e


class PackedProjection(nn.Module):
    """Uses three row blocks of one packed weight separately (like q/k/v of in_proj_weight)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.packed = nn.Parameter(torch.randn(3 * d, d))

    def forward(self, x):
        return sum(F.linear(x, w) for w in self.packed.chunk(3))


def test_effective_flops_count_the_zeros_of_each_slice_used():
    model = PackedProjection()
    with torch.no_grad():
        model.packed[:8].zero_()                 # the first block entirely pruned
        model.packed[8:16, :4].zero_()           # the second half pruned
    counted = count_flops(model, torch.randn(5, 8))
    per_slice = 2 * 5 * 8 * 8
    assert counted.total == 3 * per_slice
    assert counted.dense == {"packed": 3 * per_slice}
    assert counted.effective == {"packed": 0 + per_slice // 2 + per_slice}
    assert counted.effective_total == per_slice // 2 + per_slice


def test_pruned_out_proj_lowers_effective_flops():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    x = torch.randn(1, 6, 32)
    pk.prune(layer, 0.5, allocation="uniform", include=["self_attn.out_proj*"])
    rep = report(layer, example_input=x, types=(nn.Linear,))
    row = next(r for r in rep.layers if r.name == "self_attn.out_proj.weight")
    assert row.flops == 2 * 6 * 32 * 32 and row.effective_flops == row.flops // 2
    assert rep.flops - rep.effective_flops == row.flops // 2


def test_tied_weight_counted_under_one_name_for_every_use():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.decoder = nn.Linear(8, 20, bias=False)
            self.decoder.weight = self.embed.weight

        def forward(self, ids):
            return self.decoder(self.embed(ids))

    counted = count_flops(Tied(), torch.arange(5).unsqueeze(0))
    assert counted.dense == {"embed.weight": 2 * 5 * 8 * 20} and counted.total == 2 * 5 * 8 * 20


class ViTB16(nn.Module):
    """ViT-B/16's shape (Dosovitskiy et al. 2021) from plain torch layers: 16x16 patches,
    768 wide, 12 layers of 12 heads, MLP 3072, a class token, 1000 classes."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 768, 16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, 768))
        self.pos = nn.Parameter(torch.zeros(1, 197, 768))
        layer = nn.TransformerEncoderLayer(768, 12, 3072, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
        self.head = nn.Linear(768, 1000)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.encoder(x)[:, 0])


def test_vit_b16_matches_its_published_17_56_gmacs():
    total = flops_per_module(ViTB16(), example_input=torch.randn(1, 3, 224, 224))[1]
    per_layer = sum(_encoder_layer_flops(768, 12, 3072, 197).values())
    assert total == 12 * per_layer + 2 * 768 * 768 * 196 + 2 * 768 * 1000
    assert total == pytest.approx(2 * 17.56e9, rel=1e-3)                 # 35.13 GFLOPs
