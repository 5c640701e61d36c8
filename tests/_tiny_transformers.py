"""Tiny transformers for the structured-pruning tests (random weights, built offline):
a 2-layer BERT (hidden 64, 4 heads, intermediate 128), a torchvision ViT of the same size
and a sentence-transformers model (Transformer over a saved tiny BERT + mean Pooling)."""
import pytest
import torch
from torch import nn


def tiny_bert():
    torch.manual_seed(0)
    hf = _transformers()
    config = hf.BertConfig(vocab_size=100, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                           intermediate_size=128, max_position_embeddings=32)
    return hf.BertModel(config).eval()


def bert_input():
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0  # padding, so the attention mask takes part
    return {"input_ids": ids, "attention_mask": mask}


def tiny_vit():
    tv = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    model.heads = nn.Identity()  # torchvision zero-initialises the classifier: compare the features
    return model.eval()


def tiny_sentence_transformer(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = _transformers().BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    bert = tiny_bert()
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    word = modules.Transformer(str(tmp_path / "bert"), max_seq_length=16)
    pooling = modules.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    return st.SentenceTransformer(modules=[word, pooling], device="cpu").eval()




def _transformers():
    return pytest.importorskip("transformers")
