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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, keep_masks


class SlimMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose q/k/v are ``num_heads * head_dim`` wide, which may differ from the input's.
    ``head_scale`` is the original's 1/sqrt(head_dim): a cut of head channels does not rescale the scores."""

    settled_attributes = ("num_heads", "head_dim", "embed_dim", "kdim", "vdim")  # set here, not probed

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
        n, length, h = query.shape[0], query.shape[1], self.num_heads
        scale = getattr(self, "head_scale", 1.0 / math.sqrt(self.head_dim))
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.split(h * self.head_dim)
        else:  # separate projections: the values' head width may be cut apart from the queries'
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.split([wq.shape[0], wk.shape[0], wv.shape[0]]) \
            if self.in_proj_bias is not None else (None, None, None)
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
        q, k, v = (t.reshape(n, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        if self.add_zero_attn:
            k, v = (torch.cat([t, t.new_zeros(n, h, 1, t.shape[-1])], 2) for t in (k, v))
            mask = None if mask is None else F.pad(mask, (0, 1))
            pad = None if pad is None else F.pad(pad, (0, 1))
        if mask is not None and mask.dim() == 3:  # (n * heads, L, S)
            mask = mask.reshape(n, h, mask.shape[-2], mask.shape[-1])
        if pad is not None:
            pad = pad.reshape(n, 1, 1, pad.shape[-1])
            mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        if need_weights:
            weights = (q * scale) @ k.transpose(-2, -1)
            weights = (weights if mask is None else weights + mask).softmax(-1)
            if p > 0:
                weights = F.dropout(weights, p)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal,
                                                 scale=scale)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, -1))
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


def slim_attention(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> Callable[[], None]:
    """Reassign to :class:`SlimMultiheadAttention` every torch MultiheadAttention whose weights the plan narrows
    (its heads, or its input's width, which torch's forward checks against ``embed_dim`` and divides into heads),
    with its head count and width as the plan leaves them (read from the queries' rows, heads the outer factor:
    the proof cannot tell 8 heads of 4 from 4 of 8). Returns what undoes it."""
    pruned = plan.masks()
    narrowed = {dg.ir.values[v].source for (v, _) in keep_masks(dg, plan) if dg.ir.values[v].kind == "param"}
    params = {v.source: v.name for v in dg.ir.values.values() if v.kind == "param"}
    saved: list[tuple[nn.Module, type, dict]] = []
    for path, m in model.named_modules():
        full = (lambda n, path=path: f"{path}.{n}" if path else n)
        if type(m) not in (nn.MultiheadAttention, SlimMultiheadAttention) or not any(
                full(n) in narrowed for n, _ in m.named_parameters()):
            continue  # (a slim one pruned again: its counts change again, its scale stays the first original's)
        saved.append((m, type(m), dict(vars(m))))
        rows = params.get(full("in_proj_weight" if m.in_proj_weight is not None else "q_proj_weight"))
        heads, width = _heads_after(dg, rows, pruned, m.num_heads, m.head_dim)
        m.head_scale = getattr(m, "head_scale", 1.0 / math.sqrt(m.head_dim))
        m.__class__ = SlimMultiheadAttention
        m._qkv_same_embed_dim = False  # off nn.TransformerEncoderLayer's fused path, which ties the widths
        m.num_heads, m.head_dim = heads, width
    for enc in model.modules():  # its nested-tensor path hands the layers a tensor the slim forward cannot read
        if isinstance(enc, nn.TransformerEncoder) and any(isinstance(x, SlimMultiheadAttention) for x in enc.modules()):
            saved.append((enc, type(enc), dict(vars(enc))))
            enc.use_nested_tensor = False

    def undo() -> None:
        for m, cls, attrs in saved:
            m.__class__ = cls
            vars(m).clear()
            vars(m).update(attrs)
    return undo


def _heads_after(dg: DependencyGraph, rows: str | None, pruned: dict, heads: int, width: int) -> tuple[int, int]:
    """(heads, head width) the plan keeps of the queries' rows ``rows`` (an IR value), outer-major
    (.., heads, head channels); the original's where the rows are not split so."""
    def split(term):  # the first (heads, head channels) product: fused rows are (3, h, d), or q beside (2, h, d)
        if term[0] == "p" and len(term[1]) >= 2 and tuple(dg.solver.size(t) for t in term[1][-2:]) == (heads, width):
            return term[1][-2:]
        return next((found for t in term[1] if (found := split(t)) is not None), None) if term[0] != "a" else None

    found = split(dg.solver.slot_atoms((rows, 0))[0]) if rows is not None else None
    if found is None:
        return heads, width
    return int(dg.solver.keep_mask(found[0], pruned).sum()), int(dg.solver.keep_mask(found[1], pruned).sum())
