"""pk.enforce(..., fused=True): the pruned tensors' update, mask included, in one pass
(core/fused_step.py, core/masked_step.cpp) must train exactly like the unfused enforcement
(torch's own optimizer on masked gradients), up to float rounding, and keep every pruned weight
and its optimizer state at exactly 0."""

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import fused_step

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sgd_dampening_maximize": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.5, dampening=0.3, maximize=True),
    "sgd_plain": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd_torch_fused": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, fused=True),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95)),
    "adamw_maximize": lambda p: torch.optim.AdamW(p, lr=1e-3, maximize=True),
    "adamw_torch_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, fused=True),
}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 33), nn.ReLU(), nn.Linear(33, 7))


def _train(make_optimizer, fused, steps=6, model=None):
    model = model or _model()
    mask = pk.prune(model, 0.8, score="magnitude", allocation="global")
    optimizer = make_optimizer(model.parameters())
    enforcer = pk.enforce(mask, optimizer, model, fused=fused)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 20, generator=g), torch.randint(0, 7, (16,), generator=g)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer, mask, enforcer


def test_the_kernel_builds_on_this_machine():
    assert fused_step.KERNEL.load() is not None, fused_step.KERNEL.reason()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_training_equals_the_unfused_enforcement(name):
    plain, plain_opt, mask, _ = _train(OPTIMIZERS[name], fused=False)
    fused, fused_opt, _, _ = _train(OPTIMIZERS[name], fused=True)
    for (n, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)
    for n, keep in mask.items():
        p = fused.get_parameter(n)
        assert not p[~keep].any(), f"{n}: a pruned weight moved"
        state = fused_opt.state[p]
        reference = plain_opt.state[plain.get_parameter(n)]
        assert set(k for k, v in state.items() if v is not None) == set(k for k, v in reference.items() if v is not None)
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == p.shape:
                assert not value[~keep].any(), f"{n}: {key} of a pruned weight is nonzero"
                torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-6)
            elif torch.is_tensor(value):  # Adam's step counter
                assert float(value) == float(reference[key])


def test_gradients_are_given_back_after_the_step():
    model, _, mask, _ = _train(OPTIMIZERS["sgd_momentum_wd"], fused=True, steps=1)
    assert all(p.grad is not None for p in model.parameters())


def test_the_state_loads_into_an_unfused_optimizer_and_training_continues_alike():
    model, optimizer, mask, enforcer = _train(OPTIMIZERS["adamw"], fused=True, steps=3)
    other = copy.deepcopy(model)
    other_opt = OPTIMIZERS["adamw"](other.parameters())
    other_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    pk.enforce(pk.Mask({n: m.clone() for n, m in mask.items()}, other), other_opt, other)
    x, y = torch.randn(4, 20), torch.randint(0, 7, (4,))
    for m, opt in ((model, optimizer), (other, other_opt)):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_closure_takes_the_unfused_path_and_stays_exact():
    model = _model()
    mask = pk.prune(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pk.enforce(mask, optimizer, model, fused=True)
    x, y = torch.randn(8, 20), torch.randint(0, 7, (8,))

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    for n, keep in mask.items():
        assert not model.get_parameter(n)[~keep].any()


def test_a_layer_without_gradient_this_step_is_skipped():
    model = nn.ModuleDict({"used": nn.Linear(10, 10), "unused": nn.Linear(10, 10)})
    mask = pk.prune(model, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    pk.enforce(mask, optimizer, model, fused=True)
    before = model["unused"].weight.detach().clone()
    model["used"](torch.randn(3, 10)).sum().backward()
    optimizer.step()
    assert torch.equal(model["unused"].weight, before)
    assert not model["used"].weight[~mask["used.weight"]].any()


def test_a_tensor_the_kernel_cannot_take_is_masked_by_the_unfused_path_in_the_same_step():
    """A float64 layer beside a float32 one: the kernel takes the float32 tensor, the optimizer
    updates the float64 one on its masked gradient; both train as unfused and stay exact."""
    def train(fused):
        torch.manual_seed(0)
        model = nn.ModuleDict({"f32": nn.Linear(12, 9), "f64": nn.Linear(12, 9).double()})
        mask = pk.prune(model, 0.7)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        pk.enforce(mask, optimizer, model, fused=fused)
        g = torch.Generator().manual_seed(2)
        for _ in range(4):
            x = torch.randn(5, 12, generator=g)
            optimizer.zero_grad()
            (model["f32"](x).square().mean() + model["f64"](x.double()).square().mean()).backward()
            optimizer.step()
        return model, optimizer, mask

    plain, _, _ = train(False)
    fused, optimizer, mask = train(True)
    for (n, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)
    for n, keep in mask.items():
        p = fused.get_parameter(n)
        assert p.grad is not None, f"{n}: its gradient was not given back"
        assert not p[~keep].any() and not optimizer.state[p]["momentum_buffer"][~keep].any(), n


def test_without_the_kernel_it_masks_the_gradients_instead(monkeypatch):
    monkeypatch.setattr(fused_step.KERNEL, "_state", {"reason": "no compiler here"})
    plain, _, _, _ = _train(OPTIMIZERS["sgd_momentum_wd"], fused=False)
    fallback, _, mask, _ = _train(OPTIMIZERS["sgd_momentum_wd"], fused=True)
    for a, b in zip(plain.parameters(), fallback.parameters()):
        assert torch.equal(a, b)  # the unfused path exactly


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.optim.RMSprop(p, lr=0.1), "fused=True supports torch.optim.SGD, Adam and AdamW, got RMSprop"),
    (lambda p: torch.optim.Adam(p, lr=0.1, amsgrad=True), "cannot reproduce this optimizer: amsgrad"),
])
def test_an_optimizer_it_cannot_reproduce_is_one_clear_error(make, message):
    model = _model()
    mask = pk.prune(model, 0.5)
    with pytest.raises(ValueError, match=message):
        pk.enforce(mask, make(model.parameters()), model, fused=True)
