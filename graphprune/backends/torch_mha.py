"""torch.nn.MultiheadAttention with pruned heads.

torch's own forward computes ``head_dim = query width // num_heads`` and asserts that the query is
``embed_dim`` wide: the q/k/v projections are tied to the input's width, so no cut of heads or head
channels runs. A module whose projections a plan narrows becomes :class:`SlimMultiheadAttention`
(its class reassigned: parameters, buffers and hooks stay), whose forward reads ``num_heads`` and
``head_dim`` as attributes (the rewrite sets them, as for any attention module) and computes what
torch's computes. Its ``_qkv_same_embed_dim`` is False, which keeps nn.TransformerEncoderLayer off its
fused fast path (that kernel assumes the tied widths). A pickled pruned model names this class.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import DependencyGraph


class SlimMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose q/k/v are ``num_heads * head_dim`` wide, which may differ from the input's."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")  # as torch's forward
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query[None], key[None], value[None]
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, width = query.shape[0], query.shape[1], self.num_heads * self.head_dim
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.split(width)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.split(width) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        # torch: the hint replaces the mask where no padding mask or weights need it (SDPA's own causal mask)
        causal = is_causal and key_padding_mask is None and not need_weights
        mask = None if causal else _float_mask(attn_mask, q.dtype)
        pad = _float_mask(key_padding_mask, q.dtype)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.reshape(1, 1, -1).expand(n, 1, -1)], 1)
            v = torch.cat([v, self.bias_v.reshape(1, 1, -1).expand(n, 1, -1)], 1)
            mask = None if mask is None else F.pad(mask, (0, 1))
            pad = None if pad is None else F.pad(pad, (0, 1))
        q, k, v = (t.reshape(n, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(n, self.num_heads, 1, self.head_dim)], 2) for t in (k, v))
            mask = None if mask is None else F.pad(mask, (0, 1))
            pad = None if pad is None else F.pad(pad, (0, 1))
        if mask is not None and mask.dim() == 3:  # (n * heads, L, S)
            mask = mask.reshape(n, self.num_heads, mask.shape[-2], mask.shape[-1])
        if pad is not None:
            pad = pad.reshape(n, 1, 1, pad.shape[-1])
            mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        if need_weights:
            weights = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
            weights = (weights if mask is None else weights + mask).softmax(-1)
            out = F.dropout(weights, p) @ v if p > 0 else weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, width))
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        if unbatched:
            return out[0], None if weights is None else weights[0]
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _float_mask(mask, dtype):
    """torch's masks: True (or a nonzero byte) means "may not attend"; a float mask is added."""
    if mask is None or mask.is_floating_point():
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask.bool(), float("-inf"))


def slim_attention(model: nn.Module, dg: DependencyGraph, masks: dict) -> list[str]:
    """Reassign to :class:`SlimMultiheadAttention` every torch MultiheadAttention whose weights ``masks`` (keep
    masks by (IR value, dim)) narrow: its heads, or its input's width, which torch's forward checks against
    ``embed_dim`` and divides into heads. Returns their paths."""
    narrowed = {dg.ir.values[v].source for (v, _) in masks if dg.ir.values[v].kind == "param"}
    out = []
    for path, m in model.named_modules():
        if type(m) is not nn.MultiheadAttention:
            continue
        if any((f"{path}.{n}" if path else n) in narrowed for n, _ in m.named_parameters()):
            m.__class__ = SlimMultiheadAttention
            m._qkv_same_embed_dim = False  # off nn.TransformerEncoderLayer's fused path, which ties the widths
            out.append(path)
    return out
