"""Mask validation, persistence and enforcement during training."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core import Mask

from conftest import TinyNet


def _train_steps(model, optimizer, steps=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 3, 8, 8, generator=g)
        y = torch.randint(0, 10, (16,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
    lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
], ids=["sgd-momentum", "sgd-nesterov", "adamw", "adam-amsgrad"])
def test_pruned_weights_stay_exactly_zero_through_training(tiny_net, make_opt):
    opt = make_opt(tiny_net.parameters())
    _train_steps(tiny_net, opt, steps=3)   # optimizer state exists before pruning
    mask = pk.prune(tiny_net, 0.8)
    pk.enforce(mask, opt)
    _train_steps(tiny_net, opt, steps=20)
    for name, p in tiny_net.named_parameters():
        if name in mask:
            assert bool((p[~mask[name]] == 0).all()), name
            for key, buf in opt.state[p].items():
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                    assert bool((buf[~mask[name]] == 0).all()), f"{name} {key}"
            # surviving weights do train
    assert mask.kept() == sum(int((tiny_net.get_parameter(n) != 0).sum()) for n in mask)


def test_enforcer_remove_stops_enforcement(tiny_net):
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1)
    mask = pk.prune(tiny_net, 0.8)
    handle = pk.enforce(mask, opt)
    handle.remove()
    _train_steps(tiny_net, opt, steps=2)
    assert int((tiny_net.fc1.weight != 0).sum()) > int(mask["fc1.weight"].sum())


def test_enforce_needs_the_parameters_in_the_optimizer(tiny_net):
    mask = pk.prune(tiny_net, 0.5)
    opt = torch.optim.SGD(tiny_net.fc2.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="does not update"):
        pk.enforce(mask, opt)


def test_pruned_state_dict_loads_into_a_fresh_dense_model_strict(tiny_net):
    pk.prune(tiny_net, 0.9)
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    pk.enforce(pk.core.Mask.from_model(tiny_net), opt)
    _train_steps(tiny_net, opt, steps=2)
    fresh = TinyNet()
    fresh.load_state_dict(tiny_net.state_dict(), strict=True)
    assert set(fresh.state_dict()) == set(TinyNet().state_dict())
    assert not any("orig" in k or "mask" in k for k in tiny_net.state_dict())


def test_same_seed_gives_identical_masks_and_losses():
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = TinyNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        mask = pk.prune(model, 0.7, score="random", seed=5)
        pk.enforce(mask, opt)
        runs.append((mask, _train_steps(model, opt, steps=10, seed=9)))
    (m1, l1), (m2, l2) = runs
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert l1 == l2


def test_mask_save_load_round_trip(tmp_path, tiny_net):
    mask = pk.prune(tiny_net, 0.6, allocation="erk")
    mask.save(tmp_path / "mask.pt")
    loaded = Mask.load(tmp_path / "mask.pt", TinyNet())
    assert set(loaded) == set(mask) and all(torch.equal(loaded[k], mask[k]) for k in mask)
    assert loaded.sparsity() == pytest.approx(0.6, abs=1e-3)


def test_corrupt_mask_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "mask.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read mask file"):
        Mask.load(path)
    assert path.read_bytes() == b"not a checkpoint", "a bad file is reported, never overwritten"


def test_mask_validation():
    with pytest.raises(ValueError, match="other than 0 and 1"):
        Mask({"w": torch.tensor([0.0, 0.5])})
    assert Mask({"w": torch.tensor([0, 1])})["w"].dtype == torch.bool
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="shape"):
        Mask({"weight": torch.ones(3, 3, dtype=torch.bool)}, model)
    with pytest.raises(ValueError, match="does not have"):
        Mask({"nope.weight": torch.ones(2, 2, dtype=torch.bool)}, model)
    with pytest.raises(ValueError, match="not bound"):
        Mask({"weight": torch.ones(2, 2, dtype=torch.bool)}).apply()


def test_state_loaded_after_enforce_is_zeroed_at_the_next_step(tiny_net):
    """fit() resumes by loading optimizer state after the mask is enforced: buffers that
    arrive with nonzero pruned entries must be zeroed, not carried along."""
    opt = torch.optim.SGD(tiny_net.parameters(), lr=0.1, momentum=0.9)
    _train_steps(tiny_net, opt, steps=2)
    dense_state = opt.state_dict()                     # momentum nonzero everywhere
    mask = pk.prune(tiny_net, 0.8)
    pk.enforce(mask, opt)
    opt.load_state_dict(dense_state)
    _train_steps(tiny_net, opt, steps=1)
    for name, p in tiny_net.named_parameters():
        if name in mask:
            assert bool((p[~mask[name]] == 0).all())
            assert bool((opt.state[p]["momentum_buffer"][~mask[name]] == 0).all()), name


def test_non_elementwise_optimizer_is_zeroed_after_every_step(tiny_net):
    class Mixing(torch.optim.SGD):
        """An optimizer outside the element-wise list: its update adds a shared term."""

        @torch.no_grad()
        def step(self, closure=None):
            super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(1e-3)

    opt = Mixing(tiny_net.parameters(), lr=0.1)
    mask = pk.prune(tiny_net, 0.8)
    pk.enforce(mask, opt)
    _train_steps(tiny_net, opt, steps=3)
    for name in mask:
        assert bool((tiny_net.get_parameter(name)[~mask[name]] == 0).all())
