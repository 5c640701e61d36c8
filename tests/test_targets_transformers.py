"""Attention and Hugging Face layers are prunable in every path: prune, enforce, the
during-training methods (whose substituted weights must reach MHA's own forward and the
fused fast path), finalize and the report."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import accounting, prunable_parameters
from prunekit.core.targets import default_types, prunable_targets

D, HEADS, FF = 16, 2, 32


def encoder_layer():
    """A TransformerEncoderLayer inside a container. batch_first + eval + no_grad are the
    conditions of torch's fused fast path, which the layer takes unless hooks sit on the
    layer itself: here they sit on its children (MHA, linear1/2) and on the container."""
    torch.manual_seed(0)
    return nn.Sequential(nn.TransformerEncoderLayer(D, HEADS, dim_feedforward=FF, dropout=0.0, batch_first=True))


class CrossAttention(nn.Module):
    """MHA whose keys / values have other widths: separate q/k/v projection weights."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, kdim=8, vdim=12, batch_first=True)

    def forward(self, x):
        kv = x[..., :8]
        return self.attn(x, kv, x[..., :12], need_weights=False)[0]


def _x(batch=3, length=5):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(1))


def test_mha_weights_are_prunable_by_default():
    names = list(prunable_parameters(encoder_layer()))
    assert names == ["0.self_attn.in_proj_weight", "0.self_attn.out_proj.weight", "0.linear1.weight", "0.linear2.weight"]
    names = list(prunable_parameters(CrossAttention()))
    assert names == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"]
    # types= reaches them too: MHA alone gives its projections, out_proj included
    assert list(prunable_parameters(encoder_layer(), types=[nn.MultiheadAttention])) == [
        "0.self_attn.in_proj_weight", "0.self_attn.out_proj.weight"]


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk"])
def test_prune_gives_exact_counts_in_mha(allocation):
    model = encoder_layer()
    mask = pk.prune(model, 0.75, allocation=allocation)
    total = 3 * D * D + D * D + 2 * D * FF
    assert mask.total() == total and mask.kept() == round(0.25 * total)
    params = dict(model.named_parameters())
    for name in mask:
        assert int(torch.count_nonzero(params[name])) == int(mask[name].sum()), name
    if allocation == "uniform":
        assert int(mask["0.self_attn.in_proj_weight"].sum()) == 3 * D * D // 4
        assert int(mask["0.self_attn.out_proj.weight"].sum()) == D * D // 4


def test_separate_qkv_projections_are_pruned():
    model = CrossAttention()
    mask = pk.prune(model, 0.5, allocation="uniform")
    assert int(mask["attn.k_proj_weight"].sum()) == D * 8 // 2
    assert int(torch.count_nonzero(model.attn.v_proj_weight)) == D * 12 // 2


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
])
def test_enforce_keeps_mha_zeros_through_training(make_opt):
    model = encoder_layer()
    mask = pk.prune(model, 0.8)
    opt = make_opt(model.parameters())
    pk.enforce(mask, opt)
    for _ in range(3):
        opt.zero_grad()
        model(_x()).square().mean().backward()
        opt.step()
    params = dict(model.named_parameters())
    for name in ("0.self_attn.in_proj_weight", "0.self_attn.out_proj.weight"):
        assert bool((params[name][~mask[name]] == 0).all()), name
        assert bool((params[name][mask[name]] != 0).any()), f"{name} trains"


def _method(name):
    if name == "ste_fixed":
        return pk.methods.get("ste_fixed")(sparsity=0.6, bound="topk", min_weights=1)  # tiny layers
    if name == "ltp":
        return pk.methods.get("ltp")(init_sparsity=0.6, lam=0.0)
    return pk.methods.get("sparsity_loss")(budget=0.4, min_weights=1, r_init=1.0)


def _with_effective_weights(model, method, make):
    """A fresh copy of ``model`` whose prunable weights are the method's effective ones."""
    plain = make()
    plain.load_state_dict(model.state_dict())
    plain.train(model.training)
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, p in method.params.items():
            owner_name, _, attr = name.rpartition(".")
            reader = dict(model.named_modules())[owner_name]
            effective = method._effective(name, reader, p).detach()
            getattr(modules[owner_name], attr).copy_(effective)
    return plain


@pytest.mark.parametrize("method_name", ["ste_fixed", "ltp", "sparsity_loss"])
@pytest.mark.parametrize("make", [encoder_layer, CrossAttention], ids=["encoder_layer", "cross_attention"])
def test_methods_substitute_mha_weights(method_name, make):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    method = _method(method_name).attach(model, opt)
    assert {n for n in method.params if "proj" in n} >= {n for n in prunable_parameters(model) if "proj" in n}
    x = _x()
    for _ in range(2):
        opt.zero_grad()
        (model(x).square().mean() + method.penalty()).backward()
        opt.step()
        method.step()
    # training mode, with grad: the output is that of the model with the effective weights
    model.train()
    expected = _with_effective_weights(model, method, make)(x)
    assert torch.allclose(model(x), expected, atol=1e-6)
    # eval without grad (torch's fused fast path conditions) as well
    model.eval()
    with torch.no_grad():
        before = model(x)
        assert torch.allclose(before, _with_effective_weights(model, method, make)(x), atol=1e-6)
    assert torch.backends.mha.get_fastpath_enabled(), "the fast path flag is restored after the forward"
    mask = method.finalize()
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-6), "finalize() does not change the eval output"
    assert any(not bool(mask[n].all()) for n in mask if "proj" in n), "attention weights were pruned"


def test_report_counts_mha_weights():
    model = encoder_layer()
    pk.prune(model, 0.5, allocation="uniform")
    rows = {r.name: r for r in accounting.report(model, flops=False).layers}
    assert rows["0.self_attn.in_proj_weight"].params == 3 * D * D
    assert rows["0.self_attn.in_proj_weight"].kept == 3 * D * D // 2
    assert rows["0.self_attn.out_proj.weight"].kept == D * D // 2


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


def test_gpt2_conv1d_is_prunable_with_its_logical_shape():
    model = _gpt2()
    from transformers.pytorch_utils import Conv1D

    assert Conv1D in default_types()
    targets = {t.name: t for t in prunable_targets(model)}
    c_fc = targets["transformer.h.0.mlp.c_fc.weight"]
    assert tuple(c_fc.param.shape) == (32, 128) and c_fc.shape == (128, 32), "(in, out) stored, (out, in) logical"
    mask = pk.prune(model, 0.7, allocation="erk")
    total = sum(t.param.numel() for t in targets.values())
    assert mask.kept() == round(0.3 * total)
    assert int(torch.count_nonzero(model.transformer.h[0].mlp.c_fc.weight)) == int(mask["transformer.h.0.mlp.c_fc.weight"].sum())


def test_erk_sees_the_logical_shape_of_conv1d(monkeypatch):
    """ERK's density depends on the shape it is given: it must be (out, in), not (in, out)."""
    from prunekit.core import allocation

    model = _gpt2()
    seen = {}
    real = allocation.erk_densities

    def spy(shapes, density):
        seen["shapes"] = list(shapes)
        return real(shapes, density)

    monkeypatch.setattr(allocation, "erk_densities", spy)
    mask = pk.prune(model, 0.5, allocation="erk")
    index = list(mask).index("transformer.h.0.attn.c_attn.weight")
    assert seen["shapes"][index] == (96, 32)


def test_embedding_is_opt_in():
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 4))
    assert list(prunable_parameters(model)) == ["1.weight"]
    mask = pk.prune(model, 0.5, types=(*default_types(), nn.Embedding))
    assert list(mask) == ["0.weight", "1.weight"]
    assert mask.kept() == round(0.5 * (50 * 8 + 8 * 4))


def test_sparsity_loss_flops_weights_include_attention_projections():
    model = encoder_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = pk.methods.get("sparsity_loss")(budget_flops=0.5, min_weights=1, input_shape=(5, D)).attach(model, opt)
    shares = dict(zip(method.names, method._c["flops"].tolist()))
    # one token row through in_proj (3D x D) and out_proj (D x D): 3 : 1 at any length
    assert shares["0.self_attn.in_proj_weight"] == pytest.approx(3 * shares["0.self_attn.out_proj.weight"])
    assert shares["0.linear1.weight"] > 0


def test_ltp_on_gpt2_masks_conv1d_and_the_tied_head_without_a_jump_at_finalize():
    model = _gpt2().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    method = pk.methods.get("ltp")(init_sparsity=0.5, lam=0.0).attach(model, opt)
    assert "transformer.h.0.mlp.c_fc.weight" in method.params and "transformer.wte.weight" in method.params
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    mask = method.finalize()
    with torch.no_grad():
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert int(torch.count_nonzero(model.lm_head.weight)) == int(mask["transformer.wte.weight"].sum())


def test_gmp_prunes_attention_projections_on_schedule():
    model = encoder_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gmp = pk.methods.get("gmp")(final_sparsity=0.8, start_step=0, end_step=4, prune_every=2,
                                      allocation="uniform").attach(model, opt)
    for _ in range(5):
        opt.zero_grad()
        model(_x()).square().mean().backward()
        opt.step()
        gmp.step()
    mask = gmp.finalize()
    total = 3 * D * D + D * D + 2 * D * FF
    assert mask.total() == total and mask.kept() == round(0.2 * total)
    in_proj = model[0].self_attn.in_proj_weight
    assert int(torch.count_nonzero(in_proj)) == int(mask["0.self_attn.in_proj_weight"].sum())
