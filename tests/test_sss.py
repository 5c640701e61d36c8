"""Sparse structure selection: the proximal step makes factors exactly 0; blocks whose factor
is 0 are removed and the smaller model computes what the finalized one does."""
import torch
from torch import nn

import prunekit as pk
from prunekit.methods.sss import RemovedBlock


def _setup(structure="auto", gamma=0.1, lr=0.5, factor_update="apg"):
    torch.manual_seed(0)
    model = pk.models.get("resnet20", width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = pk.methods.get("sss")(gamma=gamma, lr=lr, structure=structure, factor_update=factor_update).attach(model, opt)
    return model, opt, method


def test_proximal_step_soft_thresholds_the_factors():
    model, opt, method = _setup(gamma=0.1, lr=0.5, factor_update="proximal")  # threshold lr * gamma = 0.05
    assert len(method.factors) == 9 and method.kind == "blocks"
    with torch.no_grad():
        for f, v in zip(method.factors, [0.04, -0.03, 0.5, -0.5, 1.0, 0.05, 0.0, 2.0, 0.06]):
            f.fill_(v)
    opt.zero_grad()
    method.step()  # no gradient this step: only the proximal operator acts
    got = [round(float(f.detach()), 6) for f in method.factors]
    assert got == [0.0, 0.0, 0.45, -0.45, 0.95, 0.0, 0.0, 1.95, 0.01]
    assert method.zeroed() == ["layer1.0", "layer1.1", "layer2.2", "layer3.0"]


def test_factor_scales_the_residual_branch_and_gets_the_gradient():
    model, opt, method = _setup()
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        method.factors[0].fill_(0.0)
        out_zero = model(x)
        block = model.layer1[0]
        method.factors[0].fill_(1.0)
    loss = model(x).sum()
    loss.backward()
    assert method.factors[0].grad is not None and float(method.factors[0].grad.abs()) > 0
    # with factor 0, block layer1.0 is its shortcut: relu(x)
    with torch.no_grad():
        method.factors[0].fill_(0.0)
        h = torch.relu(model.bn1(model.conv1(x)))
        assert torch.allclose(block(h), torch.relu(h))
        assert torch.allclose(model(x), out_zero)


def test_blocks_with_zero_factor_are_removed_and_outputs_match():
    model, opt, method = _setup()
    with torch.no_grad():
        for i in (1, 4, 7):
            method.factors[i].fill_(0.0)
        method.factors[2].fill_(0.7)
    model.eval()
    mask = method.finalize()
    assert 0 < mask.sparsity() < 1
    small = method.shrunk().eval()
    removed = [n for n, m in small.named_modules() if isinstance(m, RemovedBlock)]
    assert removed == ["layer1.1", "layer2.1", "layer3.1"]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


def test_channel_structure_on_a_plain_model_shrinks_exactly():
    torch.manual_seed(0)
    model = pk.models.get("vgg11", width=0.125).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = pk.methods.get("sss")(gamma=0.1, lr=0.5).attach(model, opt)
    assert method.kind == "channels"
    with torch.no_grad():
        method.factors[0][:3] = 0.0
        method.factors[2][1] = 0.0
    method.finalize()
    small = method.shrunk().eval()
    widths = [m.num_features for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
    assert widths[0] == 5 and widths[2] == 31
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)


def test_apg_follows_the_papers_nag_form_and_its_solution_has_exact_zeros():
    """Huang & Wang 2018 Eq. 10-12: v_t = S(z_t) - lambda'_{t-1} + mu v_{t-1}; lambda'_t = S(z_t) + mu v_t."""
    model, opt, method = _setup(gamma=0.1, lr=0.5)  # APG is the default; threshold 0.05, mu 0.9
    assert method.optimizer_kind == "apg"
    with torch.no_grad():
        for f, v in zip(method.factors, [0.04, -0.03, 0.5, -0.5, 1.0, 0.05, 0.0, 2.0, 0.06]):
            f.fill_(v)
    method._prev = [f.detach().clone() for f in method.factors]  # lambda'_0 = those values, v_0 = 0
    opt.zero_grad()
    method.step()  # z_1 = lambda'_0 (no gradient): v_1 = S(z_1) - z_1, lambda'_1 = S(z_1) + 0.9 v_1
    s1 = [0.0, 0.0, 0.45, -0.45, 0.95, 0.0, 0.0, 1.95, 0.01]
    z = [0.04, -0.03, 0.5, -0.5, 1.0, 0.05, 0.0, 2.0, 0.06]
    got = [round(float(f.detach()), 6) for f in method.factors]
    assert got == [round(s + 0.9 * (s - zz), 6) for s, zz in zip(s1, z)]
    assert [round(float(t), 6) for t in method.solution()] == s1
    assert method.zeroed() == ["layer1.0", "layer1.1", "layer2.2", "layer3.0"]
    method.step()  # a second step extrapolates with momentum: it differs from plain proximal SGD
    prox_model, prox_opt, prox = _setup(gamma=0.1, lr=0.5, factor_update="proximal")
    with torch.no_grad():
        for f, v in zip(prox.factors, z):
            f.fill_(v)
    prox.step()
    prox.step()
    assert [float(t) for t in method.solution()] != [float(f.detach()) for f in prox.factors]
