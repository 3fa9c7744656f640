"""Layer by layer: prune a transformers model bigger than memory, one repeated block at a time.

The model is built on the meta device from its config; its weights stay in the checkpoint's
memory-mapped shards (io/lazy_checkpoint.py). Only the embeddings (and the small modules that own
computed buffers, such as the rotary tables) are made real, to turn the calibration batches into
the first block's inputs. Then each block in turn is made real in fp32 from the checkpoint, traced
alone, scored, planned, refit and rewritten by the one prune pipeline on the outputs of the
*already-pruned* blocks before it (so errors do not compound), run forward to give the next block's
inputs, written out in the checkpoint's dtype, and dropped. Memory holds one block, its
statistics and the activations: never the whole model.

The output folder is a sharded safetensors checkpoint with the original ``config.json`` and
``graphprune.json`` holding every block's plan (io/checkpoint_doc.py ``layers``);
:func:`load_streamed` rebuilds it on meta, replays each block's plan, and loads the weights,
without ever holding the unpruned model.
"""
from __future__ import annotations

import gc
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..api.torch_models import prune as prune_module
from ..calib import distributed, sites
from ..errors import BudgetWarning, PlanError, warn
from ..frontends.torch_export import tied_aliases
from ..io.checkpoint_doc import FORMAT, PLAN_FILE, TOKENIZER_FILES, CheckpointDoc, PlanStep, config_dict, tensor_spec
from ..io.lazy_checkpoint import LazyCheckpoint, ShardWriter
from ..io.module_checkpoint import replay_on_meta
from ..options import PruneOptions
from ..planning.memory import gib, peak_rss, trim_heap
from ..report.prune_report import PruneReport
from ..util.progress import progress_line
from . import stream_budget
from .converted import ConvertedCheckpoint
from .inputs import prepare

STREAM_DEFAULTS = {"ratio": 0.3, "targets": ("heads", "ffn")}
# the default call's per-block sensitivity allocation goes on while it would cost at most this much more
# time over the remaining blocks (measured on the first), as allocation="auto" bounds it in memory
STREAM_ALLOC_S = 120.0
SOLVE_FLOPS = 2e10  # float operations per second the refit's solves reach on two CPU cores (measured: 20-40 G)
RIDGE_CARRY = 2048  # wider Gram-route sites reuse the ridge cross-validated on the block before (cubic solves)


@dataclass
class StreamReport:
    """What a streamed prune did: one PruneReport per block, sizes before/after, time."""

    layers: dict[str, PruneReport] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0
    path: str = ""
    # the run's peak resident set: each block's prune resets the kernel's high-water mark to measure
    # its own peak, so the peak is read before each reset and kept here
    peak_rss: int = 0
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kept = self.params_after / max(self.params_before, 1)
        lines = [f"streamed prune of {len(self.layers)} block(s): params {self.params_before:,} -> "
                 f"{self.params_after:,} ({kept:.1%}), {self.seconds:.1f} s, peak RSS {gib(self.peak_rss)}, "
                 f"written to {self.path}"]
        for name, r in self.layers.items():
            groups = ", ".join(f"{r.kinds.get(g, 'channel')} {k}/{n}" for g, (k, n) in sorted(r.kept.items()) if k < n)
            oracle = "" if r.oracle is None else f" oracle {r.oracle.verdict}"
            lines.append(f"  {name}: {groups or 'unchanged'}{oracle}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def build_on_meta(folder: str | os.PathLike, config=None):
    """(model on the meta device, config) from a checkpoint folder's config: nothing allocated."""
    import transformers

    config = config or transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise PlanError(f"the config in '{folder}' names no transformers class this version knows ({names}); "
                        "streaming needs config.architectures")
    config.use_cache = False
    with torch.device("meta"):
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    return prepare(model), config


def repeated_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList of same-class blocks holding most of the parameters (decoder or encoder layers)."""
    best, best_n = None, 0
    for path, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 1 and len({type(m) for m in mod}) == 1:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = (path, mod), n
    if best is None:
        raise PlanError(f"{type(model).__name__} has no list of repeated blocks (decoder layers) to stream")
    return best


def _materialise(module: torch.nn.Module, ckpt: LazyCheckpoint, prefix: str, dtype=None) -> None:
    """Give ``module`` (on meta) its weights from the checkpoint, cast to ``dtype`` where given."""
    module.to_empty(device="cpu")
    state = module.state_dict(keep_vars=True)
    for name, t in state.items():
        key = f"{prefix}.{name}" if prefix else name
        if key not in ckpt:
            raise PlanError(f"the checkpoint has no tensor '{key}', which {type(module).__name__} needs")
        value = ckpt.get(key)
        if tuple(value.shape) != tuple(t.shape):
            raise PlanError(f"checkpoint tensor '{key}' has shape {tuple(value.shape)}, the model expects "
                            f"{tuple(t.shape)}")
        with torch.no_grad():
            t.data = value.to(dtype) if dtype is not None and value.is_floating_point() else value


def _computed_buffers(model: torch.nn.Module) -> list[str]:
    """Modules with buffers on meta but no weights of their own (rotary tables): their buffers are
    computed at construction, not stored in the checkpoint."""
    return [path for path, mod in model.named_modules()
            if path and any(b.is_meta for b in mod.buffers(recurse=False)) and not list(mod.parameters(recurse=False))]


def _rebuild(model: torch.nn.Module, config, paths: list[str]) -> None:
    """Build the modules at ``paths`` again on the CPU from the config (see _computed_buffers)."""
    for path in paths:
        mod = model.get_submodule(path)
        try:
            real = type(mod)(config=config)
        except TypeError as exc:
            raise PlanError(f"module '{path}' ({type(mod).__name__}) computes buffers graphprune cannot rebuild "
                            f"without its weights: {exc}") from exc
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, real)


class _Caught(Exception):
    pass


def first_block_inputs(model, blocks, calib: list[dict]) -> list[dict]:
    """Each calibration batch as the first block's keyword inputs (hidden states in fp32)."""
    caught: list[dict] = []

    def hook(module, args, kwargs):
        inputs = dict(kwargs)
        if args:
            inputs["hidden_states"] = args[0]
        keep = {k: v for k, v in inputs.items() if isinstance(v, (torch.Tensor, tuple)) and k != "past_key_values"}
        keep["hidden_states"] = keep["hidden_states"].float()
        if "position_embeddings" in keep:
            keep["position_embeddings"] = tuple(t.float() for t in keep["position_embeddings"])
        caught.append(keep)
        raise _Caught

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calib:
            try:
                with torch.no_grad():
                    model(**batch)
            except _Caught:
                pass
    finally:
        handle.remove()
    return caught


def _output(block, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = block(**inputs)
    return out[0] if isinstance(out, tuple) else out


def stream_prune(folder: str | os.PathLike, out: str | os.PathLike, calib: list[dict], *,
                 options: PruneOptions | None = None, max_shard_bytes: int = 1 << 29, **given) -> StreamReport:
    """Prune the transformers checkpoint in ``folder`` block by block into ``out`` (see the module
    docstring). ``calib``: keyword batches (``{"input_ids": ..., "attention_mask": ...}``). Options
    as :class:`graphprune.PruneOptions` (here heads and FFN units, ratio 0.3, by default), applied
    to each block; a MACs / parameter ``budget`` is the whole model's, met by the blocks alone
    (hf/stream_budget.py)."""
    t0 = time.perf_counter()
    # checked with the calibration it has (compensate="bias" needs it), replaced by each block's inputs
    opts = PruneOptions.of(options, defaults=STREAM_DEFAULTS, **{**given, "calib": calib or None})
    if opts.budget is not None:
        opts = stream_budget.stream_options(opts)
    elif opts.allocation == "global":  # ranked within each block instead, silently (a user's ratio=0.3 run)
        raise PlanError("allocation='global' ranks channels across the whole model, which a streamed prune never "
                        "holds: give allocation='uniform' (or 'sensitivity', within each block), or prune in memory")
    if not calib:
        raise PlanError("a streamed prune calibrates each block on the outputs of the pruned blocks before it: "
                        "pass calib=[{'input_ids': ...}, ...]")
    model, config = build_on_meta(folder)
    ckpt = ConvertedCheckpoint(LazyCheckpoint(folder), model)  # Mixtral's experts stored one by one
    path, blocks = repeated_blocks(model)
    # solved on shapes before anything is written (hf/stream_budget.py): each block gets its share
    spend = stream_budget.solve(model, calib[0], opts, path, ckpt) if opts.budget is not None else None
    _rebuild(model, config, _computed_buffers(model))
    # only what runs before the first block needs weights: the rest stays on meta
    for name, mod in model.named_modules():
        if any(p.is_meta for p in mod.parameters(recurse=False)) and not name.startswith(path + "."):
            if isinstance(mod, torch.nn.Embedding):
                _materialise(mod, ckpt, name)
    inputs = first_block_inputs(model, blocks, [dict(b) for b in calib])
    for mod in model.modules():  # the embeddings served the first block's inputs: dropped (GBs for a 128k vocab)
        if isinstance(mod, torch.nn.Embedding):
            mod.to("meta")
    ckpt.release()
    dtype = ckpt.dtype()
    # under torch.distributed every rank prunes each block on its slice of the batches (the statistics
    # are summed over the ranks, so the plans agree) and rank 0 alone writes
    writer = ShardWriter(out, max_shard_bytes) if distributed.is_writer() else _NoWriter()
    report = StreamReport(path=str(out))
    doc = CheckpointDoc(architecture=type(model).__name__, original_config=config_dict(config), format=FORMAT)
    try:
        for name in ckpt.names():
            if not name.startswith(path + "."):
                t = ckpt.get(name)
                writer.add(name, t)
                report.params_before += t.numel()
                report.params_after += t.numel()
        writer.flush()  # the embeddings (GBs for a large vocabulary) leave memory before the first block
        ckpt.release()
        tokens = sum(x["hidden_states"].shape[:-1].numel() for x in inputs)  # the samples at every site
        opts = _first_options(opts, blocks, report.notes, tokens)
        for i in range(len(blocks)):
            prefix = f"{path}.{i}"
            progress_line(f"block {i + 1}/{len(blocks)}: {prefix}")
            kept = report.params_after
            block_opts = opts.replace(budget=spend.share()) if spend is not None else opts
            inputs = _prune_block(blocks, i, prefix, ckpt, inputs, block_opts, writer, report, doc, dtype)
            if spend is not None:
                spend.record(report.layers[prefix], report.params_after - kept)
            opts = _next_options(opts, report.layers[prefix], len(blocks) - i - 1, report.notes, tokens)
        if spend is not None:
            spend.check(report.params_after)
            report.notes.append(spend.note(opts.allocation))
            short = spend.missed(report.params_after, opts.round_to)
            if short:
                warn(short, BudgetWarning)
                report.notes.append(short)
        doc.layer_inputs = {k: [tensor_spec(t) for t in v] if isinstance(v, tuple) else tensor_spec(v)
                            for k, v in inputs[0].items()}
        side = {"config.json": json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str).encode(),
                PLAN_FILE: json.dumps(doc.to_json(), indent=1, sort_keys=True).encode()}
        side |= {n: (Path(folder) / n).read_bytes() for n in TOKENIZER_FILES if (Path(folder) / n).is_file()}
        writer.close(side)
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - t0
    report.peak_rss = max(report.peak_rss, peak_rss())
    return report


def _first_options(opts: PruneOptions, blocks, notes: list[str], tokens: int) -> PruneOptions:
    """allocation="auto" measures each block's sensitivity with a refit per candidate level (about
    eight); where those solves alone, over every block, would take more than STREAM_ALLOC_S
    (an upper bound from the block's linear layers, kept 80%, each solved on the route calibration
    takes: calib/sites.py rows_route), the stream allocates uniformly."""
    if opts.allocation != "auto" or opts.compensate is False:
        return opts
    flops = 0.0
    for mod in blocks[0].modules():
        if isinstance(mod, torch.nn.Linear):
            n, f, out = 0.8 * mod.in_features, mod.in_features, mod.out_features
            if sites.rows_route(f + 1, tokens):  # the kernel, its solve, and three (N, F) x (F, out) products
                flops += 2 * tokens * tokens * n + tokens ** 3 / 3 + 6 * tokens * f * out
            else:
                flops += n ** 3 / 3 + 2 * n * n * out
    seconds = 8 * flops / SOLVE_FLOPS * len(blocks)
    if seconds <= STREAM_ALLOC_S:
        return opts
    notes.append(f"allocation: uniform; measuring each block's sensitivity would take about {seconds:.0f} s of "
                 f"refits over {len(blocks)} blocks (over {STREAM_ALLOC_S:.0f} s): pass allocation='sensitivity' "
                 "to spend it")
    return opts.replace(allocation="uniform")


def _next_options(opts: PruneOptions, r: PruneReport, left: int, notes: list[str], tokens: int) -> PruneOptions:
    """What the next block is pruned with: the wide sites' ridge strengths this block
    cross-validated (the same module in every block; on the Gram route the cross-validation's
    solves are cubic in the width; on the row-space route, an N x N eigendecomposition, each
    block cross-validates its own), and a uniform allocation once the first block shows that
    measuring every block's sensitivity would take more than STREAM_ALLOC_S."""
    if r.compensation is not None and not isinstance(opts.ridge, (int, float)):  # a number fixes every site
        carried = dict(opts.ridge or {})
        for site in r.compensation.sites:
            f = _features(r, site.weight)
            if site.lam is not None and f > RIDGE_CARRY and not sites.rows_route(f + 1, tokens):
                carried[site.weight.rpartition(".")[0]] = site.lam
        opts = opts.replace(ridge=carried or None)
    a = r.allocation  # a timing: rank 0's decides for every rank, so their plans agree
    if opts.allocation == "auto" and a is not None and distributed.same_on_all(a.seconds * left > STREAM_ALLOC_S):
        notes.append(f"allocation: uniform after the first block; measuring each block's sensitivity took "
                     f"{a.seconds:.0f} s there, {a.seconds * left:.0f} s more for the {left} left (over "
                     f"{STREAM_ALLOC_S:.0f} s): pass allocation='sensitivity' to spend it")
        opts = opts.replace(allocation="uniform")
    return opts


def _features(r: PruneReport, weight: str) -> int:
    """A weight's input width, from the report's layer table (name, shape before, shape after)."""
    shape = next((before for name, before, _ in r.layers if name == weight), ())
    return int(shape[1]) if len(shape) > 1 else 0


def _prune_block(blocks, i: int, prefix: str, ckpt: LazyCheckpoint, inputs: list[dict], opts: PruneOptions,
                 writer: ShardWriter, report: StreamReport, doc: CheckpointDoc, dtype: torch.dtype) -> list[dict]:
    """Block ``i``: made real in fp32, pruned on ``inputs``, written in the checkpoint's dtype,
    dropped from memory; returns its outputs as the next block's inputs."""
    block = blocks[i]
    _materialise(block, ckpt, prefix, torch.float32)
    report.params_before += sum(p.numel() for p in block.parameters())
    report.peak_rss = max(report.peak_rss, peak_rss())  # before the prune resets the high-water mark
    # a block's outputs are not the model's: no held-out figure per block (and no two extra refits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BudgetWarning)
        block, r = prune_module(block, (), inputs[0], options=opts.replace(calib=inputs, heldout_check=False))
    # a block under its share leaves the rest to the next: the whole says it (StreamBudget.missed); others go on
    under = {str(c.message) for c in caught if issubclass(c.category, BudgetWarning)}
    for c in caught:
        if not issubclass(c.category, BudgetWarning):
            warnings.warn_explicit(c.message, c.category, c.filename, c.lineno)
    r.notes = [n for n in r.notes if n not in under]
    if r.compensation is not None:
        r.compensation.heldout = None  # not a choice the user made: no "turned off" line per block
    added = sorted(r.compensation.bias_modules) if r.compensation is not None else []
    doc.layers[prefix] = [PlanStep(r.plan, added)]
    report.layers[prefix] = r
    if r.compensation is not None:  # applied and written: the report keeps each site's errors, not its weights
        r.compensation.updates = {}  # (100+ MB a block at 3B: every block's would pile up)
    report.peak_rss = max(report.peak_rss, peak_rss(), r.memory.peak_rss if r.memory is not None else 0)
    report.params_after += sum(p.numel() for p in block.parameters())
    for n, t in block.state_dict().items():
        writer.add(f"{prefix}.{n}", t.to(dtype) if t.is_floating_point() else t)
    # each rank runs its slice forward; the outputs are shared, so every rank has every next input
    hidden = distributed.share(len(inputs), lambda k: _output(block, inputs[k]), lambda k: inputs[k]["hidden_states"])
    nxt = [dict(x, hidden_states=h) for x, h in zip(inputs, hidden)]
    blocks[i] = block.to("meta")  # dropped: the next block's turn
    ckpt.release()  # and the shard pages its weights were read from
    gc.collect()
    trim_heap()
    return nxt


class _NoWriter:
    """The writer of a rank other than 0: the tensors are rank 0's to write (ShardWriter's calls do nothing)."""

    def add(self, name: str, tensor: torch.Tensor) -> None: pass
    def flush(self) -> None: pass
    def close(self, side_files=None) -> None: pass
    def abort(self) -> None: pass


def load_streamed(folder: str | os.PathLike, doc: CheckpointDoc | None = None) -> torch.nn.Module:
    """A model written by :func:`stream_prune`: the original architecture built on meta, each
    block's plans replayed on meta (the same rewrite, so the same module attributes), then every
    tensor read from the shards. The unpruned model is never materialised."""
    import transformers

    folder = Path(folder)
    doc = doc or CheckpointDoc.read(folder)
    config = getattr(transformers, doc.architecture).config_class.from_dict(doc.original_config)
    model, config = build_on_meta(folder, config)
    example = doc.layer_example()
    for prefix, steps in doc.layers.items():
        block = model.get_submodule(prefix)
        replay_on_meta(block, steps, example,
                       lambda gid, size, p=prefix: f"the saved plan of {p} does not fit the model the config builds "
                                                  f"now (group {gid}, size {size})")
    # blocks are written under the model's names, the rest as stored (GPT-NeoX's lm_head as embed_out): read by
    # the model's names, and nothing left unread (it stayed to_empty's garbage)
    ckpt = ConvertedCheckpoint(LazyCheckpoint(folder), model)
    computed = _computed_buffers(model)  # found while still on meta: to_empty makes every buffer look real
    aliases = {n for names in tied_aliases(model).values() for n in names[1:]}
    model.to_empty(device="cpu")
    for name, t in model.state_dict(keep_vars=True).items():
        if name in ckpt:
            value = ckpt.get(name)
            if tuple(value.shape) != tuple(t.shape):
                raise PlanError(f"'{folder}': tensor '{name}' has shape {tuple(value.shape)}, the replayed plans give "
                                f"{tuple(t.shape)}")
            t.data = value
        elif name not in aliases and name.rpartition(".")[0] not in computed:
            raise PlanError(f"'{folder}' holds no tensor for the model's '{name}': the folder was not written whole, "
                            "or by another version of graphprune")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()  # a tied head is stored once, as the embeddings
    _rebuild(model, config, computed)  # after to_empty, which left their buffers uninitialised
    return model.eval()
