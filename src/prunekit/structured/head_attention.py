"""``HeadAttention``: self-attention with explicit q/k/v/out Linears, whose head count can
shrink while the model width (``embed_dim``) stays.

Why it exists: ``nn.MultiheadAttention`` ties its inner width to its outer one (q, k and v
project ``embed_dim -> embed_dim``, ``head_dim = embed_dim // num_heads``), so it cannot
lose a head without the whole residual stream losing channels. torch-pruning's MHA pruner
does exactly that: it removes *embedding* channels (rows and columns of ``in_proj_weight``,
``out_proj`` both ways) and keeps ``num_heads``, shrinking ``head_dim`` -- a different cut.
Head removal needs ``inner = num_heads * head_dim`` to differ from ``embed_dim``, so a
``torchvision`` ``VisionTransformer`` block's MHA is first replaced by this module
(``from_mha``: same weights, same outputs), whose four Linears torch-pruning's dependency
graph prunes like BERT's query/key/value/output.

It accepts the call ``torchvision`` makes (``attn(x, x, x, need_weights=False)``) and the
common keyword arguments of ``nn.MultiheadAttention`` for self-attention.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadAttention"]


class HeadAttention(nn.Module):
    """Multi-head self-attention: ``out_proj(concat_h softmax(q_h k_h^T / sqrt(d)) v_h)``."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0,
                 batch_first: bool = True, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_mha(cls, mha: nn.MultiheadAttention) -> "HeadAttention":
        """The same attention as ``mha`` (packed ``in_proj_weight`` split into q, k, v)."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only plain self-attention MHA (no kdim/vdim, bias_k/bias_v, add_zero_attn) "
                             "can be converted to HeadAttention")
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.dropout, mha.batch_first, bias)
        new.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        for proj, w in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_weight.chunk(3)):
            proj.weight.copy_(w)
        if bias:
            for proj, b in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.chunk(3)):
                proj.bias.copy_(b)
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.out_proj.bias is not None:
            new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def _heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return proj(x).view(b, length, -1, self.head_dim).transpose(1, 2)  # (B, H, L, d)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        key = query if key is None else key
        value = query if value is None else value
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._heads(self.q_proj, query), self._heads(self.k_proj, key), self._heads(self.v_proj, value)
        mask = _merge_masks(attn_mask, key_padding_mask, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the explicit path: the weights are wanted
            scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5
            if is_causal:
                scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(-1), p)
            ctx = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        b, _, length, _ = ctx.shape
        out = self.out_proj(ctx.transpose(1, 2).reshape(b, length, -1))
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _merge_masks(attn_mask, key_padding_mask, dtype) -> Optional[torch.Tensor]:
    """MHA's two masks as one additive float mask broadcastable to (B, H, L, S)."""
    def additive(m):
        return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

    mask = None
    if attn_mask is not None:
        if attn_mask.dim() != 2:
            raise ValueError(f"HeadAttention takes a 2-D attn_mask (L, S), got shape {tuple(attn_mask.shape)}")
        mask = additive(attn_mask)
    if key_padding_mask is not None:
        pad = additive(key_padding_mask)[:, None, None, :]  # (B, 1, 1, S)
        mask = pad if mask is None else mask + pad
    return mask
