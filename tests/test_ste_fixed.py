"""ste_fixed: fixed per-layer sparsity, bound by binary search / Gaussian rule / top-k, STE backward."""
import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.methods._reparam import binary_search_bound, gaussian_bound
from prunekit.methods.ste_fixed import STEFixed, fixed_keep_mask

from conftest import TinyNet


def _attached(bound, sparsity=0.6):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = STEFixed(sparsity=sparsity, bound=bound).attach(model, opt)
    return model, opt, method


@pytest.mark.parametrize("bound", ["binary_search", "gaussian", "topk"])
def test_forward_equals_the_hard_pruned_layers(bound):
    model, _, method = _attached(bound)
    x = torch.randn(4, 3, 8, 8)
    hard = copy.deepcopy(model)
    method_masks = method.current_mask()
    with torch.no_grad():
        for name, p in hard.named_parameters():
            if name in method_masks:
                p.mul_(method_masks[name].float())
    for h in list(hard.modules()):
        h._forward_pre_hooks.clear()
        h._forward_hooks.clear()
    assert torch.equal(model(x), hard(x))
    # outside a forward, module.weight is the dense Parameter and state_dict keys are plain
    assert isinstance(model.fc1.weight, nn.Parameter)
    assert set(model.state_dict()) == set(TinyNet().state_dict())


def test_gradients_reach_pruned_weights_and_pruned_weights_can_return():
    model, opt, method = _attached("topk", sparsity=0.8)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    before = method.keep_mask("fc1.weight").clone()
    nn.functional.cross_entropy(model(x), y).backward()
    g = model.fc1.weight.grad
    assert bool((g[~before] != 0).any()), "straight-through: pruned weights receive gradients"
    # STE gradient equals the gradient w.r.t. the pruned weight itself
    pruned = copy.deepcopy(model)
    for m in pruned.modules():
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()
    with torch.no_grad():
        for n, p in pruned.named_parameters():
            if n in method.params:
                p.mul_(method.keep_mask(n).float())
    pruned.zero_grad()
    nn.functional.cross_entropy(pruned(x), y).backward()
    assert torch.allclose(g, pruned.fc1.weight.grad, atol=1e-6)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        method.step()
    after = method.keep_mask("fc1.weight")
    assert bool((after & ~before).any()), "some pruned weight came back"
    assert abs(1 - float(after.float().mean()) - 0.8) < 1e-3


@pytest.mark.parametrize("s", [0.5, 0.85, 0.95])
def test_gaussian_bound_on_gaussian_weights_is_within_half_a_point(s):
    w = torch.randn(400, 500, generator=torch.Generator().manual_seed(1)) * 0.05
    achieved = float((w.abs() < gaussian_bound(w, s)).float().mean())
    assert abs(achieved - s) < 0.005


@pytest.mark.parametrize("eps", [1e-2, 1e-3, 1e-4])
def test_binary_search_is_within_eps(eps):
    w = torch.rand(300, 200, generator=torch.Generator().manual_seed(2)) ** 3  # far from Gaussian
    for s in (0.3, 0.85, 0.97):
        achieved = float((w.abs() < binary_search_bound(w, s, eps)).float().mean())
        assert abs(achieved - s) < eps
        keep = fixed_keep_mask(w, s, "binary_search", eps)
        assert abs(1 - float(keep.float().mean()) - s) < eps


def test_topk_is_exact():
    w = torch.randn(7, 13)
    keep = fixed_keep_mask(w, 0.6, "topk")
    assert int(keep.sum()) == round(0.4 * 91)
    assert float(w.abs()[keep].min()) >= float(w.abs()[~keep].max())


def test_finalize_gives_a_plain_model_whose_mask_matches_and_output_is_unchanged():
    model, opt, method = _attached("binary_search", sparsity=0.7)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
    expected = {n: method.keep_mask(n).clone() for n in method.params}
    mask = method.finalize()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    for n, keep in expected.items():
        assert torch.equal(mask[n], keep)
        assert bool((dict(model.named_parameters())[n][~keep] == 0).all())
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_fit_reports_the_achieved_sparsity_each_epoch():
    torch.manual_seed(0)
    model = TinyNet()
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(4)]
    method = pk.methods.get("ste_fixed")(sparsity=0.5, bound="binary_search", min_weights=0)  # every layer
    hist = pk.training.fit(model, batches, batches, epochs=2, lr=0.05,
                           callbacks=[pk.methods.MethodCallback(method)], progress=False)
    assert len(hist) == 2
    for row in hist:
        assert row["requested_sparsity"] == 0.5 and abs(row["sparsity"] - 0.5) < 1e-3


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="bound"):
        STEFixed(0.5, bound="median")
    with pytest.raises(ValueError):
        STEFixed(1.5)
