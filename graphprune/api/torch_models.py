"""The public entry points for PyTorch models: trace, plan, prune, and the oracle (verify)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..errors import PlanError
from ..graph import DependencyGraph
from ..options import PruneOptions
from ..oracle import OracleReport, run_oracle
from ..oracle import max_abs_diff as _max_abs_diff
from ..pipeline import plan_program, prune_program
from ..planning.plan import PrunePlan, keep_masks
from ..program.onnx_program import OnnxProgram
from ..program.torch_program import TorchProgram
from ..rules import load_all
from ..util.torch_compat import tree_leaves

load_all()  # the op rules register on import: with the API, not inside the first trace


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
    return TorchProgram(model, args, kwargs).graph(freeze_io)


def load_onnx(path: str, freeze_io: bool = True, input_shapes: Mapping[str, tuple] | None = None,
              inputs: Mapping | None = None, fuse: bool = True) -> DependencyGraph:
    """Load an ONNX file and solve its channel spaces: the same query API as :func:`trace`.
    ``fuse`` as in :func:`graphprune.prune_onnx` (the default there too), so a plan made on this
    graph fits ``prune_onnx(plan_=...)`` called with the same ``fuse``.

    Example:
        >>> g = graphprune.load_onnx("model.onnx")   # doctest: +SKIP
        >>> print(g.summary())                      # doctest: +SKIP
    """

    return OnnxProgram.load(path, dict(inputs) if inputs is not None else None, input_shapes,
                            fuse=fuse).graph(freeze_io)


def plan(graph: DependencyGraph, model: torch.nn.Module, ratio: float | None = None, importance: str | None = None,
         *, options: PruneOptions | None = None, notes: list[str] | None = None, **given) -> PrunePlan:
    """Rank every selected group by ``importance`` and drop ``ratio`` of each. Every other option
    (``targets``, ``roles``, ``ratios``, ``ignore``, ``calib``, ``budget``, ``allocation``,
    ``round_to``, ``runtime``, ...) is a field of :class:`graphprune.PruneOptions`, given as a
    keyword argument here or whole as ``options=``; ``notes`` collects the planner's notes.

    ``targets`` picks what to prune by what it is (see :mod:`graphprune.kinds`):
    "heads" (whole attention heads; with GQA a key/value head and its query heads),
    "query_heads" (GQA query heads per key/value head), "ffn" (FFN units, a CNN
    block's inner channels), "hidden" (the residual stream), "head_dim" (RoPE pairs
    kept together), "conv_groups". ``roles`` picks by layout instead: "channel",
    "outer" (whole blocks), "inner" (positions inside blocks). With neither, models
    with attention prune whole heads and FFN units (the hidden size stays), other models
    their channels and a grouped convolution's groups: whole where they cut exactly,
    else the channels inside every group (IGCV3's shuffled groups, ResNeSt's radix).

    ``ratios`` overrides ``ratio`` per group: keys are group ids, module or parameter names (a
    group matches when one of its members lives there; the longest name wins) or kinds
    (``{"ffn": 0.5, "layer4": 0.2, 17: 0.0}``).

    ``importance``: a criterion name (see :data:`graphprune.importance.CRITERIA`) or "auto".
    Data-aware criteria read ``calib``, batches shaped like the example inputs (a tuple of
    positional inputs or a dict of keyword inputs each); "taylor" and "hessian" also need a
    loss (``loss_fn(output, batch)``, or the model's own ``output.loss``).
    """
    if isinstance(graph, torch.nn.Module) and isinstance(model, DependencyGraph):  # trace(model, args) reads the
        raise PlanError("graphprune.plan takes the graph first: plan(graph, model, ...), with graph = "  # other way
                        "graphprune.trace(model, args)")
    given = named_ignore(model, given) if isinstance(model, torch.nn.Module) else given
    opts = PruneOptions.of(options, **_positional(ratio, importance), **given)
    planned = plan_program(TorchProgram.of(graph, model), opts)
    if notes is not None:
        notes.extend(planned.notes)
    return planned.plan


def named_ignore(model: torch.nn.Module, given: dict) -> dict:
    """``given`` with modules in ``ignore`` named as ``model.named_modules()`` names them (a user holds
    ``model.lm_head``, not its name); a module not in ``model`` is refused."""
    ignore = given.get("ignore")
    if ignore is None or isinstance(ignore, str):
        return given
    try:  # a generator is read once: here, not by the check below and then never again
        ignore = [ignore] if isinstance(ignore, torch.nn.Module) else list(ignore)
    except TypeError:
        return given  # PruneOptions says what ignore= takes
    if not any(isinstance(m, torch.nn.Module) for m in ignore):
        return {**given, "ignore": ignore}
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    out = []
    for m in ignore:
        if isinstance(m, torch.nn.Module) and id(m) not in names:
            raise PlanError(f"ignore= holds a {type(m).__name__} that is not a submodule of the model")
        out.append(names[id(m)] if isinstance(m, torch.nn.Module) else m)
    return {**given, "ignore": out}


def _positional(ratio, importance) -> dict:
    """The two options plan() also takes by position, where given."""
    return {k: v for k, v in (("ratio", ratio), ("importance", importance)) if v is not None}


def prune(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, *, graph: DependencyGraph | None = None,
          plan_: PrunePlan | None = None, options: PruneOptions | None = None, **given):
    """Prune ``model`` in place; return ``(model, PruneReport)``.

    Options are the fields of :class:`graphprune.PruneOptions`, as keyword arguments
    (``ratio=0.5``, ``calib=batches``, ``budget={"macs": 0.5}``...) or whole as ``options=``.
    ``graph`` (traced on the same inputs) skips tracing again; ``plan_`` applies a given plan.

    ``budget={"macs": 0.5}`` (or ``{"params": 0.6}``, ``{"params": 20e6}``, several keys at
    once) replaces ``ratio``: the plan keeps at most that much (a fraction <= 1 of the
    original, or an absolute count), as close to it as channel granularity allows.
    ``allocation="global"`` ranks channels across groups by importance normalised per group
    (each group loses at most ``max_ratio``, 0.9 by default) instead of one ratio for all.

    With ``calib`` (batches shaped like the example inputs: tuples of positional inputs or
    dicts of keyword inputs), channels are ranked from data (``importance="auto"``) and,
    unless ``compensate=False``, every layer that loses input channels is refit from the
    channels it keeps (``compensate="bias"``: only the mean is folded into its bias;
    ``"sequential"``: each layer is refit from the pruned model's own inputs, in graph order;
    ``add_bias=True`` lets compensation add a bias to a layer that has none). With ``calib``,
    ``allocation="auto"`` also measures how much each group's removal costs the output and
    spends the same parameter budget as a uniform ``ratio`` where it costs least
    (``allocation="uniform"``: every group loses ``ratio``); under a ``budget`` removing at
    most 30%, it spends the budget by each group's refit error on held-out calibration items
    when that is estimated to take two minutes or less (the report's note says which).

    Widths follow the target ``runtime`` ("torch": eager on the model's device, the default;
    "onnxruntime": exported and run on one thread; None: neither measured nor aligned):
    ``round_to="auto"`` keeps each channel group at the multiples that runtime's kernels run
    fastest on this machine (profiled once, cached), ``round_to=1`` allows any width. The
    latency before and after, at the example inputs' shapes, is in the report
    (``measure_latency=False`` skips it); a pruned model that runs slower raises a PruneWarning.

    Calibration batches may have any batch size (a smaller last batch too) and, where the
    forward allows it, other sequence lengths than the example; a ``DataLoader`` of
    ``(inputs, labels)`` works as it is (items beyond the example's positional inputs are dropped).

    With ``verify=True`` the plan is first held to the exactness oracle on a copy
    of the model (see :func:`graphprune.verify`): the result is in the report, and a
    failure raises RewriteError before the model is touched. The
    oracle checks the plan without compensation, which changes weights on purpose:
    ``report.compensation`` lists each refit layer with its calibration error before/after.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> m, report = graphprune.prune(m, (torch.randn(3, 4),), ratio=0.5)
        >>> m[0].out_features, report.params_after < report.params_before
        (4, True)
    """
    args = args if isinstance(args, tuple) else (args,)
    program = TorchProgram.of(graph, model, args, kwargs) if graph is not None else TorchProgram(model, args, kwargs)
    opts = PruneOptions.of(options, **named_ignore(model, given))
    pruned, report = prune_program(program, opts, plan_, inplace=True)
    return pruned.model, report


def masked_original(dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None) -> Any:
    """Run the original exported program with the plan's channels zeroed everywhere."""
    return dg.program.run_raw((tuple(args), dict(kwargs or {})), masks=keep_masks(dg, plan))


def _arrays(x: Any) -> list[np.ndarray]:
    return [t.detach().double().cpu().numpy() for t in tree_leaves(x)
            if isinstance(t, torch.Tensor)]


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest difference between two model outputs (any nesting of tensors)."""
    return _max_abs_diff(_arrays(a), _arrays(b))


def verify(model: torch.nn.Module, args: tuple, plan: PrunePlan, graph: DependencyGraph | None = None,
           kwargs: dict | None = None, atol: float = 1e-5, trials: int = 2) -> OracleReport:
    """Hold a plan to the oracle without touching ``model``.

    A copy of the (unpruned) model is pruned with the plan's exact groups and
    compared with the masked original, on the example inputs and ``trials``
    random inputs of the same shapes; inexact pruned groups are listed, not
    silently passed.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> x = (torch.randn(3, 4),)
        >>> g = graphprune.trace(m, x)
        >>> plan = graphprune.plan(g, m, ratio=0.5)
        >>> graphprune.verify(m, x, plan, g).passed
        True
    """
    args = args if isinstance(args, tuple) else (args,)
    program = TorchProgram.of(graph, model, args, kwargs) if graph is not None else TorchProgram(model, args, kwargs)
    return run_oracle(program, plan, atol, trials)
