"""FLAP and Wanda-sp, the structured-pruning baselines of tools/bench_llm_crossdomain.py, written from
their papers as plain torch on a Hugging Face Llama (SmolLM2-135M); benchmark code, not library code.

Both remove the same units graphprune's ``targets=("heads", "ffn")`` does: whole GQA blocks (a key/value
head with the query heads that share it: q/k/v rows and o_proj columns) and FFN units (gate/up rows,
down_proj columns); the hidden size is kept. Both score the *input channels of the output projection*
(o_proj for a block, summed over the block's channels; down_proj for an FFN unit) from one dense
forward over the calibration batches.

- FLAP (An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI
  2024): fluctuation metric ``S_j = Var_tokens(X_j) * ||W[:, j]||^2``; adaptive structure across layers
  and modules (each module kind's scores standardised over all layers, then one global ranking,
  removing the lowest until the parameter budget is met); bias compensation: the removed channels'
  mean contribution ``W[:, pruned] @ mean(X[pruned])`` becomes a bias of o_proj / down_proj (the
  bias parameters count against the budget, so the total stays equal).
- Wanda-sp (the structured Wanda of the FLAP paper's baselines, after Sun et al., "A Simple and
  Effective Pruning Approach for LLMs", 2023): ``S_j = sum_i |W_ij| * ||X_j||_2``, the same number of
  blocks and units removed in every layer (uniform, as graphprune's default), no compensation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Stats:
    """Per layer, per projection input: token count, sum and sum of squares (float64)."""
    n: list[dict[str, int]]
    sum: list[dict[str, torch.Tensor]]
    sumsq: list[dict[str, torch.Tensor]]

    def mean(self, i: int, key: str) -> torch.Tensor:
        return self.sum[i][key] / self.n[i][key]

    def var(self, i: int, key: str) -> torch.Tensor:
        return (self.sumsq[i][key] / self.n[i][key] - self.mean(i, key) ** 2).clamp_min(0)

    def norm(self, i: int, key: str) -> torch.Tensor:
        return self.sumsq[i][key].sqrt()


def _projections(layer) -> dict[str, torch.nn.Linear]:
    return {"attn": layer.self_attn.o_proj, "ffn": layer.mlp.down_proj}


@torch.no_grad()
def collect(model, calib: list[dict]) -> Stats:
    """Input statistics of every o_proj and down_proj, one dense pass over ``calib``."""
    layers = model.model.layers
    stats = Stats([{} for _ in layers], [{} for _ in layers], [{} for _ in layers])
    hooks = []
    for i, layer in enumerate(layers):
        for key, proj in _projections(layer).items():
            def hook(_mod, args, i=i, key=key):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                stats.n[i][key] = stats.n[i].get(key, 0) + x.shape[0]
                stats.sum[i][key] = stats.sum[i].get(key, 0) + x.sum(0)
                stats.sumsq[i][key] = stats.sumsq[i].get(key, 0) + (x * x).sum(0)
            hooks.append(proj.register_forward_pre_hook(hook))
    try:
        for batch in calib:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _geometry(model) -> tuple[int, int, int, int]:
    """(kv heads, query heads per kv head, head_dim, hidden)."""
    cfg = model.config
    attn = model.model.layers[0].self_attn
    return cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads, attn.head_dim, cfg.hidden_size


def channel_scores(model, stats: Stats, method: str) -> list[dict[str, torch.Tensor]]:
    """Per layer: one score per GQA block ("attn") and per FFN unit ("ffn")."""
    kv, rep, head_dim, _ = _geometry(model)
    out = []
    for i, layer in enumerate(model.model.layers):
        scores = {}
        for key, proj in _projections(layer).items():
            w = proj.weight.detach().double()
            if method == "flap":
                s = stats.var(i, key) * (w * w).sum(0)
            elif method == "wanda-sp":
                s = stats.norm(i, key) * w.abs().sum(0)
            else:
                raise ValueError(f"unknown baseline {method!r}")
            scores[key] = s.view(kv, rep * head_dim).sum(1) if key == "attn" else s
        out.append(scores)
    return out


def unit_params(model) -> dict[str, int]:
    """Parameters one GQA block / one FFN unit holds."""
    _, rep, head_dim, hidden = _geometry(model)
    return {"attn": (2 * rep + 2) * head_dim * hidden, "ffn": 3 * hidden}


def uniform_keep(scores: list[dict[str, torch.Tensor]], keep: dict[str, int]) -> list[dict[str, list[int]]]:
    """The ``keep[kind]`` highest-scoring units of each kind in every layer."""
    return [{k: sorted(s[k].topk(keep[k]).indices.tolist()) for k in s} for s in scores]


def adaptive_keep(scores: list[dict[str, torch.Tensor]], params: dict[str, int], budget: int) -> list[dict[str, list[int]]]:
    """FLAP's adaptive structure: standardise each kind's scores over all layers, then remove units
    from the lowest standardised score up while their parameters fit in ``budget``; a unit too big
    for what is left is skipped, and every layer keeps at least one unit of each kind."""
    units = []
    for kind in ("attn", "ffn"):
        flat = torch.cat([s[kind] for s in scores])
        mean, std = flat.mean(), flat.std().clamp_min(1e-12)
        units += [((s[kind][j] - mean) / std, i, kind, j) for i, s in enumerate(scores) for j in range(len(s[kind]))]
    keep = [{k: set(range(len(s[k]))) for k in s} for s in scores]
    left = budget
    for _z, i, kind, j in sorted(units, key=lambda u: float(u[0])):
        if params[kind] <= left and len(keep[i][kind]) > 1:
            keep[i][kind].discard(j)
            left -= params[kind]
    return [{k: sorted(v) for k, v in layer.items()} for layer in keep]


def _slice(linear: torch.nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    w = linear.weight.data
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    linear.weight = torch.nn.Parameter(w.contiguous())
    if rows is not None and linear.bias is not None:
        linear.bias = torch.nn.Parameter(linear.bias.data[rows].contiguous())
    linear.out_features, linear.in_features = w.shape


@torch.no_grad()
def apply(model, keep: list[dict[str, list[int]]], stats: Stats | None = None) -> None:
    """Remove every unit not in ``keep``; with ``stats``, FLAP's bias compensation first."""
    _, rep, head_dim, _ = _geometry(model)
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        blocks = torch.tensor(keep[i]["attn"])
        q_idx = (blocks[:, None] * rep * head_dim + torch.arange(rep * head_dim)).flatten()
        kv_idx = (blocks[:, None] * head_dim + torch.arange(head_dim)).flatten()
        ffn_idx = torch.tensor(keep[i]["ffn"])
        for key, proj, idx in (("attn", attn.o_proj, q_idx), ("ffn", mlp.down_proj, ffn_idx)):
            if stats is not None:
                dropped = torch.ones(proj.in_features, dtype=torch.bool)
                dropped[idx] = False
                bias = proj.weight[:, dropped].double() @ stats.mean(i, key)[dropped]
                if proj.bias is not None:
                    bias += proj.bias.double()
                proj.bias = torch.nn.Parameter(bias.to(proj.weight.dtype))
            _slice(proj, cols=idx)
        _slice(attn.q_proj, rows=q_idx)
        _slice(attn.k_proj, rows=kv_idx)
        _slice(attn.v_proj, rows=kv_idx)
        _slice(mlp.gate_proj, rows=ffn_idx)
        _slice(mlp.up_proj, rows=ffn_idx)


def prune(model, method: str, calib: list[dict], keep: dict[str, int] | None = None, budget: int | None = None):
    """Prune ``model`` in place with ``method`` ("flap" or "wanda-sp") and return it.

    Wanda-sp keeps ``keep[kind]`` units of each kind in every layer; FLAP removes ``budget``
    parameters (its added biases included) with an adaptive structure."""
    stats = collect(model, calib)
    scores = channel_scores(model, stats, method)
    if method == "wanda-sp":
        apply(model, uniform_keep(scores, keep))
        return model
    hidden = model.config.hidden_size
    bias_params = 2 * hidden * len(model.model.layers)  # one o_proj and one down_proj bias per layer
    # the biases are added parameters, so the units removed must pay for them too
    apply(model, adaptive_keep(scores, unit_params(model), budget + bias_params), stats)
    return model
