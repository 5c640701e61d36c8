"""sparsity_loss: STE hard-shrink with trainable r, the adaptive sparsity loss and its budgets."""
import copy
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.methods._reparam import STEHardShrinkBound
from prunekit.methods.sparsity_loss import SparsityLoss

from conftest import TinyNet


class MLP(nn.Module):
    input_shape = (32,)

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _ste_hardshrink(x):
    hard = x * (x.abs() >= 1).to(x.dtype)
    return x + (hard - x).detach()


def test_task_gradient_wrt_r_matches_autograd_on_the_reference_formulation_and_the_formula():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    target = torch.randn(6, 5, generator=g, dtype=torch.float64)
    sigma = w.std()
    r1 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    w1 = w.clone().requires_grad_(True)
    out1 = STEHardShrinkBound.apply(w1, r1.clamp(0, 5) * sigma)
    ((out1 - target) ** 2 * torch.arange(30.0, dtype=torch.float64).reshape(6, 5)).sum().backward()
    r2 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    w2 = w.clone().requires_grad_(True)
    b2 = r2 * sigma
    out2 = b2 * _ste_hardshrink(w2 / b2)
    ((out2 - target) ** 2 * torch.arange(30.0, dtype=torch.float64).reshape(6, 5)).sum().backward()
    assert torch.equal(out1, w * (w.abs() >= 0.7 * sigma))
    assert torch.allclose(out1, out2)
    assert torch.allclose(r1.grad, r2.grad) and torch.allclose(w1.grad, w2.grad)
    # the paper's formula: dL/dr = sum((w~ - w)/r * dL/dw~)
    dL_dout = 2 * (out1.detach() - target) * torch.arange(30.0, dtype=torch.float64).reshape(6, 5)
    assert torch.allclose(r1.grad, ((out1.detach() - w) / 0.7 * dL_dout).sum())
    assert torch.allclose(w1.grad, dL_dout)  # straight-through


def test_method_forward_and_r_gradient_match_the_reference_on_a_tiny_layer():
    torch.manual_seed(0)
    model = MLP().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SparsityLoss(budget=0.5, min_weights=0, recenter=True).attach(model, opt)
    x = torch.randn(5, 32, dtype=torch.float64)
    model(x).square().sum().backward()
    r = torch.tensor(float(method._r("fc2.weight").detach()), dtype=torch.float64, requires_grad=True)
    # the reference: every layer re-centred and pruned by b * STE_hardshrink(w / b); only fc2's r is live
    def full(rv):
        def layer(name, lin, inp, live):
            wt = lin.weight.detach()
            wc_ = wt - wt.mean()
            bb = (rv if live else torch.tensor(float(method._r(name).detach()), dtype=torch.float64)) * wc_.std()
            return nn.functional.linear(inp, bb * _ste_hardshrink(wc_ / bb), lin.bias.detach())
        a = torch.relu(layer("fc1.weight", model.fc1, x, False))
        a = torch.relu(layer("fc2.weight", model.fc2, a, True))
        return layer("fc3.weight", model.fc3, a, False)
    full(r).square().sum().backward()
    assert torch.allclose(method._r("fc2.weight").grad, r.grad, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(model(x), full(torch.tensor(float(method._r("fc2.weight").detach()), dtype=torch.float64)))


@pytest.mark.parametrize("variant,weights", [("unconstrained", "avg"), ("budget", "wavg"), ("hinge", "flops")])
def test_sparsity_loss_gradient_matches_finite_differences(variant, weights):
    torch.manual_seed(0)
    model = MLP().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SparsityLoss(budget=0.3 if variant != "unconstrained" else None, budget_flops=0.5 if variant == "hinge" else None,
                          variant=variant, weights=weights, min_weights=0, lam=3.0).attach(model, opt)
    with torch.no_grad():
        for i, r in enumerate(method.r.values()):
            r.fill_(0.4 + 0.3 * i)
    method.penalty().backward()
    for r in method.r.values():
        analytic = float(r.grad)
        h = 1e-6
        with torch.no_grad():
            r += h
            up = float(method.penalty())
            r -= 2 * h
            down = float(method.penalty())
            r += h
        assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-9)
        assert analytic != 0.0


def test_predicted_density_is_one_minus_weighted_erf():
    model = MLP()
    method = SparsityLoss(budget=0.2, min_weights=0).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    sizes = torch.tensor([32 * 64, 64 * 48, 48 * 10], dtype=torch.float64)
    s = torch.tensor([math.erf(float(r.detach()) / math.sqrt(2)) for r in method.r.values()], dtype=torch.float64)
    assert float(method.predicted_density("wavg").detach()) == pytest.approx(float(1 - (sizes / sizes.sum() * s).sum()), rel=1e-5)
    assert float(method.predicted_density("avg").detach()) == pytest.approx(float(1 - s.mean()), rel=1e-5)
    # authors' init r0 = sqrt(2) erfinv(0.6 * 0.8)
    assert float(next(iter(method.r.values())).detach()) == pytest.approx(math.sqrt(2) * float(torch.erfinv(torch.tensor(0.48))), rel=1e-5)
    # r in its own param group: lr/100, no weight decay
    group = method.optimizer.param_groups[-1]
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 0.0


def _train(method, model, steps, lr=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    if method.model is None:
        method.attach(model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    opt = method.optimizer
    xs = torch.randn(64, 32, generator=g)
    ys = torch.randint(0, 10, (64,), generator=g)
    for i in range(steps):
        x, y = xs[(i * 16) % 64:(i * 16) % 64 + 16], ys[(i * 16) % 64:(i * 16) % 64 + 16]
        loss = nn.functional.cross_entropy(model(x), y) + method.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.step()
    return method


@pytest.mark.parametrize("variant", ["budget", "hinge"])
def test_parameter_budget_moves_the_achieved_density_to_the_budget(variant):
    torch.manual_seed(0)
    model = MLP()
    method = SparsityLoss(budget=0.25, variant=variant, min_weights=0, r_lr=0.01)
    _train(method, model, 0)
    start = 1 - method.metrics()["sparsity"]
    _train(method, model, 300)
    density = 1 - method.metrics()["sparsity"]
    predicted = float(method.predicted_density().detach())
    if variant == "budget":
        assert abs(predicted - 0.25) < 0.01
        assert abs(density - 0.25) < 0.06 < abs(start - 0.25)
    else:
        assert predicted <= 0.25 + 1e-3
        assert density < 0.25 + 0.06 < start


def test_flops_budget_moves_the_flops_density_to_the_budget():
    torch.manual_seed(0)
    model = MLP()
    method = _train(SparsityLoss(budget_flops=0.3, min_weights=0, r_lr=0.01), model, 300)
    assert abs(method.metrics()["flops_density"] - 0.3) < 0.06
    assert abs(float(method.predicted_density("flops").detach()) - 0.3) < 0.01


def test_hinge_stops_pushing_once_under_budget():
    model = MLP()
    method = SparsityLoss(budget=0.5, variant="hinge", min_weights=0).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        for r in method.r.values():
            r.fill_(1.5)  # predicted sparsity erf(1.5/sqrt2) = 0.87 > 0.5
    assert float(method.predicted_density().detach()) < 0.5
    p = method.penalty()
    assert float(p.detach()) == 0.0
    p.backward()
    assert all(r.grad is None or float(r.grad) == 0.0 for r in method.r.values())
    with torch.no_grad():
        for r in method.r.values():
            r.fill_(0.2)
    method.penalty().backward()
    assert all(float(r.grad) < 0 for r in method.r.values()), "over budget: pushes r up"


def test_finalize_plain_model_mask_matches_thresholds_and_output_unchanged():
    torch.manual_seed(0)
    model = TinyNet()
    keys = set(model.state_dict())
    method = _train_tiny(model)
    model.eval()
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        out = model(x)
        expected = {}
        for n in method.trained:
            w = method.params[n]
            expected[n] = (w - w.mean()).abs() >= method._r(n).clamp(0, 5) * (w - w.mean()).std()
    mask = method.finalize()
    assert set(model.state_dict()) == keys
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    for n, keep in expected.items():
        assert torch.equal(mask[n], keep)
        assert bool((dict(model.named_parameters())[n][~keep] == 0).all())
    with torch.no_grad():
        assert torch.equal(model(x), out)
    assert 0 < mask.sparsity() < 1


def _train_tiny(model):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = SparsityLoss(budget=0.4, min_weights=0).attach(model, opt)
    for _ in range(10):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y) + method.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.step()
    return method


def test_small_layers_are_skipped_by_default_and_state_round_trips():
    torch.manual_seed(0)
    model = TinyNet()  # only fc1 (4096 weights) has >= 1000 weights
    method = pk.methods.get("sparsity_loss")(budget=0.5).attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert method.trained == ["fc1.weight"]
    state = method.state_dict()
    fresh = SparsityLoss(budget=0.5)
    fresh.load_state_dict(state)
    fresh.attach(TinyNet(), torch.optim.SGD(TinyNet().parameters(), lr=0.1))
    assert fresh.state_dict()["r"] == pytest.approx(state["r"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="budget"):
        SparsityLoss(variant="hinge")
    with pytest.raises(ValueError):
        SparsityLoss(budget=1.5)
    with pytest.raises(ValueError, match="weights"):
        SparsityLoss(budget=0.5, weights="median")


def test_fit_resume_restores_r(tmp_path):
    batches = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)), torch.randint(0, 10, (8,))) for i in range(3)]

    def run():
        torch.manual_seed(0)
        model = TinyNet()
        method = SparsityLoss(budget=0.3, min_weights=0)
        hist = pk.training.fit(model, batches, None, epochs=2, lr=0.05, callbacks=[pk.methods.MethodCallback(method)],
                               checkpoint_dir=tmp_path, progress=False, seed=0)
        return method, hist

    first, hist = run()
    assert "sparsity" in hist[-1] and "predicted_density" in hist[-1]
    assert all(abs(v - first.r_init) > 1e-5 for v in first.state_dict()["r"].values())
    second, _ = run()  # a finished run: restores the model and the method's state, trains nothing
    assert second.state_dict()["r"] == pytest.approx(first.state_dict()["r"])
    assert second.steps == first.steps == 6


def test_a_budget_below_the_skipped_layers_share_warns_and_a_reachable_one_does_not():
    import warnings

    # min_weights=1000 trains only fc1 (4096 of 4704 weights); with c over all layers (c_layers=
    # "all", the behaviour before issue #15) the skipped 608 keep 12.9% density.
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"budget=0.1 is below what can be reached \(0\.129\)"):
        method = SparsityLoss(budget=0.1, c_layers="all").attach(model, opt)
    assert method.density_floor() == pytest.approx(608 / 4704, abs=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparsityLoss(budget=0.5, c_layers="all").attach(TinyNet(), torch.optim.SGD(TinyNet().parameters(), lr=0.1))
        SparsityLoss(budget=0.1).attach(TinyNet(), torch.optim.SGD(TinyNet().parameters(), lr=0.1))  # c over fc1 only


# ----------------------------------------------------------------- polarisation (seed 002, 3.4.4)


def _polar(s_l=0.2, s_u=0.8, lam_polar=1.0, **kw):
    model = MLP().double()
    method = SparsityLoss(budget=0.5, min_weights=0, polar_low=s_l, polar_high=s_u, lam_polar=lam_polar, **kw)
    return method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))


def _set_sparsities(method, sparsities):
    with torch.no_grad():
        for r, s in zip(method.r.values(), sparsities):
            r.fill_(math.sqrt(2) * float(torch.erfinv(torch.tensor(s, dtype=torch.float64))))


@pytest.mark.parametrize("s", [0.0, 0.05, 0.2, 0.8, 0.9, 0.999])
def test_polar_penalty_is_zero_outside_the_band(s):
    method = _polar()
    _set_sparsities(method, [s] * 3)
    assert float(method.polar_penalty().detach()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("s", [0.25, 0.5, 0.7])
def test_polar_penalty_is_positive_inside_the_band_and_matches_the_formula(s):
    method = _polar(lam_polar=3.0)
    _set_sparsities(method, [0.1, s, 0.95])   # only the middle layer is inside (0.2, 0.8)
    expected = 3.0 * min(s - 0.2, 0.8 - s) ** 2 / 3
    assert float(method.polar_penalty().detach()) == pytest.approx(expected, rel=1e-6)
    assert float(method.polar_penalty().detach()) > 0


@pytest.mark.parametrize("s,direction", [(0.3, -1), (0.45, -1), (0.55, 1), (0.7, 1)])
def test_polar_gradient_pushes_the_sparsity_towards_the_nearer_bound(s, direction):
    method = _polar()
    _set_sparsities(method, [s] * 3)
    method.polar_penalty().backward()
    for r in method.r.values():
        # gradient descent moves r (and s = erf(r / sqrt 2), increasing in r) by -grad
        assert float(r.grad) != 0.0 and math.copysign(1, -float(r.grad)) == direction
    # and a few plain descent steps on the penalty alone reach the nearer bound
    opt = torch.optim.SGD(list(method.r.values()), lr=1.0)
    for _ in range(500):
        opt.zero_grad()
        method.polar_penalty().backward()
        opt.step()
    nearer = 0.2 if direction < 0 else 0.8
    for got in method.predicted_sparsities().detach():
        assert float(got) == pytest.approx(nearer, abs=0.02)


def test_polar_penalty_is_added_to_the_budget_penalty():
    method = _polar(lam_polar=2.0)
    _set_sparsities(method, [0.3, 0.5, 0.9])
    base = SparsityLoss(budget=0.5, min_weights=0).attach(method.model, torch.optim.SGD(method.model.parameters(), lr=0.1))
    _set_sparsities(base, [0.3, 0.5, 0.9])
    assert float(method.penalty().detach()) == pytest.approx(float(base.penalty().detach()) + float(method.polar_penalty().detach()), rel=1e-9)
    assert float(method.polar_penalty().detach()) > 0


@pytest.mark.parametrize("variant", ["unconstrained", "budget", "hinge"])
def test_polar_defaults_leave_the_loss_and_training_unchanged(variant):
    budget = None if variant == "unconstrained" else 0.3
    runs = []
    for extra in ({}, {"polar_low": None, "polar_high": None, "lam_polar": 10.0}):
        torch.manual_seed(0)
        model = MLP()
        method = SparsityLoss(budget=budget, variant=variant, min_weights=0, r_lr=0.01, **extra)
        _train(method, model, 20)
        runs.append((float(method.penalty().detach()), {k: v.detach().clone() for k, v in model.state_dict().items()},
                     [float(r.detach()) for r in method.r.values()]))
    (p0, w0, r0), (p1, w1, r1) = runs
    assert p0 == p1 and r0 == r1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # off by default: the penalty term is exactly zero and penalty() is the variant's alone
    assert float(method.polar_penalty().detach()) == 0.0
    assert torch.equal(method.penalty(), method._budget_penalty())


def test_polar_params_default_off():
    p = SparsityLoss.Params()
    assert p.polar_low is None and p.polar_high is None
    assert SparsityLoss.from_params(p).polar_low is None


@pytest.mark.parametrize("kw,match", [
    ({"polar_low": 0.8, "polar_high": 0.2}, "polar_low must be < polar_high"),
    ({"polar_low": 0.5, "polar_high": 0.5}, "polar_low must be < polar_high"),
    ({"polar_low": -0.1, "polar_high": 0.5}, "polar_low: must be a sparsity in \\[0, 1\\]"),
    ({"polar_low": 0.1, "polar_high": 1.5}, "polar_high: must be a sparsity in \\[0, 1\\]"),
    ({"polar_low": 0.1}, "polar_low and polar_high go together"),
    ({"polar_high": 0.9}, "polar_low and polar_high go together"),
    ({"polar_low": 0.1, "polar_high": 0.9, "lam_polar": -1.0}, "lam_polar"),
])
def test_polar_bad_values_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        SparsityLoss(budget=0.5, **kw)
