"""A Parameter shared by several modules is ONE prunable tensor: one mask entry under its
canonical (first) name, counted once, pruned once, reported under all its names."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import Mask, accounting, prunable_parameters
from prunekit.core.targets import aliases_of


class SharedLinears(nn.Module):
    """Two Linears given one weight Parameter (8x8), then a head (3x8)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)
        self.b.weight = self.a.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=100)
    return transformers.BertForMaskedLM(config)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def test_shared_parameter_is_one_tensor():
    model = SharedLinears()
    assert list(prunable_parameters(model)) == ["a.weight", "head.weight"]
    assert aliases_of(model) == {"a.weight": ("b.weight",)}
    mask = pk.prune(model, 0.5)
    assert mask.total() == 64 + 24 and mask.kept() == 44
    assert int(torch.count_nonzero(model.b.weight)) == int(mask["a.weight"].sum())


def test_report_counts_a_shared_parameter_once_under_all_its_names():
    model = SharedLinears()
    pk.prune(model, 0.5, allocation="uniform")
    report = accounting.report(model, example_input=torch.zeros(1, 8))
    assert [r.name for r in report.layers] == ["a.weight", "head.weight"]
    assert report.layers[0].aliases == ("b.weight",)
    assert report.prunable_params == 88 and report.prunable_nonzero == 32 + 12
    assert report.total_params == 64 + 24 + 3
    assert "= b.weight" in str(report)
    # the shared weight runs twice: its FLOPs are those of both uses
    assert report.layers[0].flops == 2 * 2 * 64


def test_mask_may_name_a_tied_parameter_by_any_name():
    model = SharedLinears()
    keep = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    mask = Mask({"b.weight": keep}, model)
    assert list(mask) == ["a.weight"], "re-keyed by the canonical name"
    with pytest.raises(ValueError, match="twice"):
        Mask({"a.weight": keep, "b.weight": keep}, model)


def test_enforce_and_state_dict_round_trip_with_shared_parameter(tmp_path):
    model = SharedLinears()
    mask = pk.prune(model, 0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pk.enforce(mask, opt)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 8)).square().mean().backward()
        opt.step()
    assert bool((model.a.weight[~mask["a.weight"]] == 0).all())
    mask.save(tmp_path / "mask.pt")
    fresh = SharedLinears()
    fresh.load_state_dict(model.state_dict())
    loaded = Mask.load(tmp_path / "mask.pt", fresh)
    assert all(torch.equal(loaded[k], mask[k]) for k in mask)
    assert fresh.b.weight is fresh.a.weight


def test_bert_with_tied_decoder_prunes_once():
    model = _bert()
    word = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is word
    mask = pk.prune(model, 0.5)
    assert "bert.embeddings.word_embeddings.weight" in mask
    assert "cls.predictions.decoder.weight" not in mask
    params = prunable_parameters(model)
    assert mask.total() == sum(p.numel() for p in params.values())
    assert mask.kept() == round(0.5 * mask.total())
    assert int(torch.count_nonzero(model.cls.predictions.decoder.weight)) == int(mask["bert.embeddings.word_embeddings.weight"].sum())
    rows = {r.name: r for r in accounting.report(model, flops=False).layers}
    assert rows["bert.embeddings.word_embeddings.weight"].aliases == ("cls.predictions.decoder.weight",)
    assert sum(r.params for r in rows.values()) == mask.total()


def test_gpt2_tied_lm_head_prunes_once_and_enforces():
    model = _gpt2()
    mask = pk.prune(model, 0.7)
    assert "transformer.wte.weight" in mask and "lm_head.weight" not in mask
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pk.enforce(mask, opt)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    assert bool((model.lm_head.weight[~mask["transformer.wte.weight"]] == 0).all())


def test_ste_fixed_substitutes_a_tied_weight_at_every_use():
    """BERT's word embeddings and MLM decoder read one Parameter: with the method attached,
    both uses see the masked weight, so the logits equal those of the finalized model."""
    model = _bert().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = pk.methods.get("ste_fixed")(sparsity=0.5, bound="topk").attach(model, opt)
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    method.finalize()
    with torch.no_grad():
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_ltp_trail_snapshot_masks_a_tied_weight_under_every_name():
    model = SharedLinears()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = pk.methods.get("ltp")(init_sparsity=0.6, lam=0.0, trail=(0.5,)).attach(model, opt)
    method.step()
    snapshot = method.trail[0]["model"]
    assert torch.equal(snapshot["a.weight"], snapshot["b.weight"])
    assert int(torch.count_nonzero(snapshot["b.weight"])) == int(method.trail[0]["mask"]["a.weight"].sum())
