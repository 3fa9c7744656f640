"""In memory or block by block: a checkpoint folder's in-memory prune estimated before any weight is read.

The model is built on the meta device from the folder's config (:func:`graphprune.hf.stream.build_on_meta`)
in the dtype ``from_pretrained`` loads it in (the checkpoint's), traced on the first calibration batch
(or example inputs), and its peak estimated by the same parts the pipeline checks before calibrating
(graphprune/planning/memory.py): the weights, their float32 copies where not float32, the calibration
statistics, one batch's activations, the solver's buffers and the refit's updates, the rewritten weights.
The estimate is compared with ``max_memory`` or, where none is given, what the system has available
(:func:`graphprune.planning.memory.available_memory`). Nothing here reads a tensor of the checkpoint
beyond the few needed to tell its dtype.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..api import torch_models as api
from ..errors import GraphpruneError, PlanError, TraceError
from ..io.checkpoint_doc import PLAN_FILE
from ..io.lazy_checkpoint import LazyCheckpoint
from ..options import PruneOptions, resolve_importance
from ..pipeline import prune_memory
from ..planning.depth import split_targets
from ..planning.memory import MemoryEstimate, MemoryPart, available_memory, gib
from ..planning.targets import select_groups
from .inputs import example_inputs, prepare
from .stream import build_on_meta

DISTIL_COPIES = 4  # what recover() holds beside the weights, in weight-sized buffers


@dataclass(frozen=True)
class Fit:
    """The in-memory prune's estimated peak against the memory it may use (``limit`` None: unknown)."""

    estimate: MemoryEstimate
    limit: int | None

    @property
    def fits(self) -> bool:
        return self.limit is None or self.estimate.total <= self.limit

    def __str__(self) -> str:
        limit = "no limit known" if self.limit is None else gib(self.limit)
        return f"in memory, about {gib(self.estimate.total)} at the peak ({self.estimate.peak_phase}) for {limit}"


def checkpoint_dtype(folder: str | os.PathLike, config) -> torch.dtype:
    """The dtype ``from_pretrained`` gives the weights: the safetensors' own, else the config's, else float32."""
    try:
        return LazyCheckpoint(folder).dtype()
    except GraphpruneError:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        return dtype if isinstance(dtype, torch.dtype) else torch.float32


def meta_model(folder: str | os.PathLike) -> torch.nn.Module:
    """The folder's model on the meta device, in the dtype it would load in: nothing allocated."""
    if (Path(folder) / PLAN_FILE).is_file():
        raise PlanError(f"'{folder}' is a folder graphprune wrote ({PLAN_FILE}): load it with "
                        "graphprune.hf.load_pruned(folder) and prune the model it returns")
    model, config = build_on_meta(folder)
    return model.to(checkpoint_dtype(folder, config))


def estimate_in_memory(model: torch.nn.Module, opts: PruneOptions, inputs: dict | None = None,
                       copies: int = 0) -> MemoryEstimate:
    """The peak of ``graphprune.hf.prune(model, options=opts)`` for ``model`` on meta, estimated as the
    pipeline does before calibrating (pipeline.py ``prune_memory``); ``copies``: whole extra copies of the
    weights the caller holds (the CLI's --recover-steps keeps the original as the teacher)."""
    calib = list(opts.calib) if opts.calib is not None else None
    inputs = dict(inputs) if inputs is not None else (dict(calib[0]) if calib else example_inputs(model))
    dg = api.trace(prepare(model), (), inputs)
    _, targets = split_targets(opts.targets)
    groups = select_groups(dg, opts.roles, opts.ignore, targets) if targets != () else []
    est = prune_memory(dg, groups, opts.replace(calib=calib), calib, resolve_importance(opts.replace(calib=calib)))
    return with_distillation(est, copies)


def with_distillation(est: MemoryEstimate, copies: int) -> MemoryEstimate:
    """``est`` with ``copies`` teacher copies of the weights and the distillation's buffers after the prune
    (counted with the rewrite's, on the safe side); ``est`` itself where ``copies`` is 0."""
    if not copies:
        return est
    weights = est.part("weights")
    return MemoryEstimate(est.parts + (
        MemoryPart("teacher copy", copies * weights, "the original kept to distil from (--recover-steps, recover=)",
                   ("calibrate", "solve", "apply")),
        MemoryPart("distillation", DISTIL_COPIES * weights, "the training's gradients, two AdamW moments and "
                   "the best weights' copy, at most the original's size each", ("apply",))))


def in_memory_fit(model: torch.nn.Module, opts: PruneOptions, inputs: dict | None = None, copies: int = 0) -> Fit:
    """:func:`estimate_in_memory` against ``opts.max_memory`` or, where none, the memory available now."""
    est = estimate_in_memory(model, opts, inputs, copies)
    return Fit(est, opts.max_memory if opts.max_memory is not None else available_memory())


def load_folder(folder: str | os.PathLike) -> torch.nn.Module:
    """The folder's model, loaded whole by transformers (offline) with the class its config names."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), transformers.AutoModel)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise PlanError(f"transformers cannot load '{folder}' ({cls.__name__}): {str(exc).splitlines()[0]}") from exc
    return prepare(model)


def load_if_fits(folder: str | os.PathLike, opts: PruneOptions, inputs: dict | None = None,
                 copies: int = 0) -> torch.nn.Module:
    """``graphprune.hf.prune(folder)`` without ``out=``: the model loaded whole when the in-memory prune's
    estimate fits; otherwise a PlanError, before any weight is read, that says to stream it with ``out=``.
    ``copies``: whole copies of the weights kept beside it (``recover=`` keeps the original as the teacher).
    A forward that reads tensor data (DBRX's expert loop) cannot run on meta: then the weights alone must fit,
    and the estimate is made on the loaded model, which is let go again where the prune would not fit."""
    meta = meta_model(folder)
    try:
        fit = in_memory_fit(meta, opts, inputs, copies)
    except TraceError as exc:
        limit = opts.max_memory if opts.max_memory is not None else available_memory()
        weights = sum(t.numel() * t.element_size() for t in list(meta.parameters()) + list(meta.buffers()))
        if limit is not None and weights > limit:
            raise PlanError(f"'{folder}' holds {gib(weights)} of weights, more than {_limit_name(opts)} "
                            f"({gib(limit)}), and its forward cannot be estimated on the meta device "
                            f"({str(exc).splitlines()[0]}). Pass out='pruned/' (and calib=) to prune it block by block "
                            "into a new folder, or a larger max_memory") from exc
        model = load_folder(folder)
        fit = in_memory_fit(model, opts, inputs, copies)
        if not fit.fits:
            del model
        _refuse_unless_fits(folder, fit, opts)
        return model
    _refuse_unless_fits(folder, fit, opts)
    return load_folder(folder)


def _limit_name(opts: PruneOptions) -> str:
    return "max_memory" if opts.max_memory is not None else "the memory available"


def _refuse_unless_fits(folder, fit: Fit, opts: PruneOptions) -> None:
    if not fit.fits:
        est = fit.estimate
        raise PlanError(f"pruning '{folder}' in memory needs about {gib(est.total)} at its peak ({est.peak_phase}), "
                        f"more than {_limit_name(opts)} ({gib(fit.limit)}); the largest part is {est.largest.name} "
                        f"({gib(est.largest.bytes)}). Pass out='pruned/' (and calib=) to prune it block by block in "
                        f"bounded memory into a new folder (graphprune.hf.load_pruned reloads it), or a larger "
                        f"max_memory.\n{est}")
