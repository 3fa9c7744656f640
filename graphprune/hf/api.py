"""One call: prune a transformers model and keep it loadable."""
from __future__ import annotations

import copy
from typing import Iterable

import torch

from .. import api
from ..graph import DependencyGraph
from ..planner import PrunePlan
from .inputs import example_inputs, prepare
from .sync import sync_config

META_ATTR = "graphprune_meta"  # where the pruned model remembers how it was made (for save_pruned)


def prune(model: torch.nn.Module, inputs: dict | None = None, ratio: float = 0.3,
          targets: Iterable[str] | str | None = None, importance: str = "l2", round_to: int = 1,
          ignore: Iterable[str] = (), verify: bool = False, atol: float = 1e-5, plan_: PrunePlan | None = None,
          ratios=None, graph: DependencyGraph | None = None):
    """Prune a transformers model in place, then sync its module attributes and config.

    ``targets`` picks what goes: "heads", "ffn", "hidden", "query_heads", "head_dim", ...;
    by default whole heads for models with attention, channels for CNNs.

    Returns ``(model, report)``; ``report.sync`` says what the config now says and whether
    ``save_pretrained``/``from_pretrained`` round-trip. :func:`graphprune.hf.save_pruned`
    saves the model with its plan, so :func:`graphprune.hf.load_pruned` can rebuild it
    even when layers were pruned unevenly. Pass ``graph`` (traced on the same ``inputs``)
    to skip tracing again.

    Example:
        >>> model, report = graphprune.hf.prune(model, ratio=0.25, targets=("heads", "ffn"))  # doctest: +SKIP
        >>> print(report.sync)                                                              # doctest: +SKIP
    """
    prepare(model)
    inputs = dict(inputs) if inputs is not None else example_inputs(model)
    original = copy.deepcopy(model.config)
    graph = graph or api.trace(model, (), inputs)
    plan = plan_ or api.plan(graph, model, ratio, importance, round_to, ignore, targets=targets, ratios=ratios)
    model, report = api.prune(model, (), inputs, graph=graph, plan_=plan, verify=verify, atol=atol)
    report.sync = sync_config(model, graph, plan)
    setattr(model, META_ATTR, {"original_config": original.to_dict(), "plan": plan.to_json(),
                               "inputs": _input_spec(inputs), "architecture": type(model).__name__})
    return model, report


def _input_spec(inputs: dict) -> dict:
    """Shapes and dtypes; small integer inputs (token ids, masks) verbatim, so a reload traces
    the same code paths."""
    spec = {}
    for k, v in inputs.items():
        if not isinstance(v, torch.Tensor):
            continue
        item = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        if not v.is_floating_point() and v.numel() <= 4096:
            item["values"] = v.flatten().tolist()
        spec[k] = item
    return spec
