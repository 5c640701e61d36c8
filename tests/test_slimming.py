"""Network slimming: the penalty adds s*sign(gamma) to BN gammas' gradients and nothing else;
one global |gamma| threshold; the shrunk model equals the masked one."""
import copy

import torch
from torch import nn

import prunekit as pk


def _grads(model, x, y, extra=None):
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    if extra is not None:
        loss = loss + extra()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_penalty_changes_only_bn_gammas_by_s_sign_gamma():
    torch.manual_seed(0)
    model = pk.models.get("vgg11", width=0.125)
    with torch.no_grad():  # some negative and some zero gammas
        model.features[1].weight[:3] = torch.tensor([-0.5, 0.0, 0.25])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    s = 1e-2
    method = pk.methods.get("slimming")(s=s, fraction=0.3).attach(model, opt)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    plain, with_penalty = _grads(model, x, y), _grads(model, x, y, method.penalty)
    bn_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for name, p in model.named_parameters():
        diff = with_penalty[name] - plain[name]
        if name in bn_weights:
            assert torch.allclose(diff, s * torch.sign(p.detach()), atol=1e-7), name
        else:
            assert torch.equal(diff, torch.zeros_like(diff)), f"{name} must not be penalised"
    assert with_penalty["features.1.weight"][1] == plain["features.1.weight"][1], "sign(0) = 0"


def test_finalize_removes_the_global_fraction_and_shrinks_exactly():
    torch.manual_seed(0)
    model = pk.models.get("vgg11", width=0.125).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method = pk.methods.get("slimming")(s=1e-4, fraction=0.4).attach(model, opt)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.0, 1.0)
                m.bias.uniform_(-1, 1)
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    plan = method.channels()
    assert sum(len(v) for v in plan.values()) == round(0.4 * gammas.numel())
    threshold = torch.sort(gammas).values[round(0.4 * gammas.numel()) - 1]
    original = copy.deepcopy(model)
    mask = method.finalize()
    assert 0 < mask.sparsity() < 1
    zeroed = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(float(m.weight.detach().abs().max()) > threshold for m in zeroed), "every layer keeps its largest gamma"
    small = method.shrunk()
    x = torch.randn(2, 3, 32, 32)
    widths = [m.num_features for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(widths) == gammas.numel() - round(0.4 * gammas.numel())
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
        assert not torch.allclose(original(x), model(x), atol=1e-4)
