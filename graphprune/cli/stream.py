"""``graphprune prune FOLDER -o OUT`` for a transformers checkpoint folder: in memory, or block by block.

A transformers checkpoint folder (config.json + safetensors) is pruned block by block
(graphprune/hf/stream.py: one decoder layer in memory at a time, the output written shard by shard)
when ``--stream`` is given, or when the in-memory prune's peak, estimated on the meta device before
any weight is read (graphprune/hf/choose.py), exceeds ``--max-memory`` (default: the memory available
now, less a margin). ``--no-stream`` keeps the in-memory prune and refuses, before loading, one whose
estimate does not fit. What the streamed prune cannot do (``--recover-steps``, a latency ``--budget``,
an .onnx OUT...) is refused with ``--stream`` and named when the model does not fit in memory; a MACs
or parameter ``--budget`` is met by the blocks alone (graphprune/hf/stream_budget.py). Under
``torchrun`` every rank streams the blocks in lockstep, calibrating its slice of the batches; rank 0
alone writes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import graphprune as gp

from ..calib.distributed import active, gather, is_writer
from ..errors import GraphpruneError, PlanError
from ..io.sources import Source, copy_side_files
from ..options import PruneOptions
from ..planning.budget import key_values
from ..planning.depth import BLOCK_TARGETS
from ..planning.memory import ADVICE, gib
from ..util.atomic import public_tree
from .calib_data import torch_calib
from .common import check_folder_out, step


@dataclass
class Choice:
    """How a transformers folder is pruned: ``stream`` or in memory, why, and the --calib batches read."""

    stream: bool
    why: str
    calib: list | None = None
    estimate: object = None  # the in-memory MemoryEstimate, where one was made


def stream_flags(pr: argparse.ArgumentParser) -> None:
    """--stream / --no-stream (default: decided by the memory estimate)."""
    how = pr.add_mutually_exclusive_group()
    how.add_argument("--stream", dest="stream", action="store_const", const=True, default=None,
                     help="a transformers checkpoint folder: prune it block by block in bounded memory (needs --calib; "
                          "default: when the in-memory prune's estimated peak exceeds --max-memory)")
    how.add_argument("--no-stream", dest="stream", action="store_const", const=False,
                     help="prune a transformers checkpoint folder in memory; refused before loading when the "
                          "estimated peak exceeds --max-memory")


def blockers(ns, calib) -> list[str]:
    """What keeps this command from streaming, each with what to change."""
    out = []
    if not calib:
        out.append("it calibrates each block on the outputs of the pruned blocks before it: give --calib")
    if getattr(ns, "allocation", None) == "global":
        out.append("--allocation global ranks channels by every block's scores, and it holds one block at a time: "
                   "give --allocation uniform (or sensitivity, within each block)")
    if ns.budget and {"latency_ms", "speedup"} & set(key_values(ns.budget)):
        out.append("a latency or speedup --budget is measured on the whole model, which it never runs: give "
                   "macs= or params=")
    if any(t in BLOCK_TARGETS for t in ns.targets or ()):
        out.append("--targets blocks ranks every block against the others: drop 'blocks'")
    if getattr(ns, "uniform", False):
        out.append("--uniform writes a config from_pretrained loads, which the streamed output does not yet: drop "
                   "--uniform (graphprune.hf.load_pruned reloads the output)")
    if ns.recover_steps:
        out.append("--recover-steps distils the whole pruned model from the original: drop it")
    if Path(ns.output).suffix:
        out.append(f"its output is a sharded safetensors folder, not '{ns.output}': give -o a folder")
    for flag, given in (("--report", ns.report), ("--layers", ns.layers), ("--plot-layers", ns.plot_layers)):
        if given:
            out.append(f"{flag} reports one whole model, not block by block: drop {flag}")
    return out


def choose(ns, kind: str, options: PruneOptions) -> Choice | None:
    """For a transformers folder (``kind`` "hf"), stream or not, by the flags and the estimate; None for
    any other MODEL (loaded as before). --calib is read here, on the meta model's input names."""
    if kind != "hf":
        if ns.stream:
            raise GraphpruneError(f"--stream prunes a transformers checkpoint folder (config.json + safetensors) "
                                  f"block by block; MODEL '{ns.model}' is {kind}: drop --stream")
        return None
    from ..hf.choose import in_memory_fit, meta_model
    from ..hf.inputs import example_inputs

    try:
        model = meta_model(ns.model)
    except GraphpruneError as exc:
        if ns.stream:
            raise
        print(f"graphprune: warning: memory not estimated before loading ({exc})", file=sys.stderr)
        return None
    src = Source("hf", ns.model, Path(ns.model), model, (), example_inputs(model))
    calib = torch_calib(ns, src) if ns.calib else None
    why_not = blockers(ns, calib)
    if ns.stream:
        if why_not:
            raise PlanError("--stream cannot prune this block by block: " + "; ".join(why_not) +
                            ". Or prune it in memory: --no-stream")
        return Choice(True, "--stream given", calib)
    fit = in_memory_fit(model, options.replace(calib=calib), copies=1 if ns.recover_steps else 0)
    fits = all(gather(fit.fits)) if active() else fit.fits  # every rank loads the model: all must fit
    if fits:
        return Choice(False, str(fit), calib, fit.estimate)
    est, limit = fit.estimate, "--max-memory" if ns.max_memory is not None else "the memory available"
    need = (f"pruning {ns.model} in memory needs about {gib(est.total)} at its peak ({est.peak_phase}), more than "
            f"{limit} ({gib(fit.limit)})")
    if ns.stream is False:
        raise PlanError(f"{need}; the largest part is {est.largest.name} ({gib(est.largest.bytes)}). To fit: drop "
                        "--no-stream to prune it block by block (with --calib), or a larger --max-memory if more is "
                        f"free than the system reports, or {ADVICE.get(est.largest.name, 'fewer --targets')}."
                        f" Nothing was loaded.\n{est}")
    if why_not:
        raise PlanError(f"{need}, and it cannot be pruned block by block: " + "; ".join(why_not) +
                        f". Nothing was loaded.\n{est}")
    return Choice(True, f"{need}; pruned block by block instead", calib, est)


def run(ns, options: PruneOptions, choice: Choice) -> int:
    """The streamed prune into -o: built aside, the tokenizer files copied in, then moved in place."""
    out = Path(ns.output)
    check_folder_out(out)
    if not is_writer():  # under torchrun: this rank calibrates its slice of every block; rank 0 writes
        gp.hf.prune(ns.model, out=out, options=options.replace(calib=choice.calib))
        return 0
    step(1, 2, f"pruning {ns.model} block by block ({choice.why})", ns.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = gp.hf.prune(ns.model, out=tmp / "model", options=options.replace(calib=choice.calib))
        copy_side_files(Path(ns.model), tmp / "model")
        public_tree(tmp / "model")
        if out.exists():
            shutil.rmtree(out)
        (tmp / "model").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.path = str(out)
    step(2, 2, f"wrote {out} ({report.seconds:.1f}s)", ns.json)
    if ns.json:
        print(json.dumps({"streamed": True, "why": choice.why, "path": report.path,
                          "params_before": report.params_before, "params_after": report.params_after,
                          "seconds": report.seconds, "peak_rss": report.peak_rss, "notes": report.notes,
                          "estimate_in_memory": choice.estimate.to_dict() if choice.estimate is not None else None,
                          "layers": {k: r.to_dict() for k, r in report.layers.items()}},
                         indent=1, sort_keys=True, default=str))
        return 0
    print(f"\nstreamed block by block: {choice.why}")
    print(report)
    return 0
