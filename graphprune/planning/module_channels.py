"""Which channels of each module's output a plan keeps.

recover(blockwise=True) trains a pruned model block by block toward the original's block
outputs; where a plan narrowed a block's output (a CNN's residual stream), the original's
output is compared on the channels the plan kept, which only the plan knows. A module's output
is taken to be the first output of the last node recorded inside it (a residual block's add, a
layer's last norm); recover checks the shapes before using it.
"""
from __future__ import annotations

import numpy as np

from ..graph import DependencyGraph
from .plan import PrunePlan, keep_masks


def module_channels(dg: DependencyGraph, plan: PrunePlan, paths: set[str]) -> dict[str, dict[int, list[int]]]:
    """module path -> {dim: kept positions} of its output ({} where the plan left it whole), for the
    modules ``paths`` names (recover's blocks: a map of every module would be large for an LLM)."""
    masks = keep_masks(dg, plan)
    last: dict[str, str] = {}
    for node in dg.ir.nodes:  # in execution order: the last node inside a module makes its output
        if node.outputs and node.outputs[0] in dg.ir.values:
            for path in paths.intersection(node.meta.modules):
                last[path] = node.outputs[0]
    out: dict[str, dict[int, list[int]]] = {}
    for path, name in last.items():
        rank = dg.ir.values[name].rank
        out[path] = {d: np.flatnonzero(masks[(name, d)]).tolist() for d in range(rank) if (name, d) in masks}
    return out


ATTR = "graphprune_kept_channels"  # where a pruned nn.Module carries the map (plain dict, in no state_dict)


def composed(before: dict[str, dict[int, list[int]]] | None, step: dict[str, dict[int, list[int]]]):
    """The map of a model pruned again (``before``: its map from the original, if any): positions
    kept by ``step`` among those kept before, so recover compares with the first original."""
    if not before:
        return step
    out = {}
    for path, dims in step.items():
        prev = before.get(path, {})
        out[path] = {**prev, **{d: [prev[d][i] for i in idx] if d in prev else idx for d, idx in dims.items()}}
    return out
