"""SliceGPT, the rotation baseline of tools/bench_llm_crossdomain.py, written from its paper as plain torch
on a Hugging Face Llama (SmolLM2-135M); benchmark code, not library code.

Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows and Columns" (ICLR 2024):
an RMSNorm without its scale commutes with an orthogonal change of basis of the residual stream, so
each norm's scale is folded into the linear layers that read it and every block's input is rotated into
the principal directions of that block's normalised input (PCA of ``sum_i X_i^T X_i`` over the
calibration tokens, eigenvalues descending). Keeping the first ``k`` of them deletes rows and columns of
every weight that touches the residual stream: q/k/v/gate/up lose input columns, o_proj/down_proj output
rows. Each block has its own rotation, so the residual path carries a ``k x k`` shortcut matrix
``Q_in^T Q_out`` from one basis to the next. The rotations are computed in order on the outputs of the
already-sliced blocks (the paper's calibration), in float64.

What SmolLM2 needs beyond the paper: its embedding is tied to the output head, so the embedding and
the final norm stay in the original 576 dimensions, with a ``576 x k`` projection into the first
block's basis and a ``k x 576`` one out of the last (instead of untying a 28M-parameter head). A sliced
RMSNorm divides by the mean square over ``k`` channels, not 576; its scale ``sqrt(576 / k)`` restores
the original normalisation of the kept energy. Every added matrix counts in the parameter total; the
slicing width for a parameter budget comes from ``width_for``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _pca(signals: list[torch.Tensor]) -> torch.Tensor:
    """Orthogonal basis (columns) of the RMS-normalised tokens of ``signals``, largest variance first."""
    d = signals[0].shape[-1]
    cov = torch.zeros(d, d, dtype=torch.float64)
    for x in signals:
        x = x.reshape(-1, d).double()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        cov += x.T @ x
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, vals.argsort(descending=True)]


def _linear(weight: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    out.weight = nn.Parameter(weight.to(dtype).contiguous())
    return out


def _set(linear: nn.Linear, weight: torch.Tensor) -> None:
    linear.weight = nn.Parameter(weight.to(linear.weight.dtype).contiguous())
    linear.out_features, linear.in_features = linear.weight.shape


def _read_rotated(linears: list[nn.Linear], scale: torch.Tensor, basis: torch.Tensor) -> None:
    """Fold a norm's ``scale`` into the layers that read it and rotate their inputs: W diag(g) Q_k."""
    for lin in linears:
        _set(lin, (lin.weight.double() * scale.double()) @ basis)


def _norm_to(norm: nn.Module, k: int, d: int) -> None:
    """The norm after slicing: scale folded away; it divides by the mean square over k channels where
    the original divided by the same energy over d, so sqrt(d/k) restores the original's output (and
    its epsilon, scaled by d/k, the original's guard)."""
    norm.weight = nn.Parameter(torch.full((k,), math.sqrt(d / k), dtype=norm.weight.dtype))
    norm.variance_epsilon *= d / k


def _sliced_forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=False, position_embeddings=None, **kwargs):
    """LlamaDecoderLayer.forward with the shortcut matrices on the residual path."""
    h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                          position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                          position_embeddings=position_embeddings, **kwargs)
    h = self.shortcut_attn(hidden_states) + h
    return self.shortcut_mlp(h) + self.mlp(self.post_attention_layernorm(h))


def width_for(model, target_params: int) -> int:
    """The largest slicing width ``k`` whose sliced model has at most ``target_params`` parameters."""
    cfg = model.config
    d, layers = cfg.hidden_size, model.model.layers
    per_col = sum(lin.weight.shape[0] for la in layers for lin in
                  (la.self_attn.q_proj, la.self_attn.k_proj, la.self_attn.v_proj, la.mlp.gate_proj, la.mlp.up_proj))
    per_row = sum(lin.weight.shape[1] for la in layers for lin in (la.self_attn.o_proj, la.mlp.down_proj))
    dense = sum(p.numel() for p in model.parameters())

    def params(k: int) -> int:  # weights touching the residual scale with k; norms, shortcuts, projections added
        return dense - (per_col + per_row + 2 * len(layers)) * (d - k) + 2 * len(layers) * k * k + 2 * d * k

    return max(k for k in range(1, d + 1) if params(k) <= target_params)


@torch.no_grad()
def slice_model(model, calib: list[dict], k: int):
    """Rotate and slice ``model`` (a Hugging Face Llama, in place) to a residual width of ``k``."""
    inner, d = model.model, model.config.hidden_size
    dtype = inner.embed_tokens.weight.dtype
    xs = [inner.embed_tokens(b["input_ids"]).double() for b in calib]
    pos = [inner.rotary_emb(x.to(dtype), torch.arange(x.shape[1])[None].expand(x.shape[0], -1)) for x in xs]
    q = _pca(xs)[:, :k]
    inner.embed_tokens = nn.Sequential(inner.embed_tokens, _linear(q.T, dtype))  # the tie is kept
    rs = [x @ q for x in xs]
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _read_rotated([attn.q_proj, attn.k_proj, attn.v_proj], layer.input_layernorm.weight, q)
        _norm_to(layer.input_layernorm, k, d)
        outs = [attn(hidden_states=layer.input_layernorm(r.to(dtype)), attention_mask=None,
                     position_embeddings=p)[0].double() for r, p in zip(rs, pos)]
        full = [r @ q.T + o for r, o in zip(rs, outs)]
        q_mlp = _pca(full)[:, :k]
        _set(attn.o_proj, q_mlp.T @ attn.o_proj.weight.double())
        layer.shortcut_attn = _linear((q.T @ q_mlp).T, dtype)
        rs = [f @ q_mlp for f in full]

        _read_rotated([mlp.gate_proj, mlp.up_proj], layer.post_attention_layernorm.weight, q_mlp)
        _norm_to(layer.post_attention_layernorm, k, d)
        outs = [mlp(layer.post_attention_layernorm(r.to(dtype))).double() for r in rs]
        full = [r @ q_mlp.T + o for r, o in zip(rs, outs)]
        q = _pca(full)[:, :k]
        _set(mlp.down_proj, q.T @ mlp.down_proj.weight.double())
        layer.shortcut_mlp = _linear((q_mlp.T @ q).T, dtype)
        rs = [f @ q for f in full]
        layer.forward = _sliced_forward.__get__(layer)
    inner.norm = nn.Sequential(_linear(q, dtype), inner.norm)  # back to 576 for the tied head
    return model
