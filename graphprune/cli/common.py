"""What the subcommands share: numbered steps, the report, and MODEL / input options parsed."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import GraphpruneError
from ..io.checkpoint_doc import PLAN_FILE
from ..planning.budget import key_values

# The library's messages name API arguments (calib=, round_to=1); on the command line the same advice is a flag.
_FLAGS = [
    (r"\bgraph\.summary\(\)", "graphprune inspect MODEL"),
    (r"\bgraphprune\.recover\(pruned, original, data\)", "--recover-steps N"),
    (r"\breport\.layer_table\(\)", "--layers"),
    (r"\bround_to=['\"]?(\w+)['\"]?", r"--round-to \1"),
    (r"\ballocation=['\"](\w+)['\"]", r"--allocation \1"),
    (r"\bbudget=\{['\"](\w+)['\"]: ([\d.e+-]+)\}", r"--budget \1=\2"),
    (r"\btargets=\(([^)]*)\)", lambda m: "--targets " + " ".join(re.findall(r"\w+", m.group(1)))),
    (r"\b(calib|targets|ignore|ratios)=\s?", r"--\1 "),
    (r"\bmax_ratio\b", "--max-ratio"),
    (r"\buniform=True\b", "--uniform"),
    (r"\bmeasure_latency=False\b", "--no-latency"),
    (r"\bcompensate=False\b", "--no-compensate"),
    (r"\bheldout_check=False\b", "--no-heldout-check"),
]


def cli_words(text: str) -> str:
    """A library message in the command line's words: each API argument it names as its flag."""
    for pattern, flag in _FLAGS:
        text = re.sub(pattern, flag, text)
    text = re.sub(r"(--[\w-]+(?: [\w.]+)?), \1\b", r"\1", text)  # "round_to=1, --round-to 1" said it twice
    return re.sub(r"(--[\w-]+) ([),;])", r"\1\2", text)


def step(i: int, n: int, what: str, quiet: bool = False) -> float:
    """A numbered step; on stderr when stdout carries --json."""
    print(f"[{i}/{n}] {what}...", flush=True, file=sys.stderr if quiet else sys.stdout)
    return time.perf_counter()


def emit(ns: argparse.Namespace, report) -> None:
    """The prune report: the tables, or with --json one JSON document."""
    if getattr(ns, "json", False):
        print(json.dumps(report.to_dict(), indent=1, sort_keys=True, default=str))
        return
    print()
    print(cli_words(str(report)))
    if getattr(ns, "layers", False):
        print(report.layer_table())
    if getattr(ns, "plot_layers", None):
        print(f"layer plot: {report.plot_layers(ns.plot_layers, f'{ns.model} -> {ns.output}')}")


def check_folder_out(out: str | Path) -> None:
    """A folder OUT replaces only a folder graphprune wrote (or an empty one): checked before any work,
    and again when writing (the folder may have changed while the prune ran)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / PLAN_FILE).exists())):
        raise GraphpruneError(f"-o {out} exists and is not a folder graphprune wrote; choose another -o")


def parse_ratios(text: str | None) -> dict | None:
    """``ffn=0.5,conv1=0.2,12=0.7``: overrides by kind, initializer/node name prefix, or group id."""
    if not text:
        return None
    pairs = key_values(text, "--ratios", "ffn=0.5 or 12=0.3")
    return {int(k) if k.isdigit() else k: r for k, r in pairs.items()}


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]] | None:
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


def load_feeds(path: str | None) -> dict | None:
    """Example inputs: an .npz of arrays named by model input, used as they are."""
    if path is None:
        return None
    try:
        data = dict(np.load(path))
    except (OSError, ValueError) as exc:
        raise GraphpruneError(f"cannot read example inputs '{path}': {exc}. Give an .npz file whose arrays are "
                              "named by the model's inputs") from exc
    return data


MODEL_HELP = ("an .onnx file, a Hugging Face folder (config + safetensors), a folder graphprune saved, "
              "package.module:factory (returning a module or (module, example_args)), a zoo name, or a .pt file "
              "holding a whole module (with --input-shape)")


def input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                   help="an input's shape, e.g. images:1x3x640x640 (repeat for several inputs): fixes an ONNX "
                        "input's dynamic dims; for a PyTorch model, makes its example inputs at that shape "
                        "(MACs and latency are counted there)")
    p.add_argument("--inputs", metavar="FEEDS.npz",
                   help="ONNX example inputs for the checks, an .npz of arrays named by model input (for inputs "
                        "with a meaning: token ids, a sample rate)")
    p.add_argument("--config", default="small", choices=["small", "full"], help="a zoo model's size (default small)")


def round_to_arg(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not 'auto' or a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1 (1: any width)")
    return value
