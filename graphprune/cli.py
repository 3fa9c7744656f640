"""Command line: `graphprune demo`, `graphprune inspect`, `graphprune zoo`."""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

from .errors import GraphpruneError


def _step(i: int, n: int, what: str) -> float:
    print(f"[{i}/{n}] {what}...", flush=True)
    return time.perf_counter()


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
    t = _step(2, 5, "tracing with torch.export and solving channel spaces")
    graph = gp.trace(model, args)
    n_prunable = len(graph.prunable_groups())
    print(f"      {len(graph.groups)} groups, {n_prunable} prunable ({time.perf_counter() - t:.1f}s)")
    original = copy.deepcopy(model)
    t = _step(3, 5, f"pruning {ns.ratio:.0%} of every prunable group by {ns.importance} importance")
    plan = gp.plan(graph, model, ratio=ns.ratio, importance=ns.importance)
    model, report = gp.prune(model, args, graph=graph, plan_=plan)
    print(f"      done ({time.perf_counter() - t:.1f}s)")
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

    if ns.model.endswith(".onnx") or Path(ns.model).is_file():
        graph = gp.load_onnx(ns.model, input_shapes=_input_shapes(ns.input_shape), inputs=_feeds(ns.inputs))
    else:
        model, args = _zoo(ns.model, ns.config)
        graph = gp.trace(model, args)
    print(graph.summary() if not ns.json else graph.to_json())
    return 0


def cmd_prune(ns: argparse.Namespace) -> int:
    import graphprune as gp

    from .planner import check_ratio

    check_ratio(ns.ratio)  # before any work: a bad ratio must not cost a model load
    if Path(ns.output).resolve() == Path(ns.model).resolve():
        raise GraphpruneError("the output path is the input file; choose another -o")
    calib = _calib_batches(ns.calib, ns.calib_batch) if ns.calib else None
    t = _step(1, 2, f"loading, planning and rewriting {ns.model}")
    report = gp.prune_onnx(ns.model, ns.output, ratio=ns.ratio, importance=ns.importance, round_to=ns.round_to,
                           ignore=ns.ignore, measure_latency=not ns.no_latency, targets=ns.targets, calib=calib,
                           compensate=False if ns.no_compensate else None, allocation=ns.allocation,
                           add_bias=ns.add_bias, input_shapes=_input_shapes(ns.input_shape), inputs=_feeds(ns.inputs),
                           budget=ns.budget, max_ratio=ns.max_ratio, ratios=_ratios(ns.ratios))
    _step(2, 2, f"wrote {ns.output} ({time.perf_counter() - t:.1f}s)")
    print()
    print(report)
    if ns.layers:
        print(report.layer_table())
    if ns.plot_layers:
        print(f"layer plot: {report.plot_layers(ns.plot_layers, f'{Path(ns.model).name} -> {Path(ns.output).name}')}")
    return 0


def _ratios(text: str | None) -> dict | None:
    """``ffn=0.5,conv1=0.2,12=0.7``: overrides by kind, initializer/node name prefix, or group id."""
    if not text:
        return None
    from .budget import key_values

    pairs = key_values(text, "--ratios", "ffn=0.5 or 12=0.3")
    return {int(k) if k.isdigit() else k: r for k, r in pairs.items()}


def _calib_batches(path: str, batch: int) -> list[dict]:
    """An .npz of arrays named by model input, each with the samples along dim 0, cut into batches."""
    import numpy as np

    try:
        data = dict(np.load(path))
    except (OSError, ValueError) as exc:
        raise GraphpruneError(f"cannot read calibration data '{path}': {exc}. Give an .npz file whose arrays are "
                              "named by the model's inputs (samples along dim 0)") from exc
    if not data:
        raise GraphpruneError(f"calibration file '{path}' holds no arrays")
    n = min(len(v) for v in data.values())
    if batch < 1:
        raise GraphpruneError(f"--calib-batch must be >= 1, got {batch}")
    return [{k: v[i:i + batch] for k, v in data.items()} for i in range(0, n, batch)]


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

    print(table(["name", "description"], [[e.name, e.description] for e in ZOO.values()]))
    return 0


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                   help="an ONNX input's shape, e.g. images:1x3x640x640 (repeat for several inputs); fixes its "
                        "dynamic dims for the analysis and the checks")
    p.add_argument("--inputs", metavar="FEEDS.npz",
                   help="example inputs for the checks, an .npz of arrays named by model input (for inputs with a "
                        "meaning: token ids, a sample rate)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="graphprune", description="Graph-level structured pruning compiler.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="prune a built-in model, check the oracle, export slim ONNX, print the table")
    d.add_argument("--model", default="resnet18")
    d.add_argument("--config", default="full", choices=["small", "full"])
    d.add_argument("--ratio", type=float, default=0.5)
    d.add_argument("--importance", default="l2")
    d.add_argument("-o", "--output", type=Path, default=Path("out/slim.onnx"))
    d.set_defaults(fn=cmd_demo)
    i = sub.add_parser("inspect", help="print the dependency groups of an ONNX file or a zoo model")
    i.add_argument("model", help="path to a .onnx file, or a zoo model name")
    i.add_argument("--config", default="small", choices=["small", "full"])
    i.add_argument("--json", action="store_true", help="print the groups as JSON")
    _input_flags(i)
    i.set_defaults(fn=cmd_inspect)
    pr = sub.add_parser("prune", help="prune an ONNX file into a smaller ONNX file (checked by the oracle)")
    pr.add_argument("model", help="input .onnx file")
    pr.add_argument("-o", "--output", required=True, help="output .onnx file (written only if every check passes)")
    pr.add_argument("--ratio", type=float, default=0.3)
    pr.add_argument("--importance", default="auto",
                    help="criterion: auto (obs with --calib, else l2), l1, l2, lamp, bn_scale, random, activation, "
                         "fluctuation, obs")
    pr.add_argument("--calib", help="calibration inputs: an .npz of arrays named by model input, samples along dim 0 "
                                    "(channels are then ranked from data and layers refit)")
    pr.add_argument("--calib-batch", type=int, default=8, help="samples per calibration batch (default 8)")
    pr.add_argument("--no-compensate", action="store_true", help="with --calib: rank from data, but do not refit")
    pr.add_argument("--add-bias", action="store_true",
                    help="with --calib: let compensation give a bias to a Conv/Gemm/MatMul that has none")
    pr.add_argument("--budget", help="a target instead of --ratio: macs=0.5, params=0.6, params=20e6 (a fraction "
                                     "<= 1 of the original or an absolute count; several comma-separated)")
    pr.add_argument("--allocation", default="auto", choices=["auto", "uniform", "sensitivity", "global"],
                    help="per-layer ratios: auto (sensitivity with --calib: the same parameter budget, spent where "
                         "the measured output error is least), uniform (--ratio everywhere), global (channels "
                         "ranked across layers by normalised importance)")
    pr.add_argument("--ratios", help="per-group overrides of --ratio: KIND=R, NAME=R (an initializer name or "
                                     "prefix), GROUP_ID=R, comma-separated (ffn=0.5,head=0.2)")
    pr.add_argument("--max-ratio", type=float, default=None,
                    help="with --allocation global: the most any group loses (default 0.9)")
    pr.add_argument("--round-to", type=int, default=8,
                    help="keep channel counts multiples of this (default 8: odd widths run slowly)")
    pr.add_argument("--ignore", nargs="*", default=[], help="initializer names to keep whole")
    pr.add_argument("--targets", nargs="*", default=None,
                    help="what to prune: heads, query_heads, ffn, hidden, head_dim, conv_groups, blocks (whole "
                         "residual branches, scored on --calib) (default: heads for models with attention, else "
                         "channels and conv groups)")
    pr.add_argument("--no-latency", action="store_true", help="skip the onnxruntime latency measurement")
    pr.add_argument("--layers", action="store_true", help="also print the kept width of every weight")
    pr.add_argument("--plot-layers", metavar="PNG", help="save a plot of the kept width per layer (needs matplotlib)")
    _input_flags(pr)
    pr.set_defaults(fn=cmd_prune)
    z = sub.add_parser("zoo", help="list the reference models")
    z.set_defaults(fn=cmd_zoo)
    ns = p.parse_args(argv)
    try:
        return ns.fn(ns)
    except GraphpruneError as exc:
        print(f"graphprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
