"""The public entry points: trace, plan, prune."""
from __future__ import annotations

import copy
from typing import Iterable, Mapping

import numpy as np
import torch

from .backends.torch_module import rewrite
from .errors import PlanError
from .frontends.torch_export import export_program, lower
from .graph import DependencyGraph
from .importance import SCORERS
from .metrics import count_macs, count_params
from .planner import PrunePlan, check_ratio, keep_masks, make_plan, select_groups
from .report import PruneReport


def trace(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, freeze_io: bool = True) -> DependencyGraph:
    """Trace ``model`` on example inputs and solve its channel spaces.

    Parameters may be on the ``meta`` device; only shapes are read.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        ...                         torch.nn.Conv2d(8, 4, 3))
        >>> g = graphprune.trace(m, (torch.randn(1, 3, 16, 16),))
        >>> grp = g.group_of("0.weight", 0)
        >>> sorted({name for name, dim, pos in grp.affected(7)})
        ['0.bias', '0.weight', '1.bias', '1.running_mean', '1.running_var', '1.weight', '3.weight']
    """
    args = args if isinstance(args, tuple) else (args,)
    ep = export_program(model, args, kwargs)
    ir = lower(ep, model)
    return DependencyGraph(ir, freeze_io=freeze_io, extra={"ep": ep})


def load_onnx(path: str, freeze_io: bool = True) -> DependencyGraph:
    """Load an ONNX file and solve its channel spaces: the same query API as :func:`trace`.

    Example:
        >>> g = graphprune.load_onnx("model.onnx")   # doctest: +SKIP
        >>> print(g.summary())                      # doctest: +SKIP
    """
    from .frontends import onnx as onnx_frontend

    model = onnx_frontend.load_model(path)
    ir = onnx_frontend.lower(model)
    return DependencyGraph(ir, freeze_io=freeze_io, extra={"onnx": model, "path": str(path)},
                           before_groups=onnx_frontend.freeze_unreachable)


def _tensors(model: torch.nn.Module) -> dict[str, np.ndarray | None]:
    out: dict[str, np.ndarray | None] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = None if p.is_meta else p.detach().float().cpu().numpy()
    return out


def plan(graph: DependencyGraph, model: torch.nn.Module, ratio: float = 0.5, importance: str = "l2",
         round_to: int = 1, ignore: Iterable[str] = (), roles: Iterable[str] | None = None,
         ratios: Mapping[int, float] | None = None, targets: Iterable[str] | str | None = None) -> PrunePlan:
    """Rank every selected group by ``importance`` and drop ``ratio`` of each.

    ``targets`` picks what to prune by what it is (see :mod:`graphprune.structure`):
    "heads" (whole attention heads; with GQA a key/value head and its query heads),
    "query_heads" (GQA query heads per key/value head), "ffn" (FFN units, a CNN
    block's inner channels), "hidden" (the residual stream), "head_dim" (RoPE pairs
    kept together), "conv_groups". ``roles`` picks by layout instead: "channel",
    "outer" (whole blocks), "inner" (positions inside blocks). With neither, models
    with attention prune whole heads, other models their channels and conv groups.
    """
    check_ratio(ratio)
    if importance not in SCORERS:
        raise PlanError(f"unknown importance '{importance}'; choose one of {sorted(SCORERS)}")
    groups = select_groups(graph, roles, ignore, targets)
    scores = SCORERS[importance](graph, _tensors(model), groups)
    return make_plan(groups, scores, ratio, round_to, ratios)


def shape_fn(graph: DependencyGraph, p: PrunePlan):
    masks = keep_masks(graph, p)

    def shape_of(name: str) -> tuple:
        v = graph.ir.values[name]
        return tuple(int(masks[(name, d)].sum()) if (name, d) in masks else s for d, s in enumerate(v.shape))

    return shape_of


def prune(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, ratio: float = 0.5,
          importance: str = "l2", round_to: int = 1, ignore: Iterable[str] = (),
          roles: Iterable[str] | None = None, graph: DependencyGraph | None = None,
          plan_: PrunePlan | None = None, verify: bool = False, atol: float = 1e-5,
          targets: Iterable[str] | str | None = None):
    """Prune ``model`` in place; return ``(model, PruneReport)``.

    With ``verify=True`` the plan is first held to the exactness oracle on a copy
    of the model (see :func:`graphprune.verify`) and the result is in the report.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> m, report = graphprune.prune(m, (torch.randn(3, 4),), ratio=0.5)
        >>> m[0].out_features, report.params_after < report.params_before
        (4, True)
    """
    args = args if isinstance(args, tuple) else (args,)
    dg = graph or trace(model, args, kwargs)
    p = plan_ or plan(dg, model, ratio, importance, round_to, ignore, roles, targets=targets)
    for gid, size in p.sizes.items():
        if gid not in dg._by_atom or dg.group(gid).size != size:
            raise PlanError(f"the plan does not fit this model: group {gid} (size {size}) is not in its graph")
    oracle = None
    if verify:
        from .verify import verify as run_oracle

        oracle = run_oracle(copy.deepcopy(model), args, p, dg, kwargs, atol)
    shape_after = shape_fn(dg, p)
    report = PruneReport(count_params(dg.ir), count_params(dg.ir, shape_after), count_macs(dg.ir),
                         count_macs(dg.ir, shape_after),
                         {gid: (size - len(p.pruned.get(gid, [])), size) for gid, size in p.sizes.items()}, p, oracle)
    rewrite(model, dg, p, args, kwargs)
    return model, report
