"""Exactness of mask enforcement (``pk.enforce``): one gradient mask per optimizer step keeps
pruned weights and their momentum / Adam moments at exactly zero, survivors train exactly as
under torch.nn.utils.prune's reparametrisation, and a skipped GradScaler step, a closure, an
unused layer and a state_dict round trip mid-training change none of that."""
import copy
import io

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk
from prunekit.core import Mask

from conftest import TinyNet

OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
}


def data(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(steps)]


def train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def assert_exact(model, opt, mask):
    for name, keep in mask.items():
        p = model.get_parameter(name)
        assert torch.all(p.detach()[~keep] == 0), f"a pruned weight of {name} is not 0"
        for key, buf in opt.state.get(p, {}).items():
            if torch.is_tensor(buf) and buf.shape == p.shape:
                assert torch.all(buf[~keep] == 0), f"{key} of a pruned weight of {name} is not 0"


def pruned_net(sparsity=0.8):
    torch.manual_seed(0)
    model = TinyNet()
    return model, pk.prune(model, sparsity)


@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_survivors_train_exactly_as_under_torch_prune(make_opt):
    """torch.nn.utils.prune computes weight = weight_orig * mask in every forward, so its
    effective weights are an independent reference: same init, same batches, same optimizer
    give bit-identical weights, and ours keep exact zeros in the optimizer state as well."""
    ours, mask = pruned_net()
    ref = TinyNet()
    ref.load_state_dict(ours.state_dict())
    for name, keep in mask.items():
        owner, _, attr = name.rpartition(".")
        torch_prune.custom_from_mask(ref.get_submodule(owner), attr, keep)
    opt = make_opt(ours.parameters())
    pk.enforce(mask, opt)
    opt_ref = make_opt(ref.parameters())
    batches = data(15)
    train(ours, opt, batches)
    train(ref, opt_ref, batches)
    for name in mask:
        owner, _, attr = name.rpartition(".")
        module = ref.get_submodule(owner)  # (module.weight is as of the last forward)
        effective = getattr(module, attr + "_orig") * getattr(module, attr + "_mask")
        assert torch.equal(ours.get_parameter(name).detach(), effective.detach()), name
    assert_exact(ours, opt, mask)
    assert any(bool((ours.get_parameter(n)[mask[n]] != 0).any()) for n in mask)


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adamw"])
def test_a_step_gradscaler_skips_changes_nothing(name):
    """CPU GradScaler: an infinite loss gives inf / NaN gradients everywhere, pruned entries
    included; the step is skipped (no hook, no update), then training goes on exactly."""
    model, mask = pruned_net()
    opt = OPTIMIZERS[name](model.parameters())
    pk.enforce(mask, opt)
    scaler = torch.amp.GradScaler("cpu")
    skipped = 0
    for i, (x, y) in enumerate(data(8)):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        if i in (0, 3):
            loss = loss * float("inf")
        weights = [p.detach().clone() for p in model.parameters()]
        state = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}
        scale = scaler.get_scale()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < scale:  # skipped
            skipped += 1
            assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
            now = {id(p): {k: v for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}
            assert now.keys() == state.keys()
            assert all(torch.equal(now[p][k], v) for p, entry in state.items() for k, v in entry.items())
        assert_exact(model, opt, mask)
    assert skipped == 2


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adamw"])
@pytest.mark.parametrize("order", ["enforce-then-load", "load-then-enforce"])
def test_state_dict_round_trip_mid_training_resumes_bit_identically(name, order):
    """Stop after 6 steps, save model, optimizer and mask, rebuild everything fresh, resume:
    the next 6 steps give the same weights as one uninterrupted run, in either order of
    loading the optimizer state and enforcing the mask."""
    batches = data(12)
    model, mask = pruned_net()
    opt = OPTIMIZERS[name](model.parameters())
    pk.enforce(mask, opt)
    train(model, opt, batches[:6])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "mask": mask.state_dict()}, buf)
    train(model, opt, batches[6:])

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = TinyNet()
    fresh.load_state_dict(saved["model"])
    fresh_mask = Mask(saved["mask"], fresh)
    fresh_opt = OPTIMIZERS[name](fresh.parameters())
    if order == "enforce-then-load":
        pk.enforce(fresh_mask, fresh_opt)
        fresh_opt.load_state_dict(saved["opt"])
    else:
        fresh_opt.load_state_dict(saved["opt"])
        pk.enforce(fresh_mask, fresh_opt)
    train(fresh, fresh_opt, batches[6:])
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert_exact(fresh, fresh_opt, fresh_mask)


def test_dense_state_loaded_after_enforce_is_zeroed_at_once():
    """A state_dict whose moments are nonzero at pruned weights (a dense run's) is zeroed by
    the load itself, before any step; after remove() a load is left alone."""
    model, mask = pruned_net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    dense = TinyNet()
    dense_opt = torch.optim.AdamW(dense.parameters(), lr=0.01)
    train(dense, dense_opt, data(2))
    # (load_state_dict keeps the given tensors, and enforcement zeroes in place: give copies)
    handle = pk.enforce(mask, opt)
    opt.load_state_dict(copy.deepcopy(dense_opt.state_dict()))
    assert_exact(model, opt, mask)
    handle.remove()
    opt.load_state_dict(copy.deepcopy(dense_opt.state_dict()))
    assert not bool((opt.state[model.fc1.weight]["exp_avg"][~mask["fc1.weight"]] == 0).all())


def test_closure_steps_are_masked_inside_the_step():
    """step(closure) computes the gradients inside the step, after the pre-hook ran: the
    closure is wrapped, so momentum stays exact and the result equals the plain loop's."""
    batches = data(6)
    runs = []
    for how in ("positional", "keyword", "none"):
        model, mask = pruned_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
        pk.enforce(mask, opt)
        for x, y in batches:
            def closure():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss
            if how == "positional":
                opt.step(closure)
            elif how == "keyword":
                opt.step(closure=closure)
            else:
                closure()
                opt.step()
        assert_exact(model, opt, mask)
        runs.append(model.state_dict())
    assert all(torch.equal(run[k], runs[-1][k]) for run in runs[:-1] for k in run)


def test_a_masked_layer_without_gradient_in_a_step_is_skipped():
    """A pruned tensor that got no gradient this step (an unused branch) is left out of the
    gradient mask; the others are still masked."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x, use_b=False):
            return self.head(torch.relu((self.b if use_b else self.a)(x)))

    torch.manual_seed(0)
    model = Branchy()
    mask = pk.prune(model, 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pk.enforce(mask, opt)
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        x, y = torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x, use_b=i % 3 == 2), y).backward()
        assert (model.b.weight.grad is None) == (i % 3 != 2)
        opt.step()
        assert_exact(model, opt, mask)
