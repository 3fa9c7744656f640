"""Weight-only criteria: magnitude (l1, l2), LAMP, BatchNorm scale, random.

Index k of a group owns some positions in each member dim; magnitude sums the
members' |w|^p over those positions (all other dims included), then takes the
p-th root, so a conv's output filter, its BN affine entries and the next conv's
input slice all vote together.
"""
from __future__ import annotations

import numpy as np

from ..graph import Group
from ..ops import Ops
from .base import ScoreContext, register_importance, scatter, with_fallback


def magnitude(ctx: ScoreContext, groups: list[Group], p: int) -> dict[int, np.ndarray]:
    """Sum of |w|^p over every learned member position, then the p-th root."""
    out: dict[int, np.ndarray] = {}
    kinds = {v.source: v.kind for v in ctx.dg.ir.params()}
    learned = [(g, m) for g in groups for m in g.members
               if kinds.get(m.name) == "param" and m.name in ctx.tensors]  # running stats carry no magnitude
    wanted: dict[str, set[int]] = {}
    for _, m in learned:
        wanted.setdefault(m.name, set()).add(m.dim)
    sums: dict[tuple[str, int], np.ndarray] = {}
    for name, dims in wanted.items():
        w = ctx.weight(name)
        if dims >= {0, 1} and w.ndim >= 2:  # a conv's filters and its inputs both pruned: one read
            sums[name, 0], sums[name, 1] = power_sums_01(w, p)
        for d in dims:
            if (name, d) not in sums:
                sums[name, d] = power_sums(w, d, p)
    for g in groups:
        out[g.id] = np.zeros(g.size, dtype=np.float64)
    for g, m in learned:
        scatter(out[g.id], ctx.dg.solver_coords(m.term, g.id), sums[m.name, m.dim])
    return {gid: score ** (1.0 / p) for gid, score in out.items()}


def _powered(c, p: int):
    return c.square() if p == 2 else c.abs() if p == 1 else c.abs().pow(p)


def power_sums(w: np.ndarray, dim: int, p: int) -> np.ndarray:
    """Sum of |w|^p over every dim but ``dim``, in torch and without a full-size temporary
    (numpy's |w|^p copy of every weight took a tenth of a second on BERT-base and
    ResNet-50, most of it fresh pages): the first dim is one norm over contiguous rows; the
    second is accumulated over blocks of rows that stay in cache."""
    import torch

    if w.ndim < 2 or dim > 1:
        other = tuple(d for d in range(w.ndim) if d != dim)
        a = np.abs(w).astype(np.float64) ** p
        return a.sum(axis=other) if other else a
    t = torch.from_numpy(np.ascontiguousarray(w))
    if dim == 0:
        return (torch.linalg.vector_norm(t.reshape(t.shape[0], -1), ord=p, dim=1).double() ** p).numpy()
    return power_sums_01(w, p, rows_too=False)[1]


def power_sums_01(w: np.ndarray, p: int, rows_too: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """(sums over all dims but 0, sums over all dims but 1) of |w|^p in one pass over ``w``:
    row blocks of about a megabyte, each raised to p once; a conv's kernel window is summed
    after the blocks (summing it per block costs more than the block itself)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(w))
    flat = t.reshape(t.shape[0], -1)
    acc = torch.zeros(flat.shape[1], dtype=torch.float64)
    rows_out = torch.empty(flat.shape[0], dtype=torch.float64) if rows_too else None
    step = max(1, (1 << 18) // max(1, flat.shape[1]))
    for start in range(0, flat.shape[0], step):
        c = _powered(flat[start:start + step], p)
        acc += c.sum(0)  # float32 within a block (a float64 sum converts every element: 4x slower)
        if rows_out is not None:
            rows_out[start:start + step] = c.sum(1)
    cols = acc.reshape(t.shape[1], -1).sum(1)
    return (rows_out.numpy() if rows_out is not None else None), cols.numpy()


@register_importance("l1")
def l1(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """L1 norm of every weight the index owns."""
    return magnitude(ctx, groups, 1)


@register_importance("l2")
def l2(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """L2 norm of every weight the index owns."""
    return magnitude(ctx, groups, 2)


@register_importance("random")
def random(ctx: ScoreContext, groups: list[Group], seed: int = 0) -> dict[int, np.ndarray]:
    """Uniform random scores (a floor to compare against); seeded, so plans are reproducible."""
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in groups}


@register_importance("lamp")
def lamp(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """LAMP (Lee et al. 2021): an index's squared L2 norm over the sum of those not smaller."""
    out = {}
    for gid, s in magnitude(ctx, groups, 2).items():
        sq = s ** 2
        order = np.argsort(sq, kind="stable")
        tail = np.cumsum(sq[order][::-1])[::-1]  # sum over indices at or above each rank
        score = np.empty_like(sq)
        score[order] = sq[order] / np.maximum(tail, 1e-300)
        out[gid] = score
    return out


@register_importance("bn_scale")
def bn_scale(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """|gamma| of the BatchNorm scales the index owns (network slimming); L2 where no BN is."""
    bn_weights = set()
    for n in ctx.dg.ir.nodes:
        if n.op in Ops.BatchNorm and len(n.inputs) > 1:
            w = ctx.dg.ir.values[n.inputs[1]]
            if w.kind == "param":
                bn_weights.add(w.source or w.name)

    def score_one(g: Group) -> np.ndarray | None:
        members = [m for m in g.members if m.name in bn_weights]
        if not members:
            return None
        score = np.zeros(g.size, dtype=np.float64)
        for m in members:
            scatter(score, ctx.dg.solver_coords(m.term, g.id), np.abs(ctx.weight(m.name)))
        return score

    return with_fallback(ctx, groups, score_one, l2, "bn_scale: no BatchNorm", "l2")
