"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot"): prune each layer and update its remaining weights so that its outputs
on calibration data change as little as possible.

For a layer W (out x in) with calibration inputs X (tokens x in), minimise ||W X^T - W' X^T||^2
over pruned W'. Its Hessian in every row is H = 2 X^T X (dampened: + 1% of mean diag H, section
3.2). Optimal Brain Surgeon: removing w_j costs w_j^2 / [H^-1]_jj and the rest of the row is
corrected by -(w_j / [H^-1]_jj) [H^-1]_j,: . SparseGPT processes the columns left to right with
the upper Cholesky factor of H^-1 (section 3.3), so each column's correction only touches the
columns to its right; corrections are applied lazily per block of 128 columns (section 3.4).
The mask is chosen block by block by the saliency w^2 / [H^-1]_jj^2 of the already-updated
weights (adaptive mask selection, section 3.3), or per group of M columns for N:M (section 3.5).

Layers are pruned in the order the forward pass calls them, and each layer's X^T X is gathered
after every earlier layer is pruned (for a transformer: q/k/v together, which read the same
tensor, then the attention output, then the MLP, block after block).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from . import calibration
from .calibration import LayerStats, as_rows, from_rows
from .patterns import NM
from .thresholds import largest_remainder, topk_mask

BLOCK_SIZE = 128
DAMPENING = 0.01   # fraction of the mean Hessian diagonal added to it


def dampened(hessian: torch.Tensor, dampening: float = DAMPENING) -> torch.Tensor:
    """H + lambda I with lambda = dampening * mean(diag H); dead inputs (H_jj = 0: a feature
    that is always zero) get H_jj = 1 so that H is invertible (their weights never matter)."""
    h = hessian.clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += dampening * diag.mean()
    return h


def inverse_cholesky(hessian: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U holds the OBS update of
    column j given that columns < j are already fixed (SparseGPT section 3.3)."""
    lower = torch.linalg.cholesky(hessian)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def sparsegpt_score(weight: torch.Tensor, generator: Optional[torch.Generator] = None,
                    stats: Optional[LayerStats] = None) -> torch.Tensor:
    """w_ij^2 [H]_jj / 2 = w_ij^2 ||X_j||^2 on the dense model: the OBS saliency with the
    Hessian's diagonal only. ``prune()`` uses it only to allocate counts across layers (the
    global allocation); the weights kept and their values come from :func:`reconstruct`,
    with the full Hessian of the already-pruned model's inputs."""
    if stats is None:
        raise ValueError("the sparsegpt score needs calibration data: pass calibration=<loader>")
    rows = as_rows(weight.detach(), stats.transposed).to(torch.float64)
    scores = rows.square() * stats.sq_norms.to(rows.device).unsqueeze(0)
    return from_rows(scores, weight.shape, stats.transposed).to(torch.float32)


sparsegpt_score.calibration = "norms"
sparsegpt_score.reconstructs = True      # prune() hands the selection to reconstruct()
sparsegpt_score.default_allocation = "uniform"
sparsegpt_score.default_pattern = "unstructured"


def _block_budgets(alive: torch.Tensor, kept: int, block: int) -> List[int]:
    """How many weights each block of columns prunes so that the layer keeps exactly ``kept``:
    every block first re-prunes its already-pruned weights, the rest is shared in proportion to
    the weights still alive (largest remainders)."""
    width = alive.shape[1]
    starts = range(0, width, block)
    dead = [int((~alive[:, s:s + block]).sum()) for s in starts]
    room = [int(alive[:, s:s + block].sum()) for s in starts]
    extra = alive.numel() - kept - sum(dead)
    share = largest_remainder([extra * r / max(1, sum(room)) for r in room], extra, room)
    return [d + e for d, e in zip(dead, share)]


@torch.no_grad()
def prune_layer(weight: torch.Tensor, hessian: torch.Tensor, kept: int, alive: torch.Tensor,
                nm: Optional[NM] = None, block: int = BLOCK_SIZE,
                dampening: float = DAMPENING) -> tuple:
    """Prune one layer in its (out, in) view. Returns ``(new_weight, keep)``: ``keep`` keeps
    exactly ``kept`` weights (``nm``: exactly N of every M along the input), ``new_weight``
    is zero off the mask and has the OBS-updated values on it. ``alive`` marks weights not
    pruned before (they are pruned first again)."""
    w = weight.to(torch.float64).clone()
    out, width = w.shape
    if nm is not None:
        block = max(nm.m, block - block % nm.m)   # a group of M never straddles two blocks
    hinv = inverse_cholesky(dampened(hessian.to(w), dampening))
    keep = torch.ones_like(w, dtype=torch.bool)
    budgets = None if nm is not None else _block_budgets(alive, kept, block)
    minus_inf = torch.tensor(float("-inf"), dtype=w.dtype)
    for b, i1 in enumerate(range(0, width, block)):
        i2 = min(i1 + block, width)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        d = hinv1.diagonal()
        keep1 = keep[:, i1:i2]
        if nm is None:
            saliency = torch.where(alive[:, i1:i2], w1.square() / d.square(), minus_inf)
            keep1.copy_(topk_mask(saliency, w1.numel() - budgets[b]))
        for i in range(i2 - i1):
            if nm is not None and i % nm.m == 0:
                cols = slice(i, i + nm.m)
                saliency = torch.where(alive[:, i1:i2][:, cols], w1[:, cols].square() / d[cols].square(), minus_inf)
                keep1[:, cols] = nm(saliency, out * nm.n)
            col = w1[:, i]
            q = torch.where(keep1[:, i], col, torch.zeros_like(col))
            e = (col - q) / d[i]
            # OBS: the error of column i is spread over the columns to its right in the block
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]   # the lazy update of the columns after the block
    w[~keep] = 0.0
    return w.to(weight.dtype), keep


def call_groups(model: nn.Module, names: List[str], loader: Iterable) -> List[List[str]]:
    """Group the layers ``names`` by the order of their first call on one batch: consecutive
    layers reading the very same input tensor (q, k, v) form one group, since pruning one
    cannot change the others' inputs. Layers are listed in call order."""
    return _probe(model, names, loader)[0]


def _probe(model: nn.Module, names: List[str], loader: Iterable):
    """``(groups, calls)``: the call groups and how often each layer runs in one forward."""
    order: List[str] = []
    groups: List[List[str]] = []
    calls: Dict[str, int] = {}
    last: Dict[str, object] = {"input": None}

    def on_call(name: str, raw: object) -> None:
        calls[name] = calls.get(name, 0) + 1
        if name in order:
            return
        order.append(name)
        if groups and raw is last["input"]:
            groups[-1].append(name)
        else:
            groups.append([name])
        last["input"] = raw   # the reference keeps it alive, so identity is never an address reuse

    first = next(iter(calibration.batches(loader)))
    calibration.collect(model, names, [first], on_call=on_call)
    return groups, calls


@torch.no_grad()
def reconstruct(model: nn.Module, params: Dict[str, nn.Parameter], counts: Dict[str, int],
                alive: Dict[str, torch.Tensor], loader: Iterable, nm: Optional[NM] = None,
                progress: Optional[Callable[[str], None]] = None) -> Dict[str, torch.Tensor]:
    """Prune ``params`` layer group by layer group, each with the X^T X of inputs coming from
    the already-pruned model; write the updated weights in place and return the keep masks."""
    loader = calibration.batches(loader)
    masks: Dict[str, torch.Tensor] = {}
    groups, calls = _probe(model, list(params), loader)
    for group in groups:
        # a pass can stop after the group's layers when each runs once per forward
        once = all(calls[name] == 1 for name in group)
        stats = calibration.collect(model, group, loader, hessian=True, stop_early=once)
        for name in group:
            p, s = params[name], stats[name]
            rows = as_rows(p.detach(), s.transposed)
            new, keep = prune_layer(rows, s.hessian(), counts[name], as_rows(alive[name], s.transposed), nm)
            p.copy_(from_rows(new, p.shape, s.transposed))
            masks[name] = from_rows(keep, p.shape, s.transposed)
            if progress is not None:
                progress(name)
    return {name: masks[name] for name in params}
