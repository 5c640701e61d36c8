"""Registry-wide checks: every registered method runs on a tiny model in a plain loop.

A new method is tested by being registered: it is built from its Params examples unless
METHOD_KWARGS gives small-model arguments (e.g. a schedule in steps that fits 30 steps).
"""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import params as valid
from prunekit.core import Mask

from conftest import TinyNet

STEPS = 30
METHOD_KWARGS = {
    "gmp": dict(final_sparsity=0.8, start_step=0, end_step=20, prune_every=5),
    "slimming": dict(s=1e-3, fraction=0.4),
    "sss": dict(gamma=0.012, lr=2.0),
    "ste_fixed": dict(sparsity=0.7, bound="gaussian"),
    "sparsity_loss": dict(budget=0.3, min_weights=0),
    "ltp": dict(init_sparsity=0.5, tau_lr=1e-4),  # absolute tau (the paper's) needs a tau lr below the weights'
}


def _plain_loop(model, optimizer, method, steps=STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y) + method.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.step()


def _build(name):
    cls = pk.methods.get(name)
    if name in METHOD_KWARGS:
        return cls(**METHOD_KWARGS[name])
    return cls.from_params(valid.example(cls.Params))


@pytest.mark.parametrize("name", pk.methods.names())
def test_every_method_runs_in_a_plain_loop_and_finalizes_to_a_plain_model(name):
    torch.manual_seed(0)
    model = TinyNet()
    dense_keys = set(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = _build(name)
    method.attach(model, optimizer)
    _plain_loop(model, optimizer, method)
    state = method.state_dict()
    mask = method.finalize()
    assert isinstance(mask, Mask)
    assert set(model.state_dict()) == dense_keys, "finalize leaves the dense model's state_dict keys"
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules()), "no hooks left"
    params = dict(model.named_parameters())
    for pname, keep in mask.items():
        assert bool((params[pname][~keep] == 0).all()), f"{pname}: pruned weights are exact zeros"
    assert 0.0 < mask.sparsity() < 1.0
    # the method's state (step count included) round-trips
    fresh = _build(name)
    fresh.load_state_dict(state)
    assert fresh.state_dict().get("steps") == state.get("steps") == STEPS


def test_registries_reject_unknown_names_with_the_choices():
    for registry, kind in [(pk.methods.METHODS, "method"), (pk.core.SCORES, "score"), (pk.core.ALLOCATIONS, "allocation"),
                           (pk.models.MODELS, "model"), (pk.data.DATASETS, "dataset")]:
        with pytest.raises(KeyError) as info:
            registry.get("no-such-thing")
        message = str(info.value)
        assert kind in message and all(n in message for n in registry.names())
