"""Command line: ``graphprune demo | inspect | prune | bench | zoo``.

MODEL, wherever a command takes one, is an ``.onnx`` file, a Hugging Face folder, a folder
graphprune saved, ``package.module:factory`` or a zoo name (graphprune/sources.py). Tables go
to stdout, progress to stderr; ``--json`` prints machine-readable results instead of tables.
Every error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

from .errors import GraphpruneError


def _step(i: int, n: int, what: str, quiet: bool = False) -> float:
    """A numbered step; on stderr when stdout carries --json."""
    print(f"[{i}/{n}] {what}...", flush=True, file=sys.stderr if quiet else sys.stdout)
    return time.perf_counter()


def emit(ns: argparse.Namespace, report) -> None:
    """The prune report: the tables, or with --json one JSON document."""
    if getattr(ns, "json", False):
        import json

        print(json.dumps(report.to_dict(), indent=1, sort_keys=True, default=str))
        return
    print()
    print(report)
    if getattr(ns, "layers", False):
        print(report.layer_table())
    if getattr(ns, "plot_layers", None):
        print(f"layer plot: {report.plot_layers(ns.plot_layers, f'{ns.model} -> {ns.output}')}")


def _zoo(name: str, config: str):
    try:
        from models import ZOO, build
    except ImportError as exc:
        raise GraphpruneError("the reference zoo (package 'models') is not importable; run from the repository "
                              "root or install graphprune with its models package") from exc
    if name not in ZOO:
        raise GraphpruneError(f"unknown zoo model '{name}'; choose one of {', '.join(sorted(ZOO))}")
    return build(name, config)


def cmd_demo(ns: argparse.Namespace) -> int:
    import torch

    import graphprune as gp

    torch.manual_seed(0)
    t = _step(1, 5, f"building {ns.model} ({ns.config} config)")
    model, args = _zoo(ns.model, ns.config)
    t = _step(2, 5, "tracing one forward and solving channel spaces")
    graph = gp.trace(model, args)
    n_prunable = len(graph.prunable_groups())
    print(f"      {len(graph.groups)} groups, {n_prunable} prunable ({time.perf_counter() - t:.1f}s)")
    original = copy.deepcopy(model)
    t = _step(3, 5, f"pruning {ns.ratio:.0%} of every prunable group by {ns.importance} importance")
    # the demo writes ONNX: widths follow onnxruntime's kernels, and its latency is measured before/after
    plan = gp.plan(graph, model, ratio=ns.ratio, importance=ns.importance, runtime="onnxruntime")
    model, report = gp.prune(model, args, graph=graph, plan_=plan, runtime="onnxruntime")
    report.seconds = time.perf_counter() - t  # planning included (the table's time)
    print(f"      done ({report.seconds:.1f}s)")
    t = _step(4, 5, "checking the exactness oracle (pruned vs masked original)")
    oracle = gp.verify(original, args, plan, graph)
    report.oracle = oracle
    print(f"      {oracle.passed and 'passed' or 'FAILED'} ({time.perf_counter() - t:.1f}s)")
    t = _step(5, 5, f"exporting slim ONNX to {ns.output}")
    exp = gp.export_onnx(model, args, ns.output)
    print(f"      {exp} ({time.perf_counter() - t:.1f}s)")
    print()
    print(f"{ns.model} ({ns.config}), ratio {ns.ratio}, importance {ns.importance}")
    print(report)
    return 0 if oracle.passed else 1


def cmd_inspect(ns: argparse.Namespace) -> int:
    import graphprune as gp

    from . import sources

    kind = sources.classify(ns.model)
    if kind == "onnx":
        graph = gp.load_onnx(ns.model, input_shapes=_input_shapes(ns.input_shape), inputs=_feeds(ns.inputs))
    else:
        src = sources.load(ns.model, _input_shapes(ns.input_shape), ns.config)
        graph = gp.trace(src.model, src.args, src.kwargs)
    if ns.json:
        print(graph.to_json())
        return 0
    print(graph.summary())
    blocks = graph.blocks
    if blocks:
        print(f"{len(blocks)} residual block(s) depth pruning may remove (targets blocks): "
              + ", ".join(b.id for b in blocks[:8]) + (" ..." if len(blocks) > 8 else ""))
    return 0


def _ratios(text: str | None) -> dict | None:
    """``ffn=0.5,conv1=0.2,12=0.7``: overrides by kind, initializer/node name prefix, or group id."""
    if not text:
        return None
    from .budget import key_values

    pairs = key_values(text, "--ratios", "ffn=0.5 or 12=0.3")
    return {int(k) if k.isdigit() else k: r for k, r in pairs.items()}


def _input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    """``NAME:1x3x640x640`` (repeatable) -> {NAME: (1, 3, 640, 640)}."""
    if not specs:
        return None
    out = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(d < 1 for d in shape):
            raise GraphpruneError(f"--input-shape '{spec}' is not NAME:DIMS (for example images:1x3x640x640)")
        out[name] = shape
    return out


def _feeds(path: str | None) -> dict | None:
    """Example inputs: an .npz of arrays named by model input, used as they are."""
    if path is None:
        return None
    import numpy as np

    try:
        data = dict(np.load(path))
    except (OSError, ValueError) as exc:
        raise GraphpruneError(f"cannot read example inputs '{path}': {exc}. Give an .npz file whose arrays are "
                              "named by the model's inputs") from exc
    return data


def cmd_zoo(ns: argparse.Namespace) -> int:
    from models import ZOO

    from .report import table

    if ns.json:
        import json

        print(json.dumps([{"name": e.name, "description": e.description} for e in ZOO.values()], indent=1))
        return 0
    print(table(["name", "description"], [[e.name, e.description] for e in ZOO.values()]))
    return 0


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                   help="an input's shape, e.g. images:1x3x640x640 (repeat for several inputs): fixes an ONNX "
                        "input's dynamic dims, or makes random example inputs for a factory that returns none")
    p.add_argument("--inputs", metavar="FEEDS.npz",
                   help="ONNX example inputs for the checks, an .npz of arrays named by model input (for inputs "
                        "with a meaning: token ids, a sample rate)")
    p.add_argument("--config", default="small", choices=["small", "full"], help="a zoo model's size (default small)")


MODEL_HELP = ("an .onnx file, a Hugging Face folder (config + safetensors), a folder graphprune saved, "
              "package.module:factory (returning a module or (module, example_args)), or a zoo name")


def _round_to(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'auto' or a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1 (1: any width)")
    return value


def _prune_flags(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    pr.add_argument("-o", "--output", required=True,
                    help="OUT: file.onnx, file.pt, or a folder (a transformers folder that load_pruned reads, with "
                         "the tokenizer copied; or model.safetensors + plan). Written only if every check passes")
    pr.add_argument("--ratio", type=float, default=None, help="share of each selected group to remove (default 0.3)")
    pr.add_argument("--budget", help="a target instead of --ratio: macs=0.5, params=0.6, params=20e6 (a fraction "
                                     "<= 1 of the original, or a count), latency_ms=3; several keys all hold")
    pr.add_argument("--targets", nargs="*", default=None,
                    help="what to prune: heads, query_heads, ffn, hidden, head_dim, conv_groups, channels, blocks "
                         "(whole residual branches, scored on --calib) (default: heads and ffn for models with "
                         "attention, else channels and conv groups)")
    pr.add_argument("--importance", default="auto",
                    help="criterion: auto, l1, l2, lamp, bn_scale, random, obs, activation, fluctuation, taylor, hessian "
                         "(auto: obs with --calib, else l2)")
    pr.add_argument("--calib", help="calibration data: an .npz of arrays named by model input (samples along dim "
                                    "0), a folder of .npz batches, or for a Hugging Face folder a .txt file")
    pr.add_argument("--calib-batch", type=int, default=8, help="samples per calibration batch (default 8)")
    pr.add_argument("--calib-samples", type=int, default=32, help="sequences cut from a .txt --calib (default 32)")
    pr.add_argument("--seq-len", type=int, default=128, help="tokens per sequence of a .txt --calib (default 128)")
    pr.add_argument("--recover-steps", type=int, default=None, metavar="N",
                    help="with --calib, PyTorch models: after pruning, train N steps to match the original (knowledge "
                         "distillation on the --calib batches, a tenth held out; graphprune.recover)")
    pr.add_argument("--no-compensate", action="store_true", help="with --calib: rank from data, but do not refit")
    pr.add_argument("--add-bias", action="store_true",
                    help="with --calib: let compensation add a bias to layers that have none")
    pr.add_argument("--allocation", default="auto", choices=["auto", "uniform", "sensitivity", "global"],
                    help="how ratios are chosen per group (default auto: sensitivity with --calib, else uniform)")
    pr.add_argument("--ratios", help="per-group overrides of --ratio: KIND=R, NAME=R (a module, parameter or "
                                     "initializer name) or GROUP=R, comma-separated")
    pr.add_argument("--max-ratio", type=float, default=None,
                    help="with --budget / --allocation global: the most any group loses (default 0.9)")
    pr.add_argument("--round-to", type=_round_to, default="auto",
                    help="keep channel counts multiples of this; 'auto' (default): the multiples the target "
                         "runtime's kernels run fastest on this machine (measured once, cached); 1: any width")
    pr.add_argument("--runtime", choices=["auto", "torch", "onnxruntime", "none"], default="auto",
                    help="where the pruned model will run, for widths and the latency before/after: auto (default) "
                         "is onnxruntime for an .onnx OUT, PyTorch eager otherwise; none measures nothing")
    pr.add_argument("--ignore", nargs="*", default=[], help="modules, parameters or initializers to keep whole")
    pr.add_argument("--no-latency", action="store_true", help="skip the latency measurement before/after")
    pr.add_argument("--no-verify", action="store_true", help="skip the exactness oracle (PyTorch models)")
    pr.add_argument("--report", metavar="DIR", help="write report.json and report.html (with plots) to DIR")
    pr.add_argument("--layers", action="store_true", help="also print the kept width of every weight")
    pr.add_argument("--plot-layers", metavar="PNG", help="save a plot of the kept width per layer")
    pr.add_argument("--json", action="store_true", help="print the report as JSON (progress goes to stderr)")
    _input_flags(pr)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like graphprune's own (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: list[str] | None = None) -> int:
    from .cli_bench import cmd_bench
    from .cli_prune import cmd_prune

    p = _Parser(prog="graphprune", description="Graph-level structured pruning compiler: prune a "
                                "model into a smaller dense one whose outputs are proven against the original.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="prune a built-in model, check the oracle, export slim ONNX, print the table")
    d.add_argument("--model", default="resnet18")
    d.add_argument("--config", default="full", choices=["small", "full"])
    d.add_argument("--ratio", type=float, default=0.5)
    d.add_argument("--importance", default="l2")
    d.add_argument("-o", "--output", type=Path, default=Path("out/slim.onnx"))
    d.set_defaults(fn=cmd_demo)
    i = sub.add_parser("inspect", help="show a model's channel groups, what froze them, and its residual blocks")
    i.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print the groups as JSON")
    _input_flags(i)
    i.set_defaults(fn=cmd_inspect)
    pr = sub.add_parser("prune", help="prune MODEL into OUT (.onnx, .pt or a folder)")
    _prune_flags(pr)
    pr.set_defaults(fn=cmd_prune)
    b = sub.add_parser("bench", help="latency of MODEL (and PRUNED beside it) in onnxruntime and PyTorch")
    b.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    b.add_argument("pruned", metavar="PRUNED", nargs="?", help="a second model to compare (same inputs)")
    b.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    b.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op / torch threads (default 1)")
    b.add_argument("--repeat", type=int, default=20, help="timed runs per measurement, median reported")
    b.add_argument("--runtime", nargs="+", default=["onnxruntime", "torch"], choices=["onnxruntime", "torch"])
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    _input_flags(b)
    b.set_defaults(fn=cmd_bench)
    z = sub.add_parser("zoo", help="list the reference models")
    z.add_argument("--json", action="store_true")
    z.set_defaults(fn=cmd_zoo)
    ns = p.parse_args(argv)
    import warnings

    from .report import use_rich


    # rich tables on a terminal (GRAPHPRUNE_RICH=1/0 forces them on/off); plain text in pipes and --json
    rich_env = os.environ.get("GRAPHPRUNE_RICH")
    use_rich(not getattr(ns, "json", False) and (rich_env == "1" if rich_env in ("0", "1") else sys.stdout.isatty()))
    try:
        with warnings.catch_warnings():  # a warning is one line too, without the source line Python shows
            warnings.showwarning = lambda message, category, *_a, **_k: print(
                f"graphprune: warning: {message}", file=sys.stderr)
            return ns.fn(ns)
    except GraphpruneError as exc:
        print(f"graphprune: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (a full disk, rights taken away mid-run)
        where = f" at '{exc.filename}'" if exc.filename else ""
        print(f"graphprune: error: {exc.strerror or exc}{where}; nothing was written", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphprune: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
