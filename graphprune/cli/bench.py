"""``graphprune bench MODEL [PRUNED]``: measured latency, side by side.

onnxruntime (a PyTorch model is exported first, dynamic batch) and PyTorch eager, at each
``--batch``, on ``--threads`` threads, median of ``--repeat`` runs after a warm-up. The example
inputs' first item is repeated to the batch size, so both models see the same data.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import GraphpruneError
from ..io import sources
from ..io.onnx_export import export_onnx
from ..program.onnx_program import OnnxProgram
from ..util.tables import table
from .common import MODEL_HELP, input_flags, load_feeds, parse_input_shapes, step


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: first-run allocations and kernel selection
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _tile(a, batch: int):
    """The first item repeated ``batch`` times along dim 0 (numpy or torch)."""
    if a.ndim == 0:
        return a
    first = a[:1]
    return np.repeat(first, batch, axis=0) if isinstance(a, np.ndarray) else first.repeat(batch, *[1] * (a.dim() - 1))


class _Bench:
    """One model, ready to time in each runtime."""

    def __init__(self, spec: str, ns: argparse.Namespace, tmp: Path) -> None:

        self.spec, self.ns = spec, ns
        self.src = sources.load(spec, parse_input_shapes(ns.input_shape), ns.config)
        if self.src.is_onnx:

            self.onnx_path = self.src.path
            self.feeds = OnnxProgram.load(self.src.path, load_feeds(ns.inputs), parse_input_shapes(ns.input_shape)).feeds()
        else:

            self.onnx_path = tmp / f"{len(list(tmp.iterdir()))}.onnx"
            export_onnx(self.src.model, self.src.args, self.onnx_path, self.src.kwargs)
            self.feeds = None  # built from the torch inputs, by the exported input names

    def onnxruntime(self, batch: int) -> float:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = self.ns.threads
        sess = ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])
        if self.feeds is not None:
            feeds = {k: _tile(np.asarray(v), batch) for k, v in self.feeds.items()}
        else:
            flat = [t.detach().numpy() for t in list(self.src.args) + list(self.src.kwargs.values())]
            feeds = {i.name: _tile(a, batch) for i, a in zip(sess.get_inputs(), flat)}
        try:
            return _median_ms(lambda: sess.run(None, feeds), self.ns.repeat)
        except Exception as exc:  # onnxruntime's own exception types
            raise GraphpruneError(f"onnxruntime cannot run {self.spec} at batch {batch}: {str(exc).splitlines()[0]} "
                                  "(a fixed batch dim? use --batch with the model's batch)") from exc

    def torch(self, batch: int) -> float | None:
        if self.src.is_onnx:
            return None
        import torch

        torch.set_num_threads(self.ns.threads)
        args = tuple(_tile(a, batch) for a in self.src.args)
        kwargs = {k: _tile(v, batch) for k, v in self.src.kwargs.items()}
        model = self.src.model.eval()
        with torch.inference_mode():
            return _median_ms(lambda: model(*args, **kwargs), self.ns.repeat)


def cmd_bench(ns: argparse.Namespace) -> int:

    if ns.threads < 1 or ns.repeat < 1 or any(b < 1 for b in ns.batch):
        raise GraphpruneError("--threads, --repeat and --batch must be >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = [ns.model] + ([ns.pruned] if ns.pruned else [])
        benches = []
        for k, spec in enumerate(specs, 1):
            step(k, len(specs) + 1, f"loading {spec}", ns.json)
            benches.append(_Bench(spec, ns, Path(tmp)))
        step(len(specs) + 1, len(specs) + 1, "timing", ns.json)
        for runtime in ns.runtime:
            for batch in ns.batch:
                ms = [getattr(b, runtime)(batch) for b in benches]
                if ms[0] is None:
                    continue  # an ONNX model has no PyTorch latency
                row = {"runtime": runtime, "batch": batch, "threads": ns.threads, "model_ms": ms[0]}
                if len(ms) > 1 and ms[1] is not None:
                    row["pruned_ms"], row["speedup"] = ms[1], ms[0] / ms[1]
                rows.append(row)
    if ns.json:
        print(json.dumps({"model": ns.model, "pruned": ns.pruned, "rows": rows}, indent=1))
        return 0
    head = ["runtime", "batch", "threads", ns.model] + ([ns.pruned, "speedup"] if ns.pruned else [])
    print(table(head, [[r["runtime"], r["batch"], r["threads"], f"{r['model_ms']:.3f} ms"]
                       + ([f"{r['pruned_ms']:.3f} ms", f"{r['speedup']:.2f}x"] if "pruned_ms" in r
                          else ["-", "-"] if ns.pruned else [])  # an ONNX file has no PyTorch time
                       for r in rows]))
    return 0


def arguments(b: argparse.ArgumentParser) -> None:
    """``graphprune bench``'s flags."""
    b.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    b.add_argument("pruned", metavar="PRUNED", nargs="?", help="a second model to compare (same inputs)")
    b.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    b.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op / torch threads (default 1)")
    b.add_argument("--repeat", type=int, default=20, help="timed runs per measurement, median reported")
    b.add_argument("--runtime", nargs="+", default=["onnxruntime", "torch"], choices=["onnxruntime", "torch"])
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    input_flags(b)


run = cmd_bench
