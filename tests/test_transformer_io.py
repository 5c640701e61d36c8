"""Shrunk transformers save and reload: HF save_pretrained, sentence-transformers save, and
state_dicts (rebuild = shrink the original architecture with the same request)."""
import pytest
import torch

from prunekit.structured import load_pretrained_shrunk, load_sentence_transformer_shrunk, shrink_transformer
from _tiny_transformers import bert_input, tiny_bert, tiny_sentence_transformer, tiny_vit

HEADS, FFN = {0: [1, 3], 1: [2]}, {1: [5, 6, 70]}


def test_bert_save_pretrained_and_reload(tmp_path):
    x = bert_input()
    small = shrink_transformer(tiny_bert(), x, heads=HEADS, ffn=FFN)
    small.save_pretrained(tmp_path)
    again = load_pretrained_shrunk(tmp_path)
    assert again.config.pruned_heads == {"0": [1, 3], "1": [2]}
    assert again.config.pruned_intermediate == {"1": [5, 6, 70]}
    assert again.encoder.layer[0].attention.self.num_attention_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(again(**x).last_hidden_state, small(**x).last_hidden_state, atol=0, rtol=0)


@pytest.mark.parametrize("build, x", [(tiny_bert, None), (tiny_vit, torch.randn(2, 3, 32, 32))])
def test_state_dict_round_trip(tmp_path, build, x):
    x = bert_input() if x is None else x
    small = shrink_transformer(build(), x, heads=HEADS, ffn=FFN)
    torch.save(small.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(123)  # a different initialisation: every weight must come from the file
    rebuilt = shrink_transformer(build(), x, heads=HEADS, ffn=FFN, inplace=True)
    rebuilt.load_state_dict(torch.load(tmp_path / "w.pt"), strict=True)

    def run(m):
        out = m(**x) if isinstance(x, dict) else m(x)
        return out.last_hidden_state if isinstance(x, dict) else out

    with torch.no_grad():
        torch.testing.assert_close(run(rebuilt), run(small), atol=0, rtol=0)


def test_sentence_transformer_save_and_reload(tmp_path):
    model = tiny_sentence_transformer(tmp_path)
    features = model.preprocess(["w1 w2 w3", "w4 w5"])
    small = shrink_transformer(model, (features,), heads=HEADS, ffn=FFN)
    small.save(str(tmp_path / "saved"))
    again = load_sentence_transformer_shrunk(tmp_path / "saved")
    sentences = ["w1 w2 w3", "w9 w8 w7 w6"]
    torch.testing.assert_close(again.encode(sentences, convert_to_tensor=True),
                               small.encode(sentences, convert_to_tensor=True), atol=1e-6, rtol=0)
    assert again[0].model.encoder.layer[1].intermediate.dense.out_features == 125
