"""``graphprune demo | inspect | zoo``: the built-in model pruned end to end, a model's groups, the zoo."""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import graphprune as gp

from ..errors import GraphpruneError
from ..io import sources
from ..util.tables import table
from ..zoo import ZOO, build
from .common import load_feeds, parse_input_shapes, step


def _zoo(name: str, config: str):
    if name not in ZOO:
        raise GraphpruneError(f"unknown zoo model '{name}'; choose one of {', '.join(sorted(ZOO))}")
    return build(name, config)


def cmd_demo(ns: argparse.Namespace) -> int:
    torch.manual_seed(0)
    t = step(1, 5, f"building {ns.model} ({ns.config} config)")
    model, args = _zoo(ns.model, ns.config)
    t = step(2, 5, "tracing one forward and solving channel spaces")
    graph = gp.trace(model, args)
    n_prunable = len(graph.prunable_groups())
    print(f"      {len(graph.groups)} groups, {n_prunable} prunable ({time.perf_counter() - t:.1f}s)")
    original = copy.deepcopy(model)
    t = step(3, 5, f"pruning {ns.ratio:.0%} of every prunable group by {ns.importance} importance")
    # the demo writes ONNX: widths follow onnxruntime's kernels, and its latency is measured before/after
    plan = gp.plan(graph, model, ratio=ns.ratio, importance=ns.importance, runtime="onnxruntime")
    model, report = gp.prune(model, args, graph=graph, plan_=plan, runtime="onnxruntime")
    report.seconds = time.perf_counter() - t  # planning included (the table's time)
    print(f"      done ({report.seconds:.1f}s)")
    t = step(4, 5, "checking the exactness oracle (pruned vs masked original)")
    oracle = gp.verify(original, args, plan, graph)
    report.oracle = oracle
    print(f"      {oracle.passed and 'passed' or 'FAILED'} ({time.perf_counter() - t:.1f}s)")
    t = step(5, 5, f"exporting slim ONNX to {ns.output}")
    exp = gp.export_onnx(model, args, ns.output)
    print(f"      {exp} ({time.perf_counter() - t:.1f}s)")
    print()
    print(f"{ns.model} ({ns.config}), ratio {ns.ratio}, importance {ns.importance}")
    print(report)
    return 0 if oracle.passed else 1


def cmd_inspect(ns: argparse.Namespace) -> int:
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


def cmd_zoo(ns: argparse.Namespace) -> int:
    if ns.json:
        print(json.dumps([{"name": e.name, "description": e.description} for e in ZOO.values()], indent=1))
        return 0
    print(table(["name", "description"], [[e.name, e.description] for e in ZOO.values()]))
    return 0
