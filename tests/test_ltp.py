"""ltp: soft pruning with learned thresholds, stop-gradient, L0 penalty, hard evaluation, trail."""
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.methods.ltp import LTP

from conftest import TinyNet


def _method(model, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return LTP(**kw).attach(model, opt)


def test_soft_forward_stop_gradient_and_tau_gradient_match_the_formulas():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    method = _method(lin, init_sparsity=0.5, relative=False)
    x = torch.randn(3, 6, dtype=torch.float64)
    target = torch.randn(3, 4, dtype=torch.float64)
    ((lin(x) - target) ** 2).sum().backward()
    w = lin.weight.detach()
    tau = method.tau["weight"].detach()
    T = 1e-3 * w.var()
    gate = torch.sigmoid((w ** 2 - tau) / T)
    v = w * gate
    out = x @ v.t() + lin.bias.detach()
    dL_dv = (2 * (out - target)).t() @ x
    assert torch.allclose(lin.weight.grad, dL_dv * gate), "dv/dw = the gate (stop-gradient through the sigmoid)"
    expected_tau = (dL_dv * w * gate * (1 - gate) * (-1 / T)).sum()
    assert torch.allclose(method.tau["weight"].grad, expected_tau)

    # finite differences in tau (smooth)
    def loss_at(t):
        g = torch.sigmoid((w ** 2 - t) / T)
        return float(((x @ (w * g).t() + lin.bias.detach() - target) ** 2).sum())
    h = 1e-9
    fd = (loss_at(tau + h) - loss_at(tau - h)) / (2 * h)
    assert float(expected_tau) == pytest.approx(fd, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("relative", [True, False])
def test_l0_penalty_gradient_matches_finite_differences_and_reaches_w(relative):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    method = _method(model, lam=2.0, init_sparsity=0.4, relative=relative)
    p = method.penalty()
    p.backward()
    assert model[0].weight.grad is not None and bool((model[0].weight.grad != 0).any()), "L0 reaches w"
    for key, t in method.tau.items():
        h = 1e-7 * max(1.0, abs(float(t.detach())))
        with torch.no_grad():
            t += h
            up = float(method.penalty())
            t -= 2 * h
            down = float(method.penalty())
            t += h
        assert float(t.grad) == pytest.approx((up - down) / (2 * h), rel=1e-4)
        assert float(t.grad) < 0, "raising tau lowers L0"
    # normalised by the number of prunable weights: at tau = 0 with huge T the gate is ~1 -> L0 ~ lam
    n = sum(p.numel() for p in method.params.values())
    soft = sum(torch.sigmoid((q ** 2 - method.threshold(k)) / method.temperature(k)).sum() for k, q in method.params.items())
    assert float(method.penalty().detach()) == pytest.approx(2.0 * float(soft.detach()) / n)


def test_relative_thresholds_are_invariant_to_weight_rescaling():
    torch.manual_seed(0)
    a = nn.Linear(20, 10)
    b = nn.Linear(20, 10)
    with torch.no_grad():
        b.weight.copy_(a.weight * 7.0)
    ma, mb = _method(a, init_sparsity=0.3), _method(b, init_sparsity=0.3)
    assert float(ma.penalty().detach()) == pytest.approx(float(mb.penalty().detach()), rel=1e-5)
    assert torch.equal(ma.keep_masks()["weight"], mb.keep_masks()["weight"])


def test_init_sparsity_is_exact_per_layer_and_tau_stays_nonnegative():
    torch.manual_seed(0)
    model = TinyNet()
    method = _method(model, init_sparsity=0.75)
    for n, keep in method.keep_masks().items():
        assert int((~keep).sum()) == round(0.75 * keep.numel())
    with torch.no_grad():
        for t in method.tau.values():
            t.fill_(-1.0)
    method.step()
    assert all(float(t.detach()) == 0.0 for t in method.tau.values())


def _train(model, method, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = method.optimizer
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y) + method.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.step()


def test_eval_forward_is_the_hard_mask_and_finalize_keeps_the_accuracy(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    keys = set(model.state_dict())
    method = _method(model, lam=1.0, init_sparsity=0.3, trail=(0.4, 0.5, 0.6), trail_dir=str(tmp_path))
    _train(model, method, 40)
    x = torch.randn(32, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        out = model(x)
    masks = method.keep_masks()
    expected = {n: p.detach() ** 2 >= method.threshold(n).detach() for n, p in method.params.items()}
    mask = method.finalize()
    assert set(model.state_dict()) == keys
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    for n in expected:
        assert torch.equal(mask[n], expected[n]) and torch.equal(masks[n], expected[n])
        assert bool((dict(model.named_parameters())[n][~expected[n]] == 0).all())
    with torch.no_grad():
        after = model(x)
    assert torch.equal(after, out)
    assert torch.equal(after.argmax(1), out.argmax(1))  # same accuracy on any labels


def test_trail_checkpoints_at_each_level_reached(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    method = _method(model, lam=5.0, trail=(0.3, 0.5, 0.7), trail_dir=str(tmp_path))
    _train(model, method, 80)
    levels = [row["level"] for row in method.trail]
    assert levels == sorted(levels) and 0.3 in levels and 0.5 in levels, method.hard_sparsity()
    for row in method.trail:
        assert row["sparsity"] >= row["level"]
        saved = torch.load(row["path"], weights_only=True)
        fresh = TinyNet()
        fresh.load_state_dict(saved["model"])  # plain keys
        for n, keep in saved["mask"].items():
            assert bool((dict(fresh.named_parameters())[n][~keep] == 0).all())
    steps = [row["step"] for row in method.trail]
    assert steps == sorted(steps)
    # resuming does not take the same points again
    state = method.state_dict()
    again = LTP(lam=5.0, trail=(0.3, 0.5, 0.7), trail_dir=str(tmp_path))
    again.load_state_dict(state)
    again.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert [r["level"] for r in again.trail] == levels
    assert again.state_dict()["tau"] == pytest.approx(state["tau"])


def test_runs_in_fit_and_reports_sparsity():
    torch.manual_seed(0)
    model = TinyNet()
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(4)]
    method = pk.methods.get("ltp")(lam=5.0, trail=())
    hist = pk.training.fit(model, batches, batches, epochs=2, lr=0.1, callbacks=[pk.methods.MethodCallback(method)],
                           progress=False)
    assert hist[-1]["sparsity"] > 0.0 and "train_penalty" in hist[-1]
    mask = method.finalize()
    assert mask.sparsity() == pytest.approx(hist[-1]["sparsity"])


def test_default_trains_tau_itself_as_the_paper_and_relative_stays_by_name():
    """Issue #15 point 3: Azarian et al. train tau_l itself (Eq. 4-6); relative=True scales it by var(w)."""
    from prunekit.methods.ltp import LTP as _LTP
    assert _LTP().relative is False and _LTP.Params().relative is False
    assert _LTP(relative=True).relative is True
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    with torch.no_grad():
        lin.weight.mul_(10.0)  # var(w) far from 1: the two forms differ
    a = _method(lin, init_sparsity=0.5)
    a.tau["weight"].data.fill_(0.5)
    assert a.threshold("weight").item() == pytest.approx(0.5)


def test_absolute_tau_default_lr_is_scaled_to_the_finest_layer():
    # Absolute tau lives on the scale of w^2: the weights' lr would prune everything at once.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pk.methods.build("ltp").attach(model, opt)
    finest = min(float(m.weight.detach().var()) for m in (model[0], model[2]))
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.1 * finest ** 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pk.methods.build("ltp", relative=True).attach(model, opt)
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.1)     # relative: the recipe's lr
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pk.methods.build("ltp", tau_lr=1e-3).attach(model, opt)
    assert opt.param_groups[-1]["lr"] == pytest.approx(1e-3)    # given: as given
