"""A latency lookup table: every convolution and linear layer timed alone at a few widths.

NetAdapt and HALP plan against a table of measured layer latencies instead of timing whole
candidate models. Here each consumer site (graphprune.calib.sites: convolutions, linears,
matmuls with a weight) is timed on the target runtime as a single op at its real input size,
with its input and output channels each kept at 1/4, 1/2, 3/4 and all of their width (four
points for a depthwise conv, whose two are one), and a plan's latency is estimated as

    the original model's measured latency - sum of the sites' full-width times
                                          + sum of the sites' times at the plan's widths

(bilinear between table points). What the sites do not cover (activations, pooling, adds) is
taken as unchanged, so the estimate errs towards too little speedup; the latency budget
measures the chosen plan once and corrects its target (pipeline). Timings are cached per
runtime, machine and layer shape under ``~/.cache/graphprune/latency``: a second prune of the
same model times nothing.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..calib.sites import find_sites
from ..util.atomic import write_bytes_atomic
from .measure import best_of, cache_root, machine_id, ort_session

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SiteOp:
    """One site as a standalone op: what is timed, and which slots give its widths."""

    node: str
    kind: str  # "conv" | "linear"
    x_shape: tuple[int, ...]  # the input at the example shape (channels at x_dim)
    w_shape: tuple[int, ...]
    x_slot: tuple[str, int]  # (value, dim) of the input channels
    out_slot: tuple[str, int]  # (value, dim) of the weight's output channels
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.x_shape[1] and self.w_shape[1] == 1

    def key(self, cin: int, cout: int) -> str:
        return json.dumps([self.kind, self.x_shape, self.w_shape, self.stride, self.padding, self.dilation,
                           self.depthwise, self.groups if not self.depthwise else 0, cin, cout])


def site_ops(dg) -> list[SiteOp]:
    """Every timeable site of the graph (grouped convolutions other than depthwise are left to
    the rest of the model: their group count, not their width, is what a plan changes)."""

    out = []
    values = dg.ir.values
    for s in find_sites(dg):
        x, w = values[s.x], values[s.w]
        xd = s.x_dim % x.rank
        op = SiteOp(s.node, s.kind, tuple(x.shape), tuple(w.shape), (s.x, xd), (s.w, s.w_out), s.stride,
                    s.padding, s.dilation, s.groups)
        if s.kind == "conv" and (xd != 1 or len(s.kernel) != 2 or (s.groups > 1 and not op.depthwise)):
            continue
        out.append(op)
    return out


def _cache_file(runtime: str) -> Path:
    key = machine_id(runtime, 1)
    return cache_root() / "latency" / f"{runtime}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _time_op(runtime: str, op: SiteOp, cin: int, cout: int) -> float:
    """One op at ``cin`` inputs and ``cout`` outputs, best of runs (ms)."""
    rng = np.random.default_rng(0)
    if op.kind == "conv":
        groups = cin if op.depthwise else 1
        x = rng.standard_normal((op.x_shape[0], cin) + op.x_shape[2:]).astype(np.float32)
        w = rng.standard_normal((cout, cin // groups) + op.w_shape[2:]).astype(np.float32)
    else:
        rows = int(math.prod(op.x_shape[:-1]))
        x = rng.standard_normal((rows, cin)).astype(np.float32)
        w = rng.standard_normal((cin, cout)).astype(np.float32)
    if runtime == "torch":
        import torch
        import torch.nn.functional as F

        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the model is timed (TorchProgram.latency_ms)
        try:
            with torch.no_grad():
                if op.kind == "conv":
                    return best_of(lambda: F.conv2d(tx, tw, None, op.stride, op.padding, op.dilation,
                                                    cin if op.depthwise else 1), budget_s=0.02, least=3)
                return best_of(lambda: tx @ tw, budget_s=0.02, least=3)
        finally:
            torch.set_num_threads(threads)
    from onnx import TensorProto, helper, numpy_helper

    if op.kind == "conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(op.stride), dilations=list(op.dilation),
                                pads=list(op.padding) * 2, group=cin if op.depthwise else 1)
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort_session(model.SerializeToString())
    feeds = {"x": x}
    return best_of(lambda: sess.run(None, feeds), budget_s=0.02, least=3)


def _grid(size: int, step: int) -> list[int]:
    return sorted({max(step, min(size, int(round(size * f / step)) * step)) for f in FRACTIONS} | {size})


class LatencyTable:
    """Measured op times for one runtime on this machine, kept on disk between prunes."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.path = _cache_file(runtime)
        try:
            self.times: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.times = {}
        self.measured = 0  # ops timed by this table (not found in the cache)

    def time(self, op: SiteOp, cin: int, cout: int) -> float:
        key = op.key(cin, cout)
        if key not in self.times:
            self.times[key] = _time_op(self.runtime, op, cin, cout)
            self.measured += 1
        return self.times[key]

    def save(self) -> None:
        if not self.measured:
            return
        try:
            write_bytes_atomic(self.path, json.dumps(self.times, sort_keys=True).encode())
        except OSError:
            pass  # read-only cache: measured again next time


class LatencyModel:
    """Estimated latency of the model for any kept widths, from a :class:`LatencyTable`."""

    def __init__(self, dg, runtime: str, full_ms: float, step: Callable[[tuple[str, int]], int] = lambda s: 1,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.table = LatencyTable(runtime)
        self.ops = site_ops(dg)
        self.points: list[tuple[list[int], list[int], np.ndarray]] = []
        todo = len(self.ops)
        for i, op in enumerate(self.ops):
            cin_full, cout_full = op.x_shape[op.x_slot[1]], op.w_shape[op.out_slot[1]]
            ins = _grid(cin_full, step(op.x_slot))
            outs = ins if op.depthwise else _grid(cout_full, step(op.out_slot))
            grid = np.array([[self.table.time(op, ci, ci if op.depthwise else co) for co in outs] for ci in ins])
            self.points.append((ins, outs, grid))
            if progress is not None:
                progress(i + 1, todo)
        self.table.save()
        # Ops timed alone can add up to more than the whole model measured (per-run overheads, a
        # busy machine): the rest is then nothing, never negative (a negative floor is no budget).
        self.rest = max(0.0, full_ms - sum(float(g[-1, -1]) for _, _, g in self.points))

    def estimate(self, size: Callable[[tuple[str, int]], int]) -> float:
        """Latency (ms) with each slot's kept size given by ``size``."""
        total = self.rest
        for op, (ins, outs, grid) in zip(self.ops, self.points):
            ci = size(op.x_slot)
            co = ci if op.depthwise else size(op.out_slot)
            total += max(0.0, _bilinear(ins, outs, grid, ci, co))  # extrapolated below the grid: >= 0
        return total


def _bilinear(xs: list[int], ys: list[int], grid: np.ndarray, x: float, y: float) -> float:
    i = min(max(int(np.searchsorted(xs, x)) - 1, 0), max(len(xs) - 2, 0))
    j = min(max(int(np.searchsorted(ys, y)) - 1, 0), max(len(ys) - 2, 0))
    if len(xs) == 1 and len(ys) == 1:
        return float(grid[0, 0])
    fx = 0.0 if len(xs) == 1 else (x - xs[i]) / max(xs[i + 1] - xs[i], 1)
    fy = 0.0 if len(ys) == 1 else (y - ys[j]) / max(ys[j + 1] - ys[j], 1)
    i1, j1 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
    top = grid[i, j] * (1 - fy) + grid[i, j1] * fy
    bottom = grid[i1, j] * (1 - fy) + grid[i1, j1] * fy
    return float(top * (1 - fx) + bottom * fx)
