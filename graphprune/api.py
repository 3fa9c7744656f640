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
    for name, b in model.named_buffers(remove_duplicate=False):
        if b.is_floating_point():
            out.setdefault(name, None if b.is_meta else b.detach().float().cpu().numpy())
    return out


def resolve_importance(importance: str, calib, compensate) -> str:
    """``auto``: reconstruction-aware OBS with calibration data (what compensation then
    achieves), activation-weighted without compensation, l2 magnitude without data."""
    if importance != "auto":
        return importance
    if calib is None:
        return "l2"
    return "obs" if compensate is not False else "activation"


def batches_of(calib) -> list[tuple[tuple, dict]]:
    from .calib.torch_run import as_batch

    batches = [as_batch(b) for b in calib]
    if not batches:
        raise PlanError("calib= holds no batches; pass a list of example batches, or leave it out")
    return batches


def score_context(graph: DependencyGraph, model: torch.nn.Module, groups, importance: str,
                  batches: list | None, loss_fn=None):
    """What the criterion reads: weights, and statistics / gradients from the calibration batches."""
    from .calib.torch_calib import check_shapes, collect, gradients
    from .importance import CRITERIA, ScoreContext, attach_stats

    ctx = ScoreContext(graph, _tensors(model))
    crit = CRITERIA.get(importance)
    if crit is None or crit.needs == "" or batches is None:
        return ctx
    ep = graph.extra["ep"]
    check_shapes(ep, batches)
    if crit.needs == "grad":
        ctx.grads = gradients(model, batches, loss_fn)
        return ctx
    attach_stats(ctx, groups, importance, lambda sites, gram: collect(ep, batches, sites, gram))
    return ctx


def plan(graph: DependencyGraph, model: torch.nn.Module, ratio: float = 0.5, importance: str = "auto",
         round_to: int = 1, ignore: Iterable[str] = (), roles: Iterable[str] | None = None,
         ratios: Mapping[int, float] | None = None, targets: Iterable[str] | str | None = None,
         calib=None, loss_fn=None, compensate: bool | str | None = None, notes: list[str] | None = None) -> PrunePlan:
    """Rank every selected group by ``importance`` and drop ``ratio`` of each.

    ``targets`` picks what to prune by what it is (see :mod:`graphprune.structure`):
    "heads" (whole attention heads; with GQA a key/value head and its query heads),
    "query_heads" (GQA query heads per key/value head), "ffn" (FFN units, a CNN
    block's inner channels), "hidden" (the residual stream), "head_dim" (RoPE pairs
    kept together), "conv_groups". ``roles`` picks by layout instead: "channel",
    "outer" (whole blocks), "inner" (positions inside blocks). With neither, models
    with attention prune whole heads, other models their channels and conv groups.

    ``importance``: a criterion name (see :data:`graphprune.importance.CRITERIA`) or "auto".
    Data-aware criteria read ``calib``, batches shaped like the example inputs (a tuple of
    positional inputs or a dict of keyword inputs each); "taylor" and "hessian" also need a
    loss (``loss_fn(output, batch)``, or the model's own ``output.loss``).
    """
    return _plan(graph, model, ratio, importance, round_to, ignore, roles, ratios, targets, calib, loss_fn,
                 compensate, notes)[0]


def _plan(graph, model, ratio, importance, round_to, ignore, roles, ratios, targets, calib, loss_fn, compensate,
          notes):
    """plan(), also returning the score context (its calibration statistics serve compensation)."""
    from .importance import score_groups

    check_ratio(ratio)
    name = resolve_importance(importance, calib, compensate)
    groups = select_groups(graph, roles, ignore, targets)
    batches = batches_of(calib) if calib is not None else None
    ctx = score_context(graph, model, groups, name, batches, loss_fn)
    scores = score_groups(name, ctx, groups)
    if notes is not None:
        notes.extend(ctx.notes)
    return make_plan(groups, scores, ratio, round_to, ratios), ctx


def shape_fn(graph: DependencyGraph, p: PrunePlan):
    masks = keep_masks(graph, p)

    def shape_of(name: str) -> tuple:
        v = graph.ir.values[name]
        return tuple(int(masks[(name, d)].sum()) if (name, d) in masks else s for d, s in enumerate(v.shape))

    return shape_of


def prune(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, ratio: float = 0.5,
          importance: str = "auto", round_to: int = 1, ignore: Iterable[str] = (),
          roles: Iterable[str] | None = None, graph: DependencyGraph | None = None,
          plan_: PrunePlan | None = None, verify: bool = False, atol: float = 1e-5,
          targets: Iterable[str] | str | None = None, calib=None, compensate: bool | str | None = None,
          loss_fn=None, add_bias: bool = False, ratios: Mapping[int, float] | None = None):
    """Prune ``model`` in place; return ``(model, PruneReport)``.

    With ``calib`` (batches shaped like the example inputs: tuples of positional inputs or
    dicts of keyword inputs), channels are ranked from data (``importance="auto"``) and,
    unless ``compensate=False``, every layer that loses input channels is refit from the
    channels it keeps (``compensate="bias"``: only the mean is folded into its bias;
    ``"sequential"``: each layer is refit from the pruned model's own inputs, in graph order;
    ``add_bias=True`` lets compensation add a bias to a layer that has none).

    With ``verify=True`` the plan is first held to the exactness oracle on a copy
    of the model (see :func:`graphprune.verify`) and the result is in the report. The
    oracle checks the plan without compensation, which changes weights on purpose:
    ``report.compensation`` lists each refit layer with its calibration error before/after.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> m, report = graphprune.prune(m, (torch.randn(3, 4),), ratio=0.5)
        >>> m[0].out_features, report.params_after < report.params_before
        (4, True)
    """
    import time

    args = args if isinstance(args, tuple) else (args,)
    t0 = time.perf_counter()
    dg = graph or trace(model, args, kwargs)
    mode = _compensation_mode(compensate, calib)
    notes: list[str] = []
    name = resolve_importance(importance, calib, compensate) if plan_ is None else "given plan"
    p, ctx = (plan_, None) if plan_ is not None else _plan(
        dg, model, ratio, importance, round_to, ignore, roles, ratios, targets, calib, loss_fn, compensate, notes)
    for gid, size in p.sizes.items():
        if gid not in dg._by_atom or dg.group(gid).size != size:
            raise PlanError(f"the plan does not fit this model: group {gid} (size {size}) is not in its graph")
    oracle = None
    if verify:
        from .verify import verify as run_oracle

        oracle = run_oracle(copy.deepcopy(model), args, p, dg, kwargs, atol)
    comp = None
    if mode is not None and not p.empty:
        from .calib.sites import find_sites
        from .calib.torch_calib import check_shapes, compensate as run_compensation

        batches = batches_of(calib)
        check_shapes(dg.extra["ep"], batches)
        sites = find_sites(dg)
        comp = run_compensation(dg, dg.extra["ep"], batches, p, sites, _tensors(model), mode,
                                _bias_free(model, dg, sites) if add_bias else set(), ctx.stats if ctx else None)
    shape_after = shape_fn(dg, p)
    report = PruneReport(count_params(dg.ir), count_params(dg.ir, shape_after), count_macs(dg.ir),
                         count_macs(dg.ir, shape_after),
                         {gid: (size - len(p.pruned.get(gid, [])), size) for gid, size in p.sizes.items()}, p, oracle,
                         importance=name, compensation=comp, notes=notes)
    rewrite(model, dg, p, args, kwargs, updates=comp.updates if comp else None)
    if comp is not None and comp.new_biases:
        report.params_after += _add_biases(model, dg, p, comp)
    report.seconds = time.perf_counter() - t0
    return model, report


def _compensation_mode(compensate, calib) -> str | None:
    if compensate not in (None, True, False, "refit", "bias", "sequential"):
        raise PlanError(f"compensate must be True, False, 'refit', 'bias' or 'sequential', not {compensate!r}")
    if compensate is None:
        return "refit" if calib is not None else None
    if compensate is False:
        return None
    if calib is None:
        raise PlanError("compensation needs calibration data: pass calib=[batch, ...] or compensate=False")
    return "refit" if compensate is True else compensate


def _bias_free(model: torch.nn.Module, dg: DependencyGraph, sites) -> set[str]:
    """Sites run by an nn.Linear / nn.ConvNd without a bias: compensation may give them one."""
    nodes = {n.name: n for n in dg.ir.nodes}
    out = set()
    for s in sites:
        path = nodes[s.node].meta.get("module", "")
        try:
            mod = model.get_submodule(path) if path else model
        except AttributeError:
            continue
        if isinstance(mod, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and mod.bias is None and s.b is None:
            out.add(s.node)
    return out


def _add_biases(model: torch.nn.Module, dg: DependencyGraph, p: PrunePlan, comp) -> int:
    """Give layers without a bias the one compensation computed (sliced to the kept outputs);
    returns the number of parameters added."""
    added = 0
    masks = keep_masks(dg, p)
    nodes = {n.name: n for n in dg.ir.nodes}
    for node, (out_value, b) in sorted(comp.new_biases.items()):
        path = nodes[node].meta.get("module", "")
        mod = model.get_submodule(path) if path else model
        dim = dg.ir.values[out_value].rank - 1 if isinstance(mod, torch.nn.Linear) else 1
        keep = masks.get((out_value, dim))
        if keep is not None:
            b = b[torch.as_tensor(np.flatnonzero(keep))]
        mod.bias = torch.nn.Parameter(b.detach().clone().to(mod.weight.device, mod.weight.dtype),
                                      requires_grad=mod.weight.requires_grad)
        comp.bias_modules.append(path)
        added += b.numel()
    return added
