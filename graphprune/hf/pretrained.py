"""One call: prune a transformers model and keep it loadable."""
from __future__ import annotations

import copy
import os

import torch

from ..api import torch_models as api
from ..errors import PlanError
from ..graph import DependencyGraph
from ..io.checkpoint_doc import CheckpointDoc, PlanStep, tensor_spec
from ..options import PruneOptions
from ..planning.plan import PrunePlan
from ..util.gc_pause import paused_gc
from .choose import load_if_fits
from .inputs import example_inputs, prepare
from .stream import stream_prune
from .sync import sync_config
from .uniform import loadable_heads, warn_unloadable

HF_DEFAULTS = {"ratio": 0.3}
META_ATTR = "graphprune_meta"  # where the pruned model remembers how it was made (for save_pruned)


@paused_gc
def prune(model: torch.nn.Module | str | os.PathLike, inputs: dict | None = None, ratio: float | None = None, *,
          graph: DependencyGraph | None = None, plan_: PrunePlan | None = None, options: PruneOptions | None = None,
          out: str | os.PathLike | None = None, **given):
    """Prune a transformers model in place, then sync its module attributes and config.

    ``model`` may also be a checkpoint folder (safetensors, any size) with ``out=`` a new folder:
    the model is then pruned block by block, streamed from the shards in bounded memory
    (graphprune/hf/stream.py), written to ``out`` and a :class:`~graphprune.hf.stream.StreamReport`
    returned; :func:`graphprune.hf.load_pruned` reloads it. A folder without ``out=`` is loaded
    and pruned in memory (``(model, report)`` as for a module) when the prune's peak, estimated on
    the meta device before any weight is read (graphprune/hf/choose.py), fits in ``max_memory`` or
    the memory available; otherwise a PlanError says so and to pass ``out=``.

    ``targets`` picks what goes: "heads", "ffn", "hidden", "query_heads", "head_dim", ...;
    by default whole heads and FFN units for models with attention (the hidden size stays),
    channels for CNNs.

    Returns ``(model, report)``; ``report.sync`` says what the config now says and whether
    ``save_pretrained``/``from_pretrained`` round-trip. :func:`graphprune.hf.save_pruned`
    saves the model with its plan, so :func:`graphprune.hf.load_pruned` can rebuild it
    even when layers were pruned unevenly. Pass ``graph`` (traced on the same ``inputs``)
    to skip tracing again.

    Options are the fields of :class:`graphprune.PruneOptions` (here ``ratio`` 0.3 by default),
    as keyword arguments or whole as ``options=``: ``budget={"params": 0.6}`` (or ``"macs"``)
    replaces ``ratio`` with a target; ``runtime``, ``round_to`` and ``measure_latency`` as in
    :func:`graphprune.prune`.

    ``uniform=True`` keeps every layer's head and FFN counts equal (the data still choose which units
    each layer drops), so the output loads with ``from_pretrained`` and in vLLM without graphprune;
    ``report.sync`` says which form was produced and how to load it.

    ``calib``: keyword-input batches (``{"input_ids": ..., "attention_mask": ...}``) of any
    batch size and length (padding honoured by the attention mask); channels are then ranked
    from data and the layers that lose inputs are refit (see :func:`graphprune.prune`). The first
    batch is the tracing input unless ``inputs`` is given. Loss-based criteria (taylor, hessian) use the causal-LM loss on
    ``input_ids`` when the model has an LM head and no ``loss_fn`` is given.

    Example:
        >>> model, report = graphprune.hf.prune(model, ratio=0.25, targets=("heads", "ffn"))  # doctest: +SKIP
        >>> print(report.sync)                                                              # doctest: +SKIP
    """
    if ratio is not None:
        given["ratio"] = ratio
    if isinstance(model, (str, os.PathLike)) and out is not None:
        if given.get("uniform") or (options is not None and options.uniform):
            raise PlanError("uniform=True is not available for a streamed prune (out=) yet: load the model and "
                            "prune it in memory, or drop uniform=True (graphprune.hf.load_pruned reloads the output)")
        return stream_prune(model, out, given.pop("calib", None) or (options.calib if options else None),
                            options=options, **given)
    if isinstance(model, (str, os.PathLike)):  # in memory where the estimate fits, else refused: pass out=
        model = load_if_fits(model, PruneOptions.of(options, defaults=HF_DEFAULTS, **given), inputs)
    opts = PruneOptions.of(options, defaults=HF_DEFAULTS, **given)
    opts, head_note = loadable_heads(model, opts)
    prepare(model)
    calib = [dict(b) for b in opts.calib] if opts.calib is not None else None
    if inputs is None:
        inputs = dict(calib[0]) if calib else example_inputs(model)
    inputs = dict(inputs)
    loss_fn = opts.loss_fn
    if loss_fn is None and calib is not None and _is_causal_lm(model):
        loss_fn = causal_lm_loss
    opts = opts.replace(calib=calib, loss_fn=loss_fn)
    original = copy.deepcopy(model.config)
    graph = graph or api.trace(model, (), inputs)
    model, report = api.prune(model, (), inputs, graph=graph, plan_=plan_, options=opts)
    plan = report.plan
    if head_note:
        report.notes.append(head_note)
    report.sync = sync_config(model, graph, plan)
    added = sorted(report.compensation.bias_modules) if report.compensation is not None else []
    if added and report.sync is not None and report.sync.loadable:
        report.sync.loadable = False
        report.sync.reason = f"compensation gave {len(added)} layer(s) a bias the config cannot declare"
    warn_unloadable(opts, report.sync)
    before = getattr(model, META_ATTR, None)  # pruned before (an iterative schedule): keep the history
    setattr(model, META_ATTR, CheckpointDoc(
        (before.history if before else []) + [PlanStep(plan, added)], architecture=type(model).__name__,
        original_config=before.original_config if before else original.to_dict(), kwargs=_input_spec(inputs)))
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
    """Shapes and dtypes; small integer inputs (token ids, masks) verbatim (graphprune.io.checkpoint_doc)."""
    return {k: tensor_spec(v) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
