"""Iterative pruning: reach a budget in several steps, with the user's fine-tuning between them.

Each step prunes the model the previous step (and the callback) left, toward an intermediate
target on a geometric schedule: after step k of n the model keeps ``b ** (k / n)`` of the
original MACs or parameters (``b`` the final fraction), so every step removes the same share of
what is left. Each step traces the model again: the widths changed, and so may the weights that
rank the channels. Transformers models go through :func:`graphprune.hf.prune`, which records
every step's plan, so :func:`graphprune.load_pruned` rebuilds the final model.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from .errors import PlanError
from .planner import check_ratio


def _original_and_final(model, args, kwargs, budget: Mapping[str, float]) -> tuple[dict, dict]:
    """The original counts and the final budget as absolute counts of the original model."""
    from .api import trace
    from .budget import parse_budget
    from .metrics import count_macs, count_params

    if "latency_ms" in budget:
        raise PlanError("an iterative schedule takes macs= / params= budgets (a latency budget is searched by "
                        "measuring one model: use graphprune.prune with budget={'latency_ms': ...})")
    g = trace(model, args, kwargs)
    original = {"macs": count_macs(g.ir), "params": count_params(g.ir)}
    return original, parse_budget(budget, original)


def prune_iterative(model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None, *,
                    budget: Mapping[str, float] | None = None, ratio: float | None = None, steps: int = 3,
                    callback: Callable[[torch.nn.Module, int, object], None] | None = None, **options):
    """Prune ``model`` in ``steps`` steps toward ``budget`` (``{"macs": 0.5}``...) or a final
    per-group ``ratio``; ``callback(model, step, report)`` runs after each step (fine-tune
    there). Returns ``(model, [report per step])``. ``options`` go to each step's prune
    (importance, targets, allocation, round_to, calib, ...).

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
    args = args if isinstance(args, tuple) else (args,)
    hf = hasattr(model, "config") and hasattr(model, "save_pretrained")
    if budget is not None:
        original, final = _original_and_final(model, args, kwargs, budget)
    else:
        check_ratio(ratio)
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
            from .hf import prune as hf_prune

            model, report = hf_prune(model, dict(kwargs or {}) or None, **plan_args, **options)
        else:
            from .api import prune

            model, report = prune(model, args, kwargs, **plan_args, **options)
        reports.append(report)
        if callback is not None:
            callback(model, k, report)
    return model, reports
