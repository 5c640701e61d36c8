"""SparseGPT (Frantar & Alistarh 2023): exact counts, N:M, lower reconstruction error than
magnitude and Wanda, layers in call order with q/k/v together."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import sparsegpt


def _correlated_inputs(n=256, width=64, factors=24, seed=0):
    """Features mixed from fewer latent factors (so a pruned weight's work can move to its
    correlated neighbours) at very different loudness (loud ones scattered along the input, as
    in real activations), plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(factors, width, generator=g) / factors ** 0.5
    scale = torch.logspace(-1, 1, width)[torch.randperm(width, generator=g)]
    latent = torch.randn(n, factors, generator=g)
    return (latent @ mixing + 0.1 * torch.randn(n, width, generator=g)) * scale


def _layer(seed=0, width=64, out=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, out, bias=False))


def _error(model, dense, x):
    with torch.no_grad():
        return float((model(x) - dense(x)).norm() / dense(x).norm())


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_beats_magnitude_and_wanda(pattern):
    x = _correlated_inputs()
    loader = [x[:128], x[128:]]
    dense = _layer()
    errors = {}
    for score in ["magnitude", "wanda", "sparsegpt"]:
        model = _layer()
        mask = pk.prune(model, 0.5, score=score, allocation="uniform", calibration=loader,
                        pattern=pattern if score != "wanda" or pattern != "unstructured" else "per_output")
        assert mask.kept() == 64 * 32 // 2
        errors[score] = _error(model, dense, x)
    # measured: unstructured 0.049 / 0.064 / 0.381, 2:4 0.081 / 0.127 / 0.432
    assert errors["sparsegpt"] < 0.85 * errors["wanda"], errors
    assert errors["wanda"] < 0.5 * errors["magnitude"], errors


@pytest.mark.parametrize("allocation", ["uniform", "global", "erk"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_exact_counts(sparsity, allocation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 20), nn.ReLU(), nn.Linear(20, 5))
    x = torch.randn(64, 40)
    mask = pk.prune(model, sparsity, score="sparsegpt", allocation=allocation, calibration=[x[:32], x[32:]])
    total = sum(m.numel() for m in mask.values())
    assert mask.kept() == round((1 - sparsity) * total)
    for name, p in model.named_parameters():
        if name in mask:    # the updated weights are exactly zero off the mask
            assert torch.equal(p != 0, mask[name])
    if allocation == "uniform":  # every layer its own exact share, across 128-column blocks
        for m in mask.values():
            assert abs(int(m.sum()) - (1 - sparsity) * m.numel()) <= 1


def test_pruning_again_only_removes_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    loader = [torch.randn(32, 16)]
    first = pk.prune(model, 0.5, score="sparsegpt", calibration=loader)
    second = pk.prune(model, 0.75, score="sparsegpt", calibration=loader)
    assert second.is_subset_of(first)
    assert second.kept() == round(0.25 * second.total())


def test_layer_by_hand_keeps_the_optimal_weight():
    # two perfectly correlated inputs (x1 = x0): pruning w1 and moving it onto w0 is exact
    w = torch.tensor([[1.0, 2.0]])
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [-1.0, -1.0]], dtype=torch.float64)
    new, keep = sparsegpt.prune_layer(w, 2 * x.t() @ x, kept=1, alive=torch.ones(1, 2, dtype=torch.bool),
                                      dampening=1e-9)
    assert keep.tolist() == [[False, True]] or keep.tolist() == [[True, False]]
    assert float((new.double() @ x.t() - w.double() @ x.t()).abs().max()) < 1e-4
    assert pytest.approx(float(new.sum()), abs=1e-4) == 3.0


def test_layers_go_in_call_order_and_shared_inputs_together():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(8, 8)          # registered first, called last
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1) @ self.v(x)
            return self.out(a)

    model = Attention()
    groups = sparsegpt.call_groups(model, ["out.weight", "q.weight", "k.weight", "v.weight"],
                                   [torch.randn(2, 5, 8)])
    assert groups == [["q.weight", "k.weight", "v.weight"], ["out.weight"]]


def test_bert_with_dict_batches():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    g = torch.Generator().manual_seed(0)
    loader = [{"input_ids": torch.randint(0, 50, (4, 10), generator=g),
               "attention_mask": torch.ones(4, 10, dtype=torch.long)} for _ in range(3)]
    loader[0]["attention_mask"][0, 6:] = 0
    groups = sparsegpt.call_groups(model, list(pk.core.prunable_parameters(model, include="encoder.*")), loader)
    assert groups[0] == [f"encoder.layer.0.attention.self.{n}.weight" for n in ("query", "key", "value")]
    for score, pattern in [("sparsegpt", "2:4"), ("sparsegpt", None), ("wanda", None), ("wanda", "4:8")]:
        model_copy = transformers.BertModel(config).eval()
        model_copy.load_state_dict(model.state_dict())
        mask = pk.prune(model_copy, 0.5, score=score, pattern=pattern, calibration=loader, include="encoder.*")
        assert mask.kept() == mask.total() // 2
        assert len(mask) == 12


def test_each_layer_sees_the_inputs_of_the_pruned_layers_before_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = _correlated_inputs(n=128, width=16, factors=8)
    by_hand = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    by_hand.load_state_dict(model.state_dict())
    pk.prune(model, 0.5, score="sparsegpt", calibration=[x])
    alive = torch.ones(32, 16, dtype=torch.bool)
    with torch.no_grad():
        w0, _ = sparsegpt.prune_layer(by_hand[0].weight, 2 * x.double().t() @ x.double(), 256, alive)
        by_hand[0].weight.copy_(w0)
        h = torch.relu(by_hand[0](x)).double()          # the pruned first layer's outputs
        w2, _ = sparsegpt.prune_layer(by_hand[2].weight, 2 * h.t() @ h, 128, torch.ones(8, 32, dtype=torch.bool))
    assert torch.allclose(model[0].weight, w0, atol=1e-6)
    assert torch.allclose(model[2].weight, w2, atol=1e-5)
