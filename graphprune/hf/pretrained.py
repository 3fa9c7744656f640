"""One call: prune a transformers model and keep it loadable."""
from __future__ import annotations

import copy
from typing import Iterable

import torch

from ..api import torch_models as api
from ..graph import DependencyGraph
from ..io.module_checkpoint import tensor_spec
from ..planning.plan import PrunePlan
from ..util.gc_pause import paused_gc
from .inputs import example_inputs, prepare
from .sync import sync_config

META_ATTR = "graphprune_meta"  # where the pruned model remembers how it was made (for save_pruned)


@paused_gc
def prune(model: torch.nn.Module, inputs: dict | None = None, ratio: float = 0.3,
          targets: Iterable[str] | str | None = None, importance: str = "auto", round_to: int | str = "auto",
          ignore: Iterable[str] = (), verify: bool = False, atol: float = 1e-5, plan_: PrunePlan | None = None,
          ratios=None, graph: DependencyGraph | None = None, calib=None, compensate: bool | str | None = None,
          loss_fn=None, add_bias: bool = False, allocation: str = "auto", budget=None, max_ratio=None,
          runtime: str | None = "auto", measure_latency: bool = True):
    """Prune a transformers model in place, then sync its module attributes and config.

    ``targets`` picks what goes: "heads", "ffn", "hidden", "query_heads", "head_dim", ...;
    by default whole heads and FFN units for models with attention (the hidden size stays),
    channels for CNNs.

    Returns ``(model, report)``; ``report.sync`` says what the config now says and whether
    ``save_pretrained``/``from_pretrained`` round-trip. :func:`graphprune.hf.save_pruned`
    saves the model with its plan, so :func:`graphprune.hf.load_pruned` can rebuild it
    even when layers were pruned unevenly. Pass ``graph`` (traced on the same ``inputs``)
    to skip tracing again.

    ``budget={"params": 0.6}`` (or ``"macs"``) replaces ``ratio`` with a target; ``runtime``,
    ``round_to`` and ``measure_latency`` as in :func:`graphprune.prune`.

    ``calib``: keyword-input batches (``{"input_ids": ..., "attention_mask": ...}``) of any
    batch size and length (padding honoured by the attention mask); channels are then ranked from data and the layers that lose inputs are
    refit (see :func:`graphprune.prune`). The first batch is the tracing input unless
    ``inputs`` is given. Loss-based criteria (taylor, hessian) use the causal-LM loss on
    ``input_ids`` when the model has an LM head and no ``loss_fn`` is given.

    Example:
        >>> model, report = graphprune.hf.prune(model, ratio=0.25, targets=("heads", "ffn"))  # doctest: +SKIP
        >>> print(report.sync)                                                              # doctest: +SKIP
    """
    prepare(model)
    calib = [dict(b) for b in calib] if calib is not None else None
    if inputs is None:
        inputs = dict(calib[0]) if calib else example_inputs(model)
    inputs = dict(inputs)
    if loss_fn is None and calib is not None and _is_causal_lm(model):
        loss_fn = causal_lm_loss
    original = copy.deepcopy(model.config)
    graph = graph or api.trace(model, (), inputs)
    model, report = api.prune(model, (), inputs, ratio=ratio, importance=importance, round_to=round_to,
                              ignore=ignore, graph=graph, plan_=plan_, verify=verify, atol=atol, targets=targets,
                              calib=calib, compensate=compensate, loss_fn=loss_fn, add_bias=add_bias,
                              ratios=ratios, allocation=allocation, budget=budget, max_ratio=max_ratio,
                              runtime=runtime, measure_latency=measure_latency)
    plan = report.plan
    report.sync = sync_config(model, graph, plan)
    added = sorted(report.compensation.bias_modules) if report.compensation is not None else []
    if added and report.sync is not None and report.sync.loadable:
        report.sync.loadable = False
        report.sync.reason = f"compensation gave {len(added)} layer(s) a bias the config cannot declare"
    before = getattr(model, META_ATTR, None)  # pruned before (an iterative schedule): keep the history
    history = list(before.get("history") or [{"plan": before["plan"], "added_biases": before.get("added_biases", [])}]
                   ) if before else []
    setattr(model, META_ATTR, {"original_config": before["original_config"] if before else original.to_dict(),
                               "plan": plan.to_json(), "history": history + [{"plan": plan.to_json(), "added_biases": added}],
                               "inputs": _input_spec(inputs), "architecture": type(model).__name__,
                               "added_biases": added})
    return model, report


def _is_causal_lm(model: torch.nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def causal_lm_loss(output, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM's logits on the batch's input_ids (masked
    positions ignored): the loss for taylor/hessian when the user gives none."""
    logits = output.logits if hasattr(output, "logits") else output[0]
    ids = batch["input_ids"]
    target = ids[:, 1:].clone()
    if "attention_mask" in batch:
        target[batch["attention_mask"][:, 1:] == 0] = -100
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             target.reshape(-1), ignore_index=-100)


causal_lm_loss.accepts_tensors = True  # the masked runs of depth pruning pass (logits,) as the output


def _input_spec(inputs: dict) -> dict:
    """Shapes and dtypes; small integer inputs (token ids, masks) verbatim (graphprune.io.module_checkpoint)."""
    return {k: tensor_spec(v) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
