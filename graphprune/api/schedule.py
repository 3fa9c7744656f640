"""Iterative pruning: reach a budget in several steps, with the user's fine-tuning between them.

Each step prunes the model the previous step (and the callback) left, toward an intermediate
target on a geometric schedule: after step k of n the model keeps ``b ** (k / n)`` of the
original MACs or parameters (``b`` the final fraction), so every step removes the same share of
what is left. Each step traces the model again: the widths changed, and so may the weights that
rank the channels. Transformers models go through :func:`graphprune.hf.prune`, which records
every step's plan, so :func:`graphprune.load_pruned` rebuilds the final model. With ``recover=``,
each step's model is distilled from the original (:func:`graphprune.recover`) before the next.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..errors import PlanError
from ..metrics import count_macs, count_params
from ..options import PruneOptions
from ..planning.budget import parse_budget
from ..planning.plan import check_ratio
from ..util.model_copy import model_copy
from .recover import recover as distill
from .recover import recover_options
from .torch_models import prune, trace


def _final(original: Mapping[str, int], budget: Mapping[str, float]) -> dict[str, int]:
    """The final budget as absolute counts of the original model."""

    if "latency_ms" in budget:
        raise PlanError("an iterative schedule takes macs= / params= budgets (a latency budget is searched by "
                        "measuring one model: use graphprune.prune with budget={'latency_ms': ...})")
    return parse_budget(budget, original)


def prune_iterative(model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None, *,
                    budget: Mapping[str, float] | None = None, ratio: float | None = None, steps: int = 3,
                    callback: Callable[[torch.nn.Module, int, object], None] | None = None,
                    recover: bool | Mapping[str, Any] | None = None, **options):
    """Prune ``model`` in ``steps`` steps toward ``budget`` (``{"macs": 0.5}``...) or a final
    per-group ``ratio``; ``callback(model, step, report)`` runs after each step (fine-tune
    there). Returns ``(model, [report per step])``. ``options`` go to each step's prune
    (importance, targets, allocation, round_to, calib, ...).

    ``recover=dict(data=batches, steps=200, ...)`` (keyword arguments of
    :func:`graphprune.recover`; ``recover=True`` trains on ``calib``) distills each step's
    model from a copy of the original taken before step 1, before the callback; the
    :class:`~graphprune.api.recover_result.RecoverResult` is ``report.recovery`` (and a line in its notes).

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)).eval()
        >>> m, reports = graphprune.prune_iterative(m, (torch.randn(4, 8),), budget={"params": 0.5}, steps=2)
        >>> [r.params_after for r in reports] == sorted((r.params_after for r in reports), reverse=True)
        True
    """
    if (budget is None) == (ratio is None):
        raise PlanError("give prune_iterative either budget= (the final target) or ratio= (the final per-group ratio)")
    if not isinstance(steps, int) or steps < 1:
        raise PlanError(f"steps must be a positive integer, got {steps!r}")
    opts = PruneOptions.of(**options)  # every option checked before the first step
    args = args if isinstance(args, tuple) else (args,)
    hf = hasattr(model, "config") and hasattr(model, "save_pretrained")
    if hf:  # what hf.prune does before it traces, so the first step can reuse this graph
        from ..hf.inputs import example_inputs, prepare

        prepare(model)
        calib = opts.calib
        kwargs = dict(kwargs) if kwargs else dict(calib[0]) if calib else example_inputs(model)
    if budget is None:
        check_ratio(ratio)
    recover_opts = recover_options(recover, opts.calib)
    teacher = model_copy(model) if recover_opts is not None else None  # the original, for every step
    graph = trace(model, args, kwargs)  # the first step prunes this very graph
    original = {"macs": count_macs(graph.ir), "params": count_params(graph.ir)}
    final = _final(original, budget) if budget is not None else {}
    reports = []
    for k in range(1, steps + 1):
        if budget is not None:  # keep (final / original) ** (k / steps) of the original after step k
            now = ({"macs": reports[-1].macs_after, "params": reports[-1].params_after} if reports else original)
            plan_args = {"budget": {key: min(now[key], max(2, int(round(original[key] * (t / original[key]) **
                                                                    (k / steps)))))
                                    for key, t in final.items()}}  # a step ahead of schedule prunes nothing
        else:  # the same share of each group's remaining width every step: (1 - r) ** steps = 1 - ratio
            plan_args = {"ratio": 1 - (1 - ratio) ** (1 / steps)}
        if hf:
            from ..hf import prune as hf_prune

            model, report = hf_prune(model, kwargs, graph=graph, options=opts.replace(**plan_args))
        else:
            model, report = prune(model, args, kwargs, graph=graph, options=opts.replace(**plan_args))
        graph = None  # the model changed: later steps trace it again
        reports.append(report)
        if recover_opts is not None:

            report.recovery = distill(model, teacher, **recover_opts)
            report.notes.append(report.recovery.summary())
        if callback is not None:
            callback(model, k, report)
    return model, reports
