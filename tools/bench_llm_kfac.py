"""For the cross-domain bench (tools/bench_llm_crossdomain.py --kfac-every N): OBS's output side weighted by the
loss: K-FAC's gradient factor, as LLM Surgeon (van der Ouderaa et al. 2023) ranks structures.

OBS ranks a unit by the error its removal leaves in its site's output, every output direction
weighted alike: tr(W_B (Hinv_BB)^-1 W_B^T). With the Fisher of the loss factored as
H (x) G (K-FAC), G = E[g g^T] for g the loss gradient at the site's output, the output error is
weighted by the loss instead: tr(G W_B (Hinv_BB)^-1 W_B^T), which is OBS on G^(1/2) W. The refit
that follows is the same under either (the Kronecker factor drops out of the update), so only
the ranking changes. obs() divides by the site's output energy, G-weighted here too, so the scale
of G cancels: this ranks within a layer; a loss-scaled comparison across layers (LLM Surgeon's
global threshold) is not what it measures. G is summed over the output projections' (o_proj, down_proj) output
gradients of the causal-LM loss on every ``--kfac-every``-th calibration batch (news and sampled text).

A measurement, not a library feature: on SmolLM2 it moved one kind of text up and another down at
both ratios and left the worst case where it was (docs/llm_pruning.md, "K-FAC output weighting").

    .venv/bin/python tools/bench_llm_crossdomain.py --kfac-every 1 --resume --methods graphprune --ratios 0.2 \\
        --eval-tokens 3072 --tag "K-FAC output weighting"
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import graphprune.api.torch_models as api  # noqa: E402
import graphprune.importance.data as data  # noqa: E402
from graphprune.hf.pretrained import causal_lm_loss  # noqa: E402
from graphprune.util.progress import progress  # noqa: E402

SITES = ("o_proj", "down_proj")  # the projections that write into the residual stream


def output_factors(model: torch.nn.Module, batches: list[dict]) -> dict[str, torch.Tensor]:
    """weight path -> G^(1/2) (float64, G normalised to a mean diagonal of 1) per output projection."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(SITES)}
    acc = {n: torch.zeros(m.out_features, m.out_features, dtype=torch.float64) for n, m in mods.items()}

    def hook(name):
        def fwd(_mod, _inp, out):
            def bwd(g):
                g2 = g.detach().reshape(-1, g.shape[-1]).double()
                acc[name].add_(g2.T @ g2)
            out.register_hook(bwd)
        return fwd

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        with torch.enable_grad():
            for b in progress(batches, "K-FAC output gradients", len(batches)):
                model.zero_grad(set_to_none=True)
                causal_lm_loss(model(**b), b).backward()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    out = {}
    for n, a in acc.items():
        e, v = torch.linalg.eigh(a / a.diagonal().mean())
        out[n + ".weight"] = (v * e.clamp(min=0).sqrt()) @ v.T
    return out


def install(every: int) -> None:
    """Route graphprune's prune and OBS ranking through the output factors."""
    factors: dict[str, torch.Tensor] = {}
    site = {"path": None}
    prune, oriented, obs_costs = api.prune, data.oriented, data.obs_costs

    def prune_with_factors(model, *args, **kwargs):
        factors.clear()
        factors.update(output_factors(model, list(kwargs["options"].calib)[::every]))
        return prune(model, *args, **kwargs)

    def oriented_noting(ctx, s):  # obs() orients a site's weight just before it ranks the site
        v = ctx.dg.ir.values[s.w]
        site["path"] = v.source or v.name
        return oriented(ctx, s)

    def weighted_costs(w, b, gram, feature_index, size, x=None):
        s = factors.get(site["path"])
        if s is not None and s.shape[0] == w.shape[0]:
            w, b = s @ w, (s @ b if b is not None else None)
        return obs_costs(w, b, gram, feature_index, size, x)

    api.prune, data.oriented, data.obs_costs = prune_with_factors, oriented_noting, weighted_costs
