"""Data-driven channel selection with reconstruction of the next layer: ThiNet and LASSO.

Both prune the output channels of a layer ``name`` by looking at what they contribute to the
*next* conv ``next_name`` (its only consumer, e.g. conv1 -> conv2 inside a ResNet block or two
consecutive VGG convs), on activations sampled from a few images. Write the next layer's
output (without bias) at a sampled position/filter as a sum over its C input channels,
``y = sum_c z_c`` with ``z_c`` the contribution of input channel c (its slice of the filter
times its input patch). Then:

- ``thinet`` (Luo et al. 2017, ThiNet, section 3.2, Eq. 5): greedily build the set T of
  removed channels, each time adding the channel that keeps ``sum_m (sum_{c in T} z_mc)^2``
  smallest, until ``|T|`` channels are removed;
- ``lasso`` (He et al. 2017, "Channel Pruning for Accelerating Very Deep Neural Networks",
  section 3.1, Eq. 3): ``min_beta ||y - Z beta||^2 + lambda |beta|_1`` (solved by ISTA on the
  Gram matrix), with lambda raised by bisection until at most k coefficients are nonzero; the
  k largest |beta| are kept.

Then both refit the next layer's filters on the kept channels by least squares
(``min_W' ||Y - X_kept * W'||^2`` over sampled output positions, a small ridge for stability):
ThiNet's paper rescales each kept channel by one scalar, He et al. refit the whole filter; the
full refit is what both codes amount to at the end and is never worse than the rescaling.

``prune_with_reconstruction(model, name, next_name, images, ratio, method)`` returns the
shrunk model with the next layer refitted; ``reconstruction_error`` measures the relative
error ``||Y - Y'||^2 / ||Y||^2`` of the next layer's output on given images.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import params as valid
from ..registry import Registry
from .scores import l1_filter
from .shrink import shrink

# The data-driven selections, ``select(zz, zy, remove) -> sorted removed channels`` on the normal
# equations of the per-sample channel contributions ``z`` (samples, C): ``zz = z^T z`` (C, C) and
# ``zy = z^T y`` with ``y`` the reconstruction target (here the unpruned output ``z.sum(1)``;
# ``budget`` streams both over many images). ``l1_filter`` is accepted beside them by
# ``select_channels`` as the data-free reference, without a refit.
SELECTIONS: Registry = Registry("selection")


def capture(model: nn.Module, layer_name: str, x: torch.Tensor, output: bool = False) -> torch.Tensor:
    """The input (or, with ``output``, the output) of layer ``layer_name`` when ``model`` runs
    on ``x`` (eval mode, no grad; the model's mode is restored)."""
    layer = dict(model.named_modules())[layer_name]
    captured = {}
    if output:
        handle = layer.register_forward_hook(lambda m, args, out: captured.__setitem__("v", out.detach()))
    else:
        handle = layer.register_forward_pre_hook(lambda m, args: captured.__setitem__("v", args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return captured["v"]


def _check_pair(model: nn.Module, name: str, next_name: str) -> nn.Conv2d:
    modules = dict(model.named_modules())
    layer, nxt = modules.get(name), modules.get(next_name)
    if not isinstance(nxt, nn.Conv2d) or nxt.groups != 1:
        raise ValueError(f"{next_name!r} must be an ungrouped Conv2d (the layer whose output is reconstructed)")
    if layer is None or layer.weight.shape[0] != nxt.in_channels:
        raise ValueError(f"{name!r} must produce the {nxt.in_channels} input channels of {next_name!r}")
    return nxt


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded input: (N, C, K, L) with K = kh*kw kernel taps and L output positions."""
    u = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    n, _, L = u.shape
    return u.view(n, conv.in_channels, -1, L)


def contributions(conv: nn.Conv2d, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """Z (samples, C): channel c's contribution to randomly sampled outputs (image, position, filter)."""
    u = _patches(conv, x)
    n, c, k, L = u.shape
    ni = torch.randint(0, n, (samples,), generator=generator)
    li = torch.randint(0, L, (samples,), generator=generator)
    oi = torch.randint(0, conv.out_channels, (samples,), generator=generator)
    w = conv.weight.detach().reshape(conv.out_channels, c, k)
    return (u[ni, :, :, li] * w[oi]).sum(dim=2)


def ista(gram: torch.Tensor, b: torch.Tensor, lam: float, iters: int = 300) -> torch.Tensor:
    """argmin_beta 1/2 beta^T G beta - b^T beta + lam |beta|_1 by iterative soft thresholding
    (the LASSO of He et al. on its normal equations G = Z^T Z, b = Z^T y), from beta = 1."""
    step = 1.0 / float(torch.linalg.eigvalsh(gram).max().clamp_min(1e-12))
    beta = torch.ones_like(b)
    for _ in range(iters):
        beta = beta - step * (gram @ beta - b)
        beta = torch.sign(beta) * (beta.abs() - step * lam).clamp_min(0.0)
    return beta


@SELECTIONS.register("thinet")
def thinet_gram(zz: torch.Tensor, zy: torch.Tensor, remove: int) -> List[int]:
    """ThiNet's greedy selection (Luo et al. 2017, Eq. 5) from the Gram matrix of the channel
    contributions: add to the removed set T the channel keeping ``sum_m (sum_{c in T} z_mc)^2 =
    1_T^T (Z^T Z) 1_T`` smallest."""
    removed: List[int] = []
    cross = torch.zeros(zz.shape[0], dtype=zz.dtype)  # sum_{t in T} zz[t, c]
    candidates = list(range(zz.shape[0]))
    for _ in range(remove):
        cost = 2 * cross[candidates] + zz.diagonal()[candidates]
        best = candidates[int(torch.argmin(cost))]
        removed.append(best)
        candidates.remove(best)
        cross = cross + zz[best]
    return sorted(removed)


@SELECTIONS.register("lasso")
def lasso_gram(zz: torch.Tensor, zy: torch.Tensor, remove: int, iters: int = 30) -> List[int]:
    """He et al.'s LASSO selection (Eq. 3) on the normal equations: ``min ||y - Z beta||^2 +
    lambda |beta|_1`` by ISTA, lambda bisected until at most ``C - remove`` coefficients are
    nonzero; the largest |beta| are kept."""
    keep = zz.shape[0] - remove
    lo, hi = 0.0, float(zy.abs().max()) * 2 + 1e-12  # at hi every beta is 0
    beta = ista(zz, zy, lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        trial = ista(zz, zy, mid)
        nonzero = int((trial != 0).sum())
        if nonzero > keep:
            lo = mid
        else:
            hi, beta = mid, trial
            if nonzero == keep:
                break
    order = torch.sort(beta.abs(), descending=True, stable=True).indices
    return sorted(order[keep:].tolist())


def normal_equations(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z^T z, z^T y)`` of contributions ``z`` (samples, C), target ``y = z.sum(1)`` (nothing removed)."""
    return z.T @ z, z.T @ z.sum(dim=1)


def thinet_select(z: torch.Tensor, remove: int) -> List[int]:
    """ThiNet on the contributions themselves: the ``remove`` channels whose summed contribution stays smallest."""
    return thinet_gram(*normal_equations(z), remove)


def lasso_select(z: torch.Tensor, remove: int, iters: int = 30) -> List[int]:
    """He et al.'s LASSO on the contributions themselves: raise lambda until <= C - remove coefficients survive."""
    return lasso_gram(*normal_equations(z), remove, iters)


def least_squares_weight(conv: nn.Conv2d, x: torch.Tensor, kept: List[int], rows: int,
                         generator: torch.Generator, ridge: float = 1e-6) -> torch.Tensor:
    """New filters (O, k, kh, kw) on the kept input channels minimising ||Y - X_kept W'||^2."""
    u = _patches(conv, x)
    n, c, k, L = u.shape
    ni = torch.randint(0, n, (rows,), generator=generator)
    li = torch.randint(0, L, (rows,), generator=generator)
    full = u[ni, :, :, li].reshape(rows, c * k)
    target = full @ conv.weight.detach().to(full.dtype).reshape(conv.out_channels, c * k).T  # (rows, O), no bias
    p = full.view(rows, c, k)[:, kept].reshape(rows, len(kept) * k)
    a = p.T @ p
    a = a + ridge * a.diagonal().mean().clamp_min(1e-12) * torch.eye(a.shape[0], dtype=a.dtype)
    w = torch.linalg.solve(a, p.T @ target)
    return w.T.reshape(conv.out_channels, len(kept), *conv.kernel_size)


def select_channels(model: nn.Module, name: str, next_name: str, images: torch.Tensor, ratio: float,
                    method: str = "thinet", samples: int = 2000, seed: int = 0) -> Tuple[List[int], Optional[torch.Tensor]]:
    """``(removed channels of name, refitted weight of next_name or None for l1_filter)``."""
    valid.check(valid.fraction_removed, ratio, f"{name}: pruning ratio")  # the same check as kept_counts
    conv = _check_pair(model, name, next_name)
    c = conv.in_channels
    remove = c - max(1, int(c * (1.0 - ratio) + 1e-9))
    g = torch.Generator().manual_seed(seed)
    if method == "l1_filter":  # the data-free reference: no refit
        order = torch.sort(l1_filter(model, name), stable=True).indices
        return sorted(order[:remove].tolist()), None
    if method not in SELECTIONS:
        raise KeyError(f"unknown selection {method!r}; known: l1_filter, {', '.join(SELECTIONS.names())}")
    x = capture(model, next_name, images)
    removed = SELECTIONS.get(method)(*normal_equations(contributions(conv, x, samples, g).double()), remove)
    kept = [i for i in range(c) if i not in set(removed)]
    weight = least_squares_weight(conv, x.double(), kept, max(samples, 4 * len(kept) * conv.weight[0, 0].numel()), g)
    return removed, weight.to(conv.weight.dtype)


def prune_with_reconstruction(model: nn.Module, name: str, next_name: str, images: torch.Tensor, ratio: float,
                              method: str = "thinet", samples: int = 2000, seed: int = 0) -> nn.Module:
    """Shrink ``name`` by ``ratio`` with ThiNet / LASSO (or l1_filter) and refit ``next_name``."""
    removed, weight = select_channels(model, name, next_name, images, ratio, method, samples, seed)
    small = shrink(model, images[:1], {name: removed})
    if weight is not None:
        with torch.no_grad():
            dict(small.named_modules())[next_name].weight.copy_(weight)
    return small


def reconstruction_error(original: nn.Module, pruned: nn.Module, next_name: str, images: torch.Tensor) -> float:
    """``||Y - Y'||^2 / ||Y||^2`` of layer ``next_name``'s output (original vs pruned model)."""
    outs = []
    for model in (original, pruned):
        layer = dict(model.named_modules())[next_name]
        store = {}
        h = layer.register_forward_hook(lambda m, a, out: store.__setitem__("y", out.detach()))
        model.eval()
        with torch.no_grad():
            model(images)
        h.remove()
        outs.append(store["y"])
    return float(((outs[0] - outs[1]) ** 2).sum() / (outs[0] ** 2).sum())


def next_conv(model: nn.Module, name: str) -> str:
    """The Conv2d after layer ``name`` in module order that consumes its channels (conv1 ->
    conv2 inside a ResNet block, consecutive VGG convs); ValueError if there is none."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    modules = dict(model.named_modules())
    i = names.index(name)
    for cand in names[i + 1:]:
        m = modules[cand]
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels == modules[name].weight.shape[0]:
            return cand
        break
    raise ValueError(f"{name!r} is not followed by an ungrouped Conv2d consuming its channels: "
                     "ThiNet / LASSO reconstruct the next conv's output")


def reconstruct_layers(model: nn.Module, ratios: Dict[str, float], images: torch.Tensor, method: str = "thinet",
                       samples: int = 2000, seed: int = 0) -> Tuple[nn.Module, Dict[str, List[int]]]:
    """Prune several layers one after another (each on the activations of the model pruned so
    far, as ThiNet does layer by layer); returns the shrunk model and the plan (original
    indices: a layer's own output channels are only touched by its own step)."""
    plan: Dict[str, List[int]] = {}
    for name, ratio in ratios.items():
        removed, weight = select_channels(model, name, next_conv(model, name), images, ratio, method, samples, seed)
        nxt = next_conv(model, name)
        model = shrink(model, images[:1], {name: removed})
        if weight is not None:
            with torch.no_grad():
                dict(model.named_modules())[nxt].weight.copy_(weight)
        plan[name] = removed
    return model, plan
