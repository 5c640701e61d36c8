"""shrink_transformer: removing attention heads and FFN channels of BERT, torchvision ViT and
a sentence-transformers model gives the outputs of the dense model with the same weights
zeroed (mask_transformer), and bad requests fail with one clear error."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structured import HeadAttention, mask_transformer, shrink_transformer, transformer_layers

from _tiny_transformers import bert_input, tiny_bert, tiny_sentence_transformer, tiny_vit

pytest.importorskip("transformers")

HEADS = {0: [1, 3], "encoder.layer.1": [0]}
FFN = {0: list(range(0, 128, 3)), 1: [5, 7, 100]}


def test_bert_shrunk_equals_masked():
    model, x = tiny_bert(), bert_input()
    small = shrink_transformer(model, x, heads=HEADS, ffn=FFN)
    masked = mask_transformer(copy.deepcopy(model), heads=HEADS, ffn=FFN)
    with torch.no_grad():
        out, ref, dense = small(**x), masked(**x), model(**x)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=0)
    assert not torch.allclose(dense.last_hidden_state, ref.last_hidden_state, atol=1e-3)  # the mask did something
    att = small.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.all_head_size, att.query.out_features) == (2, 32, 32)
    assert small.encoder.layer[0].attention.output.dense.in_features == 32
    assert small.encoder.layer[1].intermediate.dense.out_features == 125
    assert small.config.pruned_heads == {"0": [1, 3], "1": [0]}
    assert model.encoder.layer[0].attention.self.num_attention_heads == 4  # the original is untouched


def test_bert_second_shrink_records_original_indices():
    model, x = tiny_bert(), bert_input()
    once = shrink_transformer(model, x, heads={0: [1]}, ffn={0: [0, 1]})
    twice = shrink_transformer(once, x, heads={0: [1]}, ffn={0: [0]})   # current head 1 = original head 2
    assert twice.config.pruned_heads == {"0": [1, 2]}
    assert twice.config.pruned_intermediate == {"0": [0, 1, 2]}
    masked = mask_transformer(copy.deepcopy(model), heads={0: [1, 2]}, ffn={0: [0, 1, 2]})
    with torch.no_grad():
        torch.testing.assert_close(twice(**x).last_hidden_state, masked(**x).last_hidden_state, atol=1e-5, rtol=0)


def test_vit_shrunk_equals_masked():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    heads, ffn = {0: [0, 2], 1: [3]}, {1: [1, 2, 3], "encoder.layers.encoder_layer_0": list(range(64))}
    small = shrink_transformer(model, x, heads=heads, ffn=ffn)
    masked = mask_transformer(copy.deepcopy(model), heads=heads, ffn=ffn)
    assert isinstance(masked.encoder.layers[0].self_attention, nn.MultiheadAttention)  # masking keeps the MHA
    with torch.no_grad():
        out, ref, dense = small(x), masked(x), model(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(dense, ref, atol=1e-3)
    att = small.encoder.layers[0].self_attention
    assert isinstance(att, HeadAttention)
    assert (att.num_heads, att.head_dim, att.embed_dim, att.q_proj.out_features) == (2, 16, 64, 32)
    assert small.encoder.layers[0].mlp[0].out_features == 64 and small.encoder.layers[1].mlp[3].in_features == 125


def test_head_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    att = HeadAttention.from_mha(mha)
    x = torch.randn(2, 5, 32)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    with torch.no_grad():
        for kwargs in ({"need_weights": False}, {}, {"key_padding_mask": pad, "need_weights": False}):
            (a, wa), (b, wb) = mha(x, x, x, **kwargs), att(x, x, x, **kwargs)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
            if wa is not None:
                torch.testing.assert_close(wa, wb, atol=1e-6, rtol=0)


def test_sentence_transformer_shrunk_equals_masked(tmp_path):
    model = tiny_sentence_transformer(tmp_path)
    features = model.preprocess(["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10", "w3"])
    assert [layer.name for layer in transformer_layers(model)] == ["0.model.encoder.layer.0",
                                                                   "0.model.encoder.layer.1"]
    small = shrink_transformer(model, (features,), heads=HEADS, ffn=FFN)
    masked = mask_transformer(copy.deepcopy(model), heads=HEADS, ffn=FFN)
    with torch.no_grad():
        out = small(dict(features))["sentence_embedding"]
        ref = masked(dict(features))["sentence_embedding"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert small[0].model.encoder.layer[0].attention.self.num_attention_heads == 2


@pytest.mark.parametrize("heads, ffn, error, words", [
    ({0: [4]}, None, ValueError, "head index 4 out of range"),
    ({0: [-1]}, None, ValueError, "out of range"),
    ({1: [0, 1, 2, 3]}, None, ValueError, "removing all 4 heads"),
    (None, {0: range(128)}, ValueError, "removing all 128 FFN channels"),
    (None, {0: [128]}, ValueError, "FFN channel index 128 out of range"),
    ({"encoder.layer.7": [0]}, None, KeyError, "no transformer layer named 'encoder.layer.7'"),
    ({2: [0]}, None, KeyError, "layer index 2 out of range"),
    ({0: [0], "encoder.layer.0": [1]}, None, ValueError, "named twice"),
])
def test_bad_requests_fail_clearly(heads, ffn, error, words):
    model = tiny_bert()
    with pytest.raises(error, match=words):
        shrink_transformer(model, bert_input(), heads=heads, ffn=ffn)
    with pytest.raises(error, match=words):
        mask_transformer(model, heads=heads, ffn=ffn)


def test_not_a_transformer_fails_clearly(tiny_net):
    with pytest.raises(ValueError, match="no transformer layers found"):
        shrink_transformer(tiny_net, torch.randn(1, 3, 8, 8), heads={0: [0]})


def test_exported_at_package_level():
    assert pk.structured.shrink_transformer is shrink_transformer


def test_vit_shrinks_twice():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    once = shrink_transformer(model, x, heads={0: [1]})
    twice = shrink_transformer(once, x, heads={0: [2], 1: [0]}, ffn={0: [4]})   # current head 2 = original 3
    masked = mask_transformer(copy.deepcopy(model), heads={0: [1, 3], 1: [0]}, ffn={0: [4]})
    with torch.no_grad():
        torch.testing.assert_close(twice(x), masked(x), atol=1e-5, rtol=0)
    assert twice.encoder.layers[0].self_attention.num_heads == 2
