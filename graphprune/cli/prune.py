"""``graphprune prune MODEL -o OUT``: every model kind (graphprune/io/sources.py), every output.

OUT by its form: ``*.onnx`` (exported and checked in onnxruntime), ``*.pt`` (the whole module,
torch.save), ``*.gguf`` (a Llama-family transformers LLM for llama.cpp, io/gguf_export.py), or a
folder: a transformers model's ``save_pretrained`` folder with graphprune's plan and the original's
tokenizer / processor files, or for any other PyTorch model ``model.safetensors`` + ``graphprune.json``
(rebuilt by graphprune.io.module_checkpoint). Nothing is left at OUT
unless every step succeeded. A transformers checkpoint folder is pruned block by block
with --stream, or when its in-memory prune's estimated peak exceeds --max-memory (cli/stream.py).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import tempfile
import time
from pathlib import Path

import graphprune as gp

from ..api.recover import recover
from ..calib.distributed import init_from_env, is_writer
from ..errors import GraphpruneError, PlanError
from ..io import sources
from ..io.gguf_quant import check_quant
from ..io.module_checkpoint import save_pruned_module
from ..io.onnx_export import export_onnx
from ..io.sources import copy_side_files
from ..options import PruneOptions
from ..planning.memory import parse_bytes
from ..planning.plan import check_ratio
from ..report.html import write_report
from ..util.atomic import atomic_path, check_writable, public_tree
from ..util.model_copy import model_copy
from . import stream
from .calib_data import npz_batches, torch_calib
from .common import (
    MODEL_HELP,
    check_folder_out,
    emit,
    input_flags,
    load_feeds,
    parse_input_shapes,
    parse_ratios,
    round_to_arg,
    step,
)


def output_kind(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth"):
        return "pt"
    if suffix == ".gguf":
        return "gguf"
    if suffix:
        raise GraphpruneError(f"-o {out}: write .onnx, .pt, .gguf, or a folder (no suffix)")
    return "folder"


def _check_outputs(ns: argparse.Namespace) -> str:
    """-o, --report and --plot-layers checked before any work (a failure after the model is written
    would leave it behind); returns OUT's kind."""
    out_kind = output_kind(ns.output)
    check_writable(ns.output, "-o")
    if out_kind == "folder":
        check_folder_out(ns.output)
    if ns.report:
        check_writable(ns.report, "--report")
        if Path(ns.report).exists() and not Path(ns.report).is_dir():
            raise GraphpruneError(f"--report {ns.report} is a file; --report names a folder for report.json and "
                                  "report.html")
    if ns.plot_layers:
        check_writable(ns.plot_layers, "--plot-layers")
    if Path(ns.output).resolve() == Path(ns.model).resolve():
        raise GraphpruneError("the output path is the input; choose another -o")
    return out_kind


def cmd_prune(ns: argparse.Namespace) -> int:

    if ns.ratio is not None and ns.budget:
        raise GraphpruneError("--ratio and --budget both choose how much goes: pass one of them")
    ns.ratio = 0.3 if ns.ratio is None else ns.ratio
    check_ratio(ns.ratio, "--ratio")  # before any work: a bad option must not cost a model load
    init_from_env()  # under torchrun: calibration is sharded over the ranks (calib/distributed.py)
    options = _options(ns, onnx_in=ns.model.lower().endswith(".onnx"))
    out_kind = _check_outputs(ns)
    kind = sources.classify(ns.model)
    if kind == "pt" and out_kind not in ("onnx", "pt"):
        raise GraphpruneError(f"a .pt module is written as an .onnx or .pt file, not '{ns.output}' (a folder rebuilds "
                              "its model from a zoo name or factory)")
    if kind == "onnx" and out_kind != "onnx":
        raise GraphpruneError(f"an ONNX model is written as an .onnx file, not '{ns.output}'")
    if out_kind == "gguf" and kind not in ("hf", "saved"):
        raise GraphpruneError(f"-o {ns.output}: GGUF is written for transformers LLMs (a Hugging Face folder or "
                              f"hf: name), not a {kind} model; write .onnx, .pt or a folder")
    if out_kind != "gguf" and (ns.gguf_type != "f16" or ns.quant):
        raise GraphpruneError("--gguf-type and --quant apply to a .gguf OUT only")
    check_quant(ns.quant)
    _check_recover(ns, kind)
    if ns.calib_generated is not None and ns.calib_generated < 0:
        raise GraphpruneError(f"--calib-generated must be >= 0 sequences (0: the --calib text alone), got "
                              f"{ns.calib_generated}")
    if ns.calib_generated and kind not in ("hf", "saved"):
        raise GraphpruneError(f"--calib-generated samples text from a transformers causal LM, not a {kind} model: "
                              "drop it and give --calib")
    choice = stream.choose(ns, kind, options)  # a transformers folder: in memory or block by block (cli/stream.py)
    if choice is not None and choice.stream and ns.calib_generated:
        raise GraphpruneError("--calib-generated samples text from the whole model, which the streamed prune never "
                              f"holds ({choice.why}): drop --calib-generated, or --no-stream with more --max-memory")
    if choice is not None and choice.stream:
        return stream.run(ns, options, choice)
    t = time.perf_counter()
    if kind == "onnx":
        calib = npz_batches(ns.calib, ns.calib_batch) if ns.calib else None
        step(1, 2, f"loading, planning and rewriting {ns.model}", ns.json)
        if not is_writer():  # rank 0 alone writes: the others plan the same model into a scratch folder
            with tempfile.TemporaryDirectory() as scratch:
                ns.output = os.path.join(scratch, Path(ns.output).name)
                _onnx(ns, calib, options, parse_input_shapes(ns.input_shape), load_feeds(ns.inputs))
            return 0
        report = _onnx(ns, calib, options, parse_input_shapes(ns.input_shape), load_feeds(ns.inputs))
        step(2, 2, f"wrote {ns.output} ({time.perf_counter() - t:.1f}s)", ns.json)
    else:
        n = 4 if ns.recover_steps else 3
        step(1, n, f"loading {ns.model} ({kind})", ns.json)
        src = sources.load(ns.model, parse_input_shapes(ns.input_shape), ns.config)
        calib = choice.calib if choice is not None else (torch_calib(ns, src) if ns.calib else None)
        if calib and (src.is_hf or kind == "zoo") and not ns.input_shape:  # made-up examples (token ids, a zoo
            # model's 32x32): traced on one real item instead, so MACs and latency are the data's, per input; a
            # factory's example, a saved model's and --input-shape are the user's own and kept
            first = calib[0]
            src.args, src.kwargs = ((tuple(t[:1] for t in first), {}) if isinstance(first, tuple) else
                                    ((), {k: v[:1] for k, v in dict(first).items()}))
        teacher = model_copy(src.model) if ns.recover_steps else None  # the original, before pruning
        step(2, n, "tracing, planning, checking and rewriting", ns.json)
        model, report = _torch(src, calib, options, ns)
        if not is_writer():  # rank 0 alone recovers (not sharded) and writes the model and the report
            return 0
        if teacher is not None:
            step(3, n, f"recovering: {ns.recover_steps} steps of distillation from the original on --calib", ns.json)
            report.recovery = _recover(model, teacher, calib, ns)  # report.json's "recovery", not a note alone
            report.notes.append(report.recovery.summary())
        step(n, n, f"writing {ns.output}", ns.json)
        write(src, model, report, ns.output, out_kind, (ns.gguf_type, ns.quant))
        report.path = str(ns.output)
    if ns.report:

        write_report(report, ns.report, title=f"{ns.model} -> {ns.output}")
    emit(ns, report)
    return 0


def _check_recover(ns, kind: str) -> None:
    """--recover-steps trains a PyTorch model on --calib: refused before any work otherwise."""
    if ns.recover_steps is None:
        if ns.recover_time is not None or ns.recover_lr is not None or ns.recover_blockwise:
            raise GraphpruneError("--recover-time, --recover-lr and --recover-blockwise apply with --recover-steps N")
        return
    if (ns.recover_time is not None and not ns.recover_time > 0) or (ns.recover_lr is not None and not ns.recover_lr > 0):
        raise GraphpruneError("--recover-time and --recover-lr must be > 0")
    if ns.recover_steps < 1:
        raise GraphpruneError(f"--recover-steps must be >= 1, got {ns.recover_steps}")
    if kind == "onnx":
        raise GraphpruneError("--recover-steps trains a PyTorch model; an ONNX model cannot be trained here: prune "
                              "its PyTorch source (a factory, zoo name or Hugging Face folder), or drop --recover-steps")
    if not ns.calib:
        raise GraphpruneError("--recover-steps trains on data: give --calib (the batches to distil on)")


def _recover(model, teacher, calib, ns):
    """Distil ``model`` from ``teacher`` on the --calib batches: tuples are positional inputs."""

    unpack = lambda b: ((), dict(b)) if isinstance(b, dict) else (tuple(b), {})
    return recover(model, teacher, calib, steps=ns.recover_steps, time_s=ns.recover_time, lr=ns.recover_lr,
                   unpack=unpack, blockwise=ns.recover_blockwise)


def _options(ns, onnx_in: bool) -> PruneOptions:
    """The command's options as one PruneOptions. The runtime is the one the output is for: an
    ONNX model or an .onnx OUT runs on onnxruntime, a PyTorch module on PyTorch."""
    auto = "onnxruntime" if onnx_in or str(ns.output).endswith(".onnx") else "torch"
    return PruneOptions.of(defaults={"ratio": ns.ratio}, importance=ns.importance, ignore=ns.ignore, targets=ns.targets,
                           compensate=False if ns.no_compensate else None, allocation=ns.allocation,
                           add_bias=ns.add_bias, heldout_check=not ns.no_heldout_check, uniform=ns.uniform,
                           budget=ns.budget, max_ratio=ns.max_ratio,
                           ratios=parse_ratios(ns.ratios), round_to=ns.round_to,
                           runtime={"none": None, "auto": auto}.get(ns.runtime, ns.runtime),
                           measure_latency=not ns.no_latency, verify=not ns.no_verify, fuse=not ns.no_fuse,
                           calib_tokens=ns.calib_tokens, max_memory=ns.max_memory)


def _onnx(ns, calib, options: PruneOptions, input_shapes, inputs):
    return gp.prune_onnx(ns.model, ns.output, input_shapes=input_shapes, inputs=inputs,
                         options=options.replace(calib=calib))


def _torch(src, calib, options: PruneOptions, ns):
    options = options.replace(calib=calib)
    if src.is_hf:
        given = {} if ns.calib_generated is None else {"generated": ns.calib_generated}  # else hf.prune's default
        return gp.hf.prune(src.model, inputs=src.kwargs, options=options, **given)
    return gp.prune(src.model, src.args, src.kwargs, options=options)


def write(src, model, report, out: str, out_kind: str, gguf: tuple = ("f16", None)) -> None:
    """The pruned module to ``out``, atomically (a folder is built aside, then moved in place);
    ``gguf``: a .gguf OUT's (type, quant)."""
    import torch

    out = Path(out)
    if out_kind == "onnx":

        export_onnx(model, src.args, out, src.kwargs)
        return
    if out_kind == "gguf":
        report.notes.append(str(gp.export_gguf(model, out, gguf[0], tokenizer=src.path, quant=gguf[1])))
        return
    if out_kind == "pt":

        with atomic_path(out) as tmp:
            torch.save(model, tmp)
        return
    check_folder_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if src.is_hf:
            from ..hf import save_pruned

            save_pruned(model, tmp)
            if src.path is not None:  # the original's (or a saved folder's) tokenizer goes along
                copy_side_files(src.path, tmp)
        else:

            history = _history(src) + [report.plan]
            added = report.compensation.bias_modules if report.compensation is not None else []
            save_pruned_module(model, tmp, src.recipe, history, src.args, src.kwargs, added)

        public_tree(tmp)
        if out.exists():
            _check_replaceable(out, tmp)
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_replaceable(out: Path, new: Path) -> None:
    """A graphprune folder is replaced whole: refuse where it holds files the new one does not and a
    save never writes (a user's notes), instead of deleting them. An older shard layout may go."""
    written = {p.name for p in new.iterdir()}
    theirs = sorted(p.name for p in out.iterdir() if p.name not in written
                    and not fnmatch.fnmatch(p.name, "model*.safetensors*"))
    if theirs:
        raise GraphpruneError(f"-o {out} holds files this prune would not write ({', '.join(theirs[:3])}): replacing "
                              "the folder would delete them; move them out or choose another -o")


def _history(src):

    if src.saved is None:
        return []
    return list(src.saved.history)  # each step with its own added biases


def memory_arg(text: str) -> int:
    """--max-memory's bytes, refused by argparse before any model load."""
    try:
        return parse_bytes(text, "--max-memory")
    except PlanError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def arguments(pr: argparse.ArgumentParser) -> None:
    """``graphprune prune``'s flags."""
    pr.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    pr.add_argument("-o", "--output", required=True,
                    help="OUT: file.onnx, file.pt, file.gguf (transformers LLMs, for llama.cpp), or a folder "
                         "(a transformers folder that load_pruned reads, with "
                         "the tokenizer copied; or model.safetensors + plan). Written only if every check passes")
    pr.add_argument("--ratio", type=float, default=None, help="share of each selected group to remove (default 0.3)")
    pr.add_argument("--budget", help="a target instead of --ratio: macs=0.5, params=0.6, params=20e6 (a fraction "
                                     "<= 1 of the original, or a count), latency_ms=3; several keys all hold")
    pr.add_argument("--targets", nargs="+", default=None,
                    help="what to prune: heads, query_heads, ffn, hidden, head_dim, conv_groups, channels, blocks "
                         "(whole residual branches, scored on --calib) (default: heads and ffn for models with "
                         "attention, else channels and conv groups, or the channels inside groups that cannot go whole)")
    pr.add_argument("--importance", default="auto",
                    help="criterion: auto, l1, l2, lamp, bn_scale, random, obs, activation, fluctuation, taylor, hessian "
                         "(auto: obs with --calib, else l2)")
    pr.add_argument("--calib", help="calibration data: an .npz of arrays named by model input (samples along dim "
                                    "0), a folder of .npz batches, or for a Hugging Face folder a .txt file")
    pr.add_argument("--calib-batch", type=int, default=8, help="samples per calibration batch (default 8)")
    pr.add_argument("--calib-samples", type=int, default=None,
                    help="sequences cut from a .txt --calib (default 32, or as many as --calib-tokens takes)")
    pr.add_argument("--seq-len", type=int, default=128, help="tokens per sequence of a .txt --calib (default 128)")
    pr.add_argument("--calib-tokens", type=int, default=None, metavar="N",
                    help="stop taking --calib batches once N real tokens (attention mask 1; samples for "
                         "non-token inputs) were seen (default: every batch)")
    pr.add_argument("--calib-generated", type=int, default=None, metavar="N",
                    help="transformers causal LMs: add N sequences the model samples itself (from its BOS token) to "
                         "--calib, or calibrate on them alone: a repair that holds beyond one kind of text (default: "
                         "eight for each sequence of --calib, at most 512; 0: --calib alone)")
    pr.add_argument("--recover-steps", type=int, default=None, metavar="N",
                    help="with --calib, PyTorch models: after pruning, train N steps to match the original (knowledge "
                         "distillation on the --calib batches, a tenth held out; graphprune.recover)")
    pr.add_argument("--recover-time", type=float, default=None, metavar="S",
                    help="with --recover-steps: stop distilling after S seconds as well (graphprune.recover's time_s)")
    pr.add_argument("--recover-lr", type=float, default=None, metavar="LR",
                    help="with --recover-steps: the learning rate (default: probed on held-out batches; 1e-3 for runs "
                         "under 24 steps or a --recover-time under 30 s)")
    pr.add_argument("--recover-blockwise", action="store_true",
                    help="with --recover-steps: train each block alone first (graphprune.recover's blockwise=True)")
    pr.add_argument("--max-memory", type=memory_arg, default=None, metavar="SIZE",
                    help="refuse, before calibration, a prune whose estimated peak memory exceeds SIZE (bytes, or "
                         "8GB, 512MiB, 16G); a transformers folder that would exceed it in memory is pruned block "
                         "by block (see --stream) (default: what the system has available now, less a margin)")
    stream.stream_flags(pr)
    pr.add_argument("--no-compensate", action="store_true", help="with --calib: rank from data, but do not refit")
    pr.add_argument("--no-heldout-check", action="store_true",
                    help="with --calib: skip the report's output error on calibration items the refit never saw")
    pr.add_argument("--add-bias", action="store_true",
                    help="with --calib: let compensation add a bias to layers that have none")
    pr.add_argument("--allocation", default="auto", choices=["auto", "uniform", "sensitivity", "global"],
                    help="how ratios are chosen per group (default auto: sensitivity with --calib, else uniform)")
    pr.add_argument("--uniform", action="store_true",
                    help="keep every layer's head and FFN counts equal (data still choose which units go), so a "
                         "transformers output loads with from_pretrained and vLLM without graphprune")
    pr.add_argument("--gguf-type", choices=["f16", "bf16", "f32"], default="f16",
                    help="with a .gguf OUT: the matrices' type (default f16)")
    pr.add_argument("--quant", default=None, metavar="TYPE",
                    help="with a .gguf OUT: quantize with llama.cpp's quantizer (q8_0, q4_k_m, ...; needs make llama-cpp)")
    pr.add_argument("--ratios", help="per-group overrides of --ratio: KIND=R, NAME=R (a module, parameter or "
                                     "initializer name) or GROUP=R, comma-separated")
    pr.add_argument("--max-ratio", type=float, default=None,
                    help="with --budget / --allocation global: the most any group loses (default 0.9)")
    pr.add_argument("--round-to", type=round_to_arg, default="auto",
                    help="keep channel counts multiples of this; 'auto' (default): the multiples the target "
                         "runtime's kernels run fastest on this machine (measured once, cached); 1: any width")
    pr.add_argument("--runtime", choices=["auto", "torch", "onnxruntime", "none"], default="auto",
                    help="where the pruned model will run, for widths and the latency before/after: auto (default) "
                         "is onnxruntime for an .onnx OUT, PyTorch eager otherwise; none measures nothing")
    pr.add_argument("--ignore", nargs="+", default=[], help="modules, parameters or initializers to keep whole")
    pr.add_argument("--no-latency", action="store_true", help="skip the latency measurement before/after")
    pr.add_argument("--no-verify", action="store_true", help="skip the exactness oracle (PyTorch and ONNX models)")
    pr.add_argument("--no-fuse", action="store_true", help="ONNX: keep the graph's ops and weights as given "
                                                           "(hard-swish spelled as Add/Clip/Mul/Div, a Softmax behind a "
                                                           "Transpose, subnormal weights)")
    pr.add_argument("--report", metavar="DIR", help="write report.json and report.html (with plots) to DIR")
    pr.add_argument("--layers", action="store_true", help="also print the kept width of every weight")
    pr.add_argument("--plot-layers", metavar="PNG", help="save a plot of the kept width per layer")
    pr.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    input_flags(pr)


run = cmd_prune
