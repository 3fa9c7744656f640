"""Command line: ``graphprune demo | inspect | prune | bench | zoo``.

MODEL, wherever a command takes one, is an ``.onnx`` file, a Hugging Face folder, a folder
graphprune saved, ``package.module:factory`` or a zoo name (graphprune/io/sources.py). Tables go
to stdout, progress to stderr; ``--json`` prints machine-readable results instead of tables.
Every error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

from ..errors import GraphpruneError
from ..util.tables import use_rich


def _command(module: str, name: str):
    """A subcommand's function, its module loaded by name only when that command runs: the
    parser (and ``--help``) must not pay for torch and the pruning path."""
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


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
    p = _Parser(prog="graphprune", description="Graph-level structured pruning compiler: prune a "
                                "model into a smaller dense one whose outputs are proven against the original.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="prune a built-in model, check the oracle, export slim ONNX, print the table")
    d.add_argument("--model", default="resnet18")
    d.add_argument("--config", default="full", choices=["small", "full"])
    d.add_argument("--ratio", type=float, default=0.5)
    d.add_argument("--importance", default="l2")
    d.add_argument("-o", "--output", type=Path, default=Path("out/slim.onnx"))
    d.set_defaults(fn=("explore", "cmd_demo"))
    i = sub.add_parser("inspect", help="show a model's channel groups, what froze them, and its residual blocks")
    i.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print the groups as JSON")
    _input_flags(i)
    i.set_defaults(fn=("explore", "cmd_inspect"))
    pr = sub.add_parser("prune", help="prune MODEL into OUT (.onnx, .pt or a folder)")
    _prune_flags(pr)
    pr.set_defaults(fn=("prune", "cmd_prune"))
    b = sub.add_parser("bench", help="latency of MODEL (and PRUNED beside it) in onnxruntime and PyTorch")
    b.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    b.add_argument("pruned", metavar="PRUNED", nargs="?", help="a second model to compare (same inputs)")
    b.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    b.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op / torch threads (default 1)")
    b.add_argument("--repeat", type=int, default=20, help="timed runs per measurement, median reported")
    b.add_argument("--runtime", nargs="+", default=["onnxruntime", "torch"], choices=["onnxruntime", "torch"])
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    _input_flags(b)
    b.set_defaults(fn=("bench", "cmd_bench"))
    z = sub.add_parser("zoo", help="list the reference models")
    z.add_argument("--json", action="store_true")
    z.set_defaults(fn=("explore", "cmd_zoo"))
    ns = p.parse_args(argv)
    # rich tables on a terminal (GRAPHPRUNE_RICH=1/0 forces them on/off); plain text in pipes and --json
    rich_env = os.environ.get("GRAPHPRUNE_RICH")
    use_rich(not getattr(ns, "json", False) and (rich_env == "1" if rich_env in ("0", "1") else sys.stdout.isatty()))
    try:
        with warnings.catch_warnings():  # a warning is one line too, without the source line Python shows
            warnings.showwarning = lambda message, category, *_a, **_k: print(
                f"graphprune: warning: {message}", file=sys.stderr)
            return _command(*ns.fn)(ns)
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
