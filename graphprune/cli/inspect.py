"""``graphprune inspect MODEL``: a model's channel groups, what froze them, and its residual blocks."""
from __future__ import annotations

import argparse

import graphprune as gp

from ..io import sources
from .common import MODEL_HELP, input_flags, load_feeds, parse_input_shapes


def arguments(i: argparse.ArgumentParser) -> None:
    """``graphprune inspect``'s flags."""
    i.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print the groups as JSON")
    input_flags(i)


def run(ns: argparse.Namespace) -> int:
    kind = sources.classify(ns.model)
    if kind == "onnx":
        graph = gp.load_onnx(ns.model, input_shapes=parse_input_shapes(ns.input_shape), inputs=load_feeds(ns.inputs))
    else:
        src = sources.load(ns.model, parse_input_shapes(ns.input_shape), ns.config)
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
