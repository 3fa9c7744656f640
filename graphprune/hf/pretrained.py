"""One call: prune a transformers model and keep it loadable."""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time

import torch

from ..api import torch_models as api
from ..api.recover import recover as distill
from ..api.recover import recover_options
from ..calib.distributed import is_writer, same_on_all
from ..errors import PlanError, RewriteError, warn
from ..graph import DependencyGraph
from ..io.checkpoint_doc import CheckpointDoc, PlanStep, config_dict, module_attention, tensor_spec
from ..options import PruneOptions
from ..planning.memory import available_memory, gib
from ..planning.plan import PrunePlan
from ..util.gc_pause import paused_gc
from ..util.model_copy import model_copy
from .choose import DISTIL_COPIES, load_if_fits, with_distillation
from .generated import generated_batches, mix, start_token
from .inputs import as_batches, example_inputs, prepare
from .stream import stream_prune
from .sync import sync_checked
from .uniform import loadable_heads, warn_unloadable

HF_DEFAULTS = {"ratio": 0.3}
HF_KEYWORDS = ("generated", "recover", "inputs", "out")  # hf.prune's own, beside PruneOptions' fields
META_ATTR = "graphprune_meta"  # where the pruned model remembers how it was made (for save_pruned)


def _whole_call_timed(fn):
    """``report.seconds`` for the whole call: sampled calibration text, the config sync and the distillation
    are part of what a user waits for (the report said 302 s of a 536 s call)."""
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        report = out[1] if isinstance(out, tuple) else out
        report.seconds = time.perf_counter() - t0
        return out
    return timed


@_whole_call_timed
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
    channels for CNNs. With data, the heads are kept where cutting FFN units alone by the same parameter
    count measures better (graphprune/planning/kinds.py; ``allocation="uniform"`` skips it).

    Returns ``(model, report)``; ``report.sync`` says what the config now says and whether
    ``save_pretrained``/``from_pretrained`` round-trip. :func:`graphprune.hf.save_pruned`
    saves the model with its plan, so :func:`graphprune.hf.load_pruned` can rebuild it
    even when layers were pruned unevenly. Pass ``graph`` (traced on the same ``inputs``)
    to skip tracing again.

    Options are the fields of :class:`graphprune.PruneOptions` (here ``ratio`` 0.3 by default), as keyword arguments
    or whole as ``options=``: ``budget={"params": 0.6}`` (or ``"macs"``) replaces ``ratio`` with a target;
    ``runtime``, ``round_to`` and ``measure_latency`` as in :func:`graphprune.prune`.

    ``generated`` ("auto" by default) adds sequences a causal LM samples itself (hf/generated.py) after
    ``calib``: eight for each sequence ``calib`` holds, at most 512; they keep the repair from fitting one kind of
    text (docs/llm_pruning.md). ``generated=0`` calibrates on ``calib`` alone; ``generated=N`` takes N.

    ``recover=True`` (on the calibration batches, generated ones included) or ``dict(time_s=600, ...)`` (any
    :func:`graphprune.recover` keyword) then distils the result from a copy of the original (docs/llm_pruning.md).

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
    given.update({"ratio": ratio} if ratio is not None else {})
    generated = _check_generated(given.pop("generated", "auto"))
    recover = recover_options(given.pop("recover", None), None, need_data=False)  # refused before any work
    if isinstance(model, (str, os.PathLike)) and out is not None:
        return _streamed(model, out, options, generated, given, recover)
    if isinstance(model, (str, os.PathLike)):  # in memory where the estimate fits, else refused: pass out=
        model = load_if_fits(model, PruneOptions.of(options, defaults=HF_DEFAULTS, extra=HF_KEYWORDS, **given), inputs,
                             int(recover is not None))
    opts = _checked_options(model, options, given)
    _check_recover(model, recover, opts.max_memory)
    opts, head_note = loadable_heads(model, opts)
    prepare(model)
    generated = _resolve_generated(model, opts, generated)
    opts, gen_note = _with_generated(model, opts, generated) if generated else (opts, None)
    calib = [dict(b) for b in opts.calib] if opts.calib is not None else None
    if inputs is None:
        inputs = dict(calib[0]) if calib else example_inputs(model)
    inputs = as_batches(model, [inputs], "example input")[0]
    loss_fn = opts.loss_fn
    if loss_fn is None and calib is not None and _is_causal_lm(model):
        loss_fn = causal_lm_loss
    opts = opts.replace(calib=_little_text(model, calib), loss_fn=loss_fn)
    recover = recover_options(recover, calib)  # the data: the batches the prune calibrated on, sampled ones too
    teacher = model_copy(model) if recover is not None else None  # the original, to distil from
    original = copy.deepcopy(model.config)
    graph = graph or api.trace(model, (), inputs)
    model, report = _prune_or_keep_whole(model, inputs, graph, plan_, opts)
    report.notes += [n for n in (head_note, gen_note) if n]
    _sync_and_record(model, graph, report, opts, original, inputs)
    _distil(model, teacher, recover, report)
    return model, report


def _checked_options(model, options, given: dict) -> PruneOptions:
    """The options, with modules in ``ignore`` named and the calibration batches as keyword dicts."""
    opts = PruneOptions.of(options, defaults=HF_DEFAULTS, extra=HF_KEYWORDS, **api.named_ignore(model, given))
    return opts.replace(calib=as_batches(model, opts.calib)) if opts.calib is not None else opts


def _prune_or_keep_whole(model, inputs: dict, graph, plan_, opts: PruneOptions):
    """The default call (no targets, ignore or plan of the user's) on a forward that spells a pruned size
    the rewrite cannot reach in some layers (Phi-3 splits its fused q/k/v at config.num_attention_heads *
    head_dim) prunes again with those layers whole, and says so; the rewrite left the model as it was."""
    try:
        return api.prune(model, (), inputs, graph=graph, plan_=plan_, options=opts)
    except RewriteError as exc:
        if not exc.modules or plan_ is not None or opts.targets is not None or opts.ignore:
            raise
        # every layer of the same class spells the same sizes, whichever of them this plan happened to cut
        classes = {type(model.get_submodule(m)) for m in exc.modules}
        whole = tuple(n for n, mod in model.named_modules() if type(mod) in classes)
        model, report = api.prune(model, (), inputs, graph=graph, options=opts.replace(ignore=whole))
        report.notes.append(f"kept the {len(whole)} {'/'.join(sorted(c.__name__ for c in classes))} layer(s) whole: "
                            f"their forward spells sizes the rewrite cannot change ({str(exc).split(': ', 2)[-1][:240]}"
                            "...); pass ignore= yourself to choose")
        return model, report


def _check_recover(model: torch.nn.Module, recover: dict | None, max_memory: int | None) -> None:
    """recover= before the prune: the teacher copy and the training's buffers must fit beside the model
    (a deep copy past the memory is a kernel kill), and the weights must be trainable in their dtype
    (AdamW's small steps on bfloat16 or float16 weights mostly round away)."""
    if recover is None:
        return
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    need, limit = (2 + DISTIL_COPIES) * weights, max_memory if max_memory is not None else available_memory()
    if limit is not None and need > limit:
        raise PlanError(f"recover= needs about {gib(need)} (the model, its original as the teacher and the training's "
                        f"gradients, AdamW moments and best weights), more than {gib(limit)} "
                        f"{'(max_memory)' if max_memory is not None else 'available'}: drop recover= and distil "
                        "the saved pruned model on a machine with more memory, or raise max_memory")
    half = {p.dtype for p in model.parameters()} & {torch.float16, torch.bfloat16}
    if half:
        raise PlanError(f"recover= would train {type(model).__name__}'s {sorted(map(str, half))[0]} weights, where most "
                        "optimiser steps round away: load it in float32 (from_pretrained(..., dtype=torch.float32)), "
                        "or drop recover= and call graphprune.recover on a float32 copy of the pruned model")


def _distil(model, teacher, recover: dict | None, report) -> None:
    """``recover=``: the pruned model distilled from the original, the result in the report (whose memory
    estimate counts the teacher copy and the training's buffers, as the CLI's does)."""
    if recover is not None:
        if report.memory is not None and report.memory.estimate is not None:
            report.memory = dataclasses.replace(report.memory, estimate=with_distillation(report.memory.estimate, 1))
        report.recovery = distill(model, teacher, **recover)
        report.notes.append(report.recovery.summary())


def _sync_and_record(model, graph, report, opts: PruneOptions, original, inputs: dict) -> None:
    """Bring the config in line with the pruned widths and attach the plan history that
    :func:`graphprune.hf.load_pruned` rebuilds the model from."""
    report.sync = sync_checked(model, graph, report.plan, inputs)
    if report.sync.taken_back:
        report.notes.append(f"config sync: {report.sync.taken_back}")
    added = sorted(report.compensation.bias_modules) if report.compensation is not None else []
    if added and report.sync is not None and report.sync.loadable:
        report.sync.loadable = False
        report.sync.reason = f"compensation gave {len(added)} layer(s) a bias the config cannot declare"
    warn_unloadable(opts, report.sync)
    before = getattr(model, META_ATTR, None)  # pruned before (an iterative schedule): keep the history
    setattr(model, META_ATTR, CheckpointDoc(
        (before.history if before else []) + [PlanStep(report.plan, added)], architecture=type(model).__name__,
        original_config=before.original_config if before else config_dict(original), kwargs=_input_spec(inputs),
        attention=before.attention if before else module_attention(model)))


# generated="auto": eight of the model's own sequences for each one given, at most 512. Measured on SmolLM2
# calibrated on news (docs/llm_pruning.md): one for one took the worst other-text ratio from 2.63x to 1.73x
# at 20% and 19.4x to 6.9x at 50%; three for one to 1.54x and 4.79x (OBS ridge 1e-3), eight for one to
# 1.46x and 4.31x, for 1.29x -> 1.36x at 20% and 3.46x -> 4.02x at 50% on news itself; about 3.5 minutes
# more of sampling there (2 CPU threads).
AUTO_FACTOR, AUTO_GENERATED = 8, 512


def _streamed(folder, out, options: PruneOptions | None, generated: int, given: dict, recover):
    """A checkpoint folder pruned block by block into ``out`` (hf/stream.py), after its refusals."""
    if recover is not None:
        raise PlanError("recover= distils the whole pruned model from the whole original, which a streamed prune "
                        "(out=) never holds: load the model and prune it in memory, or drop recover= and call "
                        "graphprune.recover on the model graphprune.hf.load_pruned(out) returns")
    if generated not in (0, "auto"):
        raise PlanError("generated= samples text from the whole model, which a streamed prune (out=) never holds: "
                        "load the model and prune it in memory, or drop generated=")
    if given.get("uniform") or (options is not None and options.uniform):
        raise PlanError("uniform=True is not available for a streamed prune (out=) yet: load the model and "
                        "prune it in memory, or drop uniform=True (graphprune.hf.load_pruned reloads the output)")
    return stream_prune(folder, out, given.pop("calib", None) or (options.calib if options else None),
                        options=options, **given)


def _check_generated(n) -> int | str:
    if n != "auto" and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise PlanError(f"generated must be a whole number of sequences >= 0 (0: none) or 'auto', not {n!r}")
    return n


TEXT_INPUTS = {"input_ids", "attention_mask"}  # what a sampled sequence has


def _resolve_generated(model: torch.nn.Module, opts: PruneOptions, n: int | str) -> int:
    """"auto": a causal LM calibrated on text gets AUTO_FACTOR sequences of its own for each one it was
    given, up to AUTO_GENERATED; anything else none."""
    other = sorted({k for b in opts.calib or () if isinstance(b, dict) for k in b} - TEXT_INPUTS)
    if n != "auto":
        if n and other:
            raise PlanError(f"generated={n}: sampled text has only token ids, and the calibration batches also carry "
                            f"{', '.join(map(repr, other))}, which the traced model takes: pass generated=0")
        return n
    if not opts.calib or not _is_causal_lm(model) or other:  # a multimodal model's images: no text stands in for them
        return 0
    given = sum(int(b["input_ids"].shape[0]) for b in opts.calib if isinstance(b, dict) and "input_ids" in b)
    return min(AUTO_GENERATED, AUTO_FACTOR * given)


def _with_generated(model: torch.nn.Module, opts: PruneOptions, n: int) -> tuple[PruneOptions, str]:
    """``opts`` with ``n`` sequences the model writes itself (hf/generated.py) after the
    given batches, as long as the longest given sequence and in batches of the first one's size."""
    if not _is_causal_lm(model):
        raise PlanError(f"generated= samples text from a causal language model; {type(model).__name__} is not one: "
                        "drop generated= and pass calib=")
    given = [dict(b) for b in opts.calib] if opts.calib is not None else []
    longest = getattr(model.config, "max_position_embeddings", None) or 128
    seq_len = max((int(b["input_ids"].shape[-1]) for b in given if "input_ids" in b), default=min(128, longest))
    batch = int(given[0]["input_ids"].shape[0]) if given and "input_ids" in given[0] else 8
    try:
        start, whence = start_token(model), "its BOS token (EOS where it names none)"
    except PlanError:  # a config without BOS or EOS (a tiny test config): the given text's first token starts it
        if not given or "input_ids" not in given[0]:
            raise
        ids, mask = given[0]["input_ids"][0], given[0].get("attention_mask")
        real = ids[mask[0].bool()] if mask is not None and bool(mask[0].any()) else ids  # left padding is no text
        start, whence = int(real[0]), "the given text's first token (the config names no BOS its vocabulary holds)"
    # sampled once, on rank 0, and sent to every rank: the ranks calibrate on the same text
    extra = same_on_all(generated_batches(model, n=n, seq_len=seq_len, batch_size=batch, start=start)
                        if is_writer() else None)
    note = (f"calibration: {n} sequences of {seq_len} tokens the model wrote itself (from {whence}, temperature "
            f"1, seed 0)" + (f", after the {len(given)} batch(es) given" if given else ", no text given"))
    return opts.replace(calib=mix(given, extra)), note


LEAST_TOKENS = 4096  # 32 sequences of 128 tokens, the calibration docs/llm_pruning.md measured with


def _little_text(model, calib: list | None) -> list | None:
    """``calib``, with a PruneWarning where a causal LM is calibrated (and repaired) on fewer real tokens than
    :data:`LEAST_TOKENS`: SmolLM2 at 50% from 512 tokens came out at 77x dense perplexity without a word."""
    if calib and _is_causal_lm(model):
        tokens = sum(int(b["attention_mask"].sum()) if isinstance(b.get("attention_mask"), torch.Tensor)
                     else int(b["input_ids"].numel()) for b in calib if isinstance(b.get("input_ids"), torch.Tensor))
        if tokens < LEAST_TOKENS:
            warn(f"calibration holds {tokens} real tokens: an LLM's ranking and repairs are fit to them, and "
                 f"under about {LEAST_TOKENS} (32 sequences of 128, docs/llm_pruning.md) they fit that text more than "
                 "the model; give more calib= text, or generated= sequences")
    return calib


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
    """Shapes and dtypes; small integer inputs (token ids, masks) and plain values that JSON holds (a list of image
    sizes) verbatim (graphprune.io.checkpoint_doc)."""
    return {k: tensor_spec(v) for k, v in inputs.items() if isinstance(v, torch.Tensor) or _plain(v)}


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(_plain(x) for x in v))
