"""``graphprune demo``: a built-in model pruned end to end, checked, exported, its table printed."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import graphprune as gp

from ..errors import GraphpruneError
from ..util.model_copy import model_copy
from ..zoo import ZOO, build
from .common import step


def arguments(d: argparse.ArgumentParser) -> None:
    """``graphprune demo``'s flags."""
    d.add_argument("--model", default="resnet18")
    d.add_argument("--config", default="full", choices=["small", "full"])
    d.add_argument("--ratio", type=float, default=0.5)
    d.add_argument("--importance", default="l2")
    d.add_argument("-o", "--output", type=Path, default=Path("out/slim.onnx"))


def _zoo(name: str, config: str):
    if name not in ZOO:
        raise GraphpruneError(f"unknown zoo model '{name}'; choose one of {', '.join(sorted(ZOO))}")
    return build(name, config)


def run(ns: argparse.Namespace) -> int:
    torch.manual_seed(0)
    t = step(1, 5, f"building {ns.model} ({ns.config} config)")
    model, args = _zoo(ns.model, ns.config)
    t = step(2, 5, "tracing one forward and solving channel spaces")
    graph = gp.trace(model, args)
    n_prunable = len(graph.prunable_groups())
    print(f"      {len(graph.groups)} groups, {n_prunable} prunable ({time.perf_counter() - t:.1f}s)")
    original = model_copy(model)
    t = step(3, 5, f"pruning {ns.ratio:.0%} of every prunable group by {ns.importance} importance")
    # the demo writes ONNX: widths follow onnxruntime's kernels, and its latency is measured before/after
    plan = gp.plan(graph, model, ratio=ns.ratio, importance=ns.importance, runtime="onnxruntime")
    model, report = gp.prune(model, args, graph=graph, plan_=plan, runtime="onnxruntime")
    report.importance = ns.importance  # the plan was made above; the report would say "given plan"
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
