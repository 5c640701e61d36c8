"""Importance of each attention head and each FFN intermediate channel (higher = keep).

Scores are ``{layer position: Tensor}`` (one value per head / channel), positions as in
:func:`transformer_layers`.

Data-free, from the weights:

- heads ``"l2"`` / ``"l1"``: the norm of everything the head owns -- its rows of the q, k and
  v projections (weights and biases) and its columns of the output projection.
- FFN ``"l1"`` / ``"l2"``: the norm of the channel's row (and bias) of the expanding Linear
  and its column of the contracting one.

From calibration batches (``calib``: an iterable of inputs, passed like ``example_input``):

- heads ``"output"``: the mean L2 norm, over tokens, of what the head writes into the
  residual stream, ``W_o[:, head] @ context_head`` (Michel et al. 2019 score heads by the
  effect of masking them; this is the cheap first-order stand-in: a head that writes
  little can go). Padding tokens (``attention_mask == 0`` in a tokenised batch) are left out.
- FFN ``"activation"``: mean |activation| of the channel times the L2 norm of its output
  column: the channel's average contribution to the residual stream.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from ..core.calling import attention_mask, call_model
from .transformer_layers import TransformerLayer, transformer_layers

__all__ = ["head_importance", "ffn_importance", "HEAD_SCORES", "FFN_SCORES"]

HEAD_SCORES = ("l2", "l1", "output")
FFN_SCORES = ("l1", "l2", "activation")


def _qkvo_weights(layer: TransformerLayer):
    """(W_q, W_k, W_v, W_o, [q, k, v biases]) of a layer, packed MHA or not."""
    if layer.packed:
        mha = layer.attention
        biases = list(mha.in_proj_bias.chunk(3)) if mha.in_proj_bias is not None else []
        return (*mha.in_proj_weight.chunk(3), mha.out_proj.weight, biases)
    q, k, v, o = layer.projections()
    return q.weight, k.weight, v.weight, o.weight, [p.bias for p in (q, k, v) if p.bias is not None]


def _norm(t: torch.Tensor, p: int) -> torch.Tensor:
    """Per-row p-norm over all but the first dimension, raised to p (so rows add up)."""
    return t.abs().pow(p).reshape(t.shape[0], -1).sum(1)


@torch.no_grad()
def _head_weight_scores(layer: TransformerLayer, p: int) -> torch.Tensor:
    wq, wk, wv, wo, biases = _qkvo_weights(layer)
    h, d = layer.num_heads, layer.head_dim
    total = sum(_norm(w.detach().reshape(h, d, -1), p) for w in (wq, wk, wv))
    total = total + _norm(wo.detach().t().reshape(h, d, -1), p)
    total = total + sum(_norm(b.detach().reshape(h, d), p) for b in biases)
    return total.pow(1.0 / p)


@torch.no_grad()
def _ffn_weight_scores(layer: TransformerLayer, p: int) -> torch.Tensor:
    up, down = layer.ffn()
    total = _norm(up.weight.detach(), p) + _norm(down.weight.detach().t(), p)
    if up.bias is not None:
        total = total + up.bias.detach().abs().pow(p)
    return total.pow(1.0 / p)


@torch.no_grad()
def _calibrate(model: nn.Module, calib: Iterable, per_layer) -> Dict[int, torch.Tensor]:
    """Run ``calib`` through a copy whose MHAs are split (so each output projection is a
    module we can hook); ``per_layer(layer, input, sums)`` accumulates into ``sums``."""
    work = copy.deepcopy(model).eval()
    layers = transformer_layers(work)
    for layer in layers:
        layer.split()
    sums: Dict[int, torch.Tensor] = {}
    counts: Dict[int, int] = {}
    hooks = []
    current = {"mask": None}  # the batch's attention mask: padding tokens are not counted
    for pos, layer in enumerate(layers):
        def hook(module, args, pos=pos, layer=layer):
            x, mask = args[0].detach(), current["mask"]
            if mask is not None and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.bool()]
            x = x.reshape(-1, x.shape[-1])  # (tokens, inner)
            sums[pos] = sums.get(pos, 0) + per_layer(layer, x)
            counts[pos] = counts.get(pos, 0) + x.shape[0]
        hooks.append(per_layer.module(layer).register_forward_pre_hook(hook))
    try:
        n_batches = 0
        for batch in calib:
            current["mask"] = attention_mask(batch)
            call_model(work, batch)
            n_batches += 1
        if not n_batches:
            raise ValueError("calibration scores need at least one batch in calib")
    finally:
        for h in hooks:
            h.remove()
    return {pos: sums[pos] / counts[pos] for pos in sums}


class _HeadOutput:
    """Sum over tokens of ||W_o[:, head] @ context_head||_2, hooked on the output projection."""

    @staticmethod
    def module(layer):
        return layer.projections()[3]

    def __call__(self, layer, ctx):
        h, d = layer.num_heads, layer.head_dim
        wo = layer.projections()[3].weight.reshape(-1, h, d)        # (embed, heads, d)
        written = torch.einsum("thd,ehd->the", ctx.reshape(-1, h, d), wo)
        return written.norm(dim=-1).sum(0)


class _ChannelActivation:
    """Sum over tokens of |a_c| * ||W_down[:, c]||_2, hooked on the contracting Linear."""

    @staticmethod
    def module(layer):
        return layer.ffn()[1]

    def __call__(self, layer, act):
        return act.abs().sum(0) * layer.ffn()[1].weight.norm(dim=0)


def _check(method: str, allowed) -> None:
    if method not in allowed:
        raise ValueError(f"unknown score {method!r}; choose one of {list(allowed)}")


def head_importance(model: nn.Module, method: str = "l2", calib: Optional[Iterable] = None) -> Dict[int, torch.Tensor]:
    """{layer position: Tensor[num_heads]}; ``method`` in ``HEAD_SCORES`` ("output" needs ``calib``)."""
    _check(method, HEAD_SCORES)
    if method == "output":
        if calib is None:
            raise ValueError("head score 'output' needs calibration batches: calib=[input, ...]")
        return _calibrate(model, calib, _HeadOutput())
    p = 2 if method == "l2" else 1
    return {pos: _head_weight_scores(layer, p) for pos, layer in enumerate(transformer_layers(model))}


def ffn_importance(model: nn.Module, method: str = "l1", calib: Optional[Iterable] = None) -> Dict[int, torch.Tensor]:
    """{layer position: Tensor[intermediate]}; ``method`` in ``FFN_SCORES`` ("activation" needs ``calib``)."""
    _check(method, FFN_SCORES)
    if method == "activation":
        if calib is None:
            raise ValueError("FFN score 'activation' needs calibration batches: calib=[input, ...]")
        return _calibrate(model, calib, _ChannelActivation())
    p = 2 if method == "l2" else 1
    return {pos: _ffn_weight_scores(layer, p) for pos, layer in enumerate(transformer_layers(model))}
