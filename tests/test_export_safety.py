"""export.sparse never breaks a model (issue #13 F): layers whose weight their parent reads
(MultiheadAttention's out_proj, TransformerEncoderLayer's fast path) stay dense and are named;
token inputs are batched in sequences; Hugging Face dict inputs work; a failing export is
reverted to dense."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.export import SparseLinear, decisions, sparse


def _prune(model, sparsity=0.95):
    pk.prune(model, sparsity, score="magnitude", allocation="global")
    return model.eval()


def _by_layer(exported):
    return {d["layer"]: d for d in decisions(exported)}


def test_per_sequence_kernel_and_int32_csr_match_linear():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    with torch.no_grad():
        lin.weight[torch.rand_like(lin.weight) < 0.8] = 0
    for options in ({}, {"per_sequence": True}):
        sp = SparseLinear.from_dense(lin, **options)
        assert sp.weight.crow_indices().dtype == torch.int32
        for shape in [(12,), (5, 12), (3, 5, 12), (2, 3, 5, 12)]:
            x = torch.randn(*shape)
            with torch.no_grad():
                torch.testing.assert_close(sp(x), lin(x), rtol=1e-5, atol=1e-6)
                if len(shape) >= 3:  # the layout of nn.Linear's outputs, for the ops after it
                    assert sp(x).is_contiguous()


@pytest.mark.parametrize("measure", [False, True])
def test_vit_like_model_runs_and_matches_with_out_proj_left_dense(measure):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = _prune(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                   mlp_dim=64, num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    fast = sparse(vit, x, measure=measure, min_sparsity=0.5, repeats=2)
    with torch.inference_mode():  # the MHA fast path (aten::_native_multi_head_attention) runs here
        torch.testing.assert_close(fast(x), vit(x), rtol=1e-4, atol=1e-4)
    rows = _by_layer(fast)
    out_proj = rows["encoder.layers.encoder_layer_0.self_attention.out_proj"]
    assert out_proj["form"] == "dense" and "MultiheadAttention" in out_proj["reason"]
    assert isinstance(fast.get_submodule("encoder.layers.encoder_layer_0.self_attention.out_proj"), nn.Linear)
    if not measure:  # the MLP Linears are replaced (threshold mode: deterministic)
        assert rows["encoder.layers.encoder_layer_0.mlp.0"]["form"] == "csr"


def test_transformer_encoder_fast_path_layers_stay_dense_even_without_an_example():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = _prune(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))
    x = torch.randn(3, 5, 16)
    fast = sparse(model, x, measure=False, min_sparsity=0.5)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    rows = _by_layer(fast)
    assert "not called" in rows["layers.0.linear1"]["reason"]  # the fused kernel reads its weight
    static = sparse(model, measure=False, min_sparsity=0.5)  # no example: the static rule
    assert "TransformerEncoderLayer" in _by_layer(static)["layers.0.linear1"]["reason"]
    assert "MultiheadAttention" in _by_layer(static)["layers.0.self_attn.out_proj"]["reason"]
    with torch.inference_mode():
        torch.testing.assert_close(static(x), model(x), rtol=1e-4, atol=1e-4)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.fc = nn.Linear(32, 48)

    def forward(self, ids):
        return self.fc(self.embed(ids))


def test_batch_size_counts_sequences_for_token_inputs():
    torch.manual_seed(0)
    model = _prune(_Tokens(), 0.9)
    ids = torch.randint(0, 50, (1, 16))
    fast = sparse(model, ids, batch_size=4, repeats=2)
    assert _by_layer(fast)["fc"]["input_shape"] == (4, 16, 32)  # 4 sequences of 16 tokens, not 4 rows
    assert _by_layer(fast)["fc"]["dense_s"] is not None
    assert _by_layer(sparse(model, ids, repeats=2))["fc"]["input_shape"] == (1, 16, 32)  # the example's own
    with torch.no_grad():
        torch.testing.assert_close(fast(ids.repeat(3, 1)), model(ids.repeat(3, 1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        sparse(model, ids, batch_size=0)


def test_hf_dict_input_default_example_and_batch(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(tmp_path / "bert"))
    model = pk.models.get(f"hf:{tmp_path / 'bert'}")
    pk.prune(model, 0.9, score="magnitude", allocation="global", include=["encoder.*"])
    fast = sparse(model, batch_size=2, measure=False, min_sparsity=0.5)  # default: 128 tokens, capped at 64 positions
    rows = _by_layer(fast)
    assert rows["encoder.layer.0.intermediate.dense"]["input_shape"] == (2, 64, 32)
    assert rows["encoder.layer.0.intermediate.dense"]["form"] == "csr"
    inputs = {"input_ids": torch.randint(1, 30, (3, 20)), "attention_mask": torch.ones(3, 20, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(fast(**inputs).last_hidden_state, model(**inputs).last_hidden_state,
                                   rtol=1e-4, atol=1e-4)
    measured = sparse(model, inputs, repeats=2)  # the user's dict input, as keyword arguments
    assert _by_layer(measured)["encoder.layer.0.output.dense"]["input_shape"] == (3, 20, 64)


class _ReadsChildWeight(nn.Module):
    """Calls fc, and also reads fc.weight in a way a CSR tensor cannot serve."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(x) + self.fc.weight.view(-1)[:16]


def test_an_export_that_fails_is_reverted_to_dense():
    torch.manual_seed(0)
    model = _prune(_ReadsChildWeight(), 0.9)
    x = torch.randn(4, 16)
    fast = sparse(model, x, measure=False, min_sparsity=0.5)
    row = _by_layer(fast)["fc"]
    assert row["form"] == "dense" and row["reason"].startswith("reverted: the sparse export failed")
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x))


def test_a_sparse_layer_feeding_another_through_pointwise_ops_hands_on_its_transposed_product():
    torch.manual_seed(0)
    model = _prune(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.LayerNorm(16), nn.Linear(16, 8)), 0.9)
    x = torch.randn(2, 10, 16)
    fast = sparse(model, x, measure=False, min_sparsity=0.5)
    rows = _by_layer(fast)
    assert rows["0"].get("transposed_output") is True       # 0 -> GELU -> 2: pointwise only
    assert not rows["2"].get("transposed_output")            # 2 -> LayerNorm -> 4: not pointwise
    assert fast[0].transposed_output and not fast[2].transposed_output
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
