"""A latency lookup table: every convolution and linear layer timed alone at a few widths.

NetAdapt and HALP plan against a table of measured layer latencies instead of timing whole
candidate models. Here each consumer site (graphprune.calib.sites: convolutions, linears,
matmuls with a weight) is timed on the target runtime as a single op at its real input size,
with its input and output channels each kept at 1/4, 1/2, 3/4 and all of their width (four
points for a depthwise conv, whose two are one), and a plan's latency is estimated as

    the original model's measured latency - sum of the sites' full-width times
                                          + sum of the sites' times at the plan's widths

(bilinear between table points). What the sites do not cover (activations, pooling, adds,
resizes, the runtime's layout reorders) is mostly memory traffic, which a narrower tensor saves
too: on PP-OCR det the hard-swish Mul / Add / Clip / Div ops of its high-resolution stem take as
long as all its convolutions. So the rest of the measured latency is split in two: the elements
the other ops write, priced at the marginal cost of an element of an Add on the runtime (timed
once per machine near the median size of those tensors; at most the whole rest), scale with the
plan's widths; what is left over (per-op and per-run overheads) stays fixed. Activations the
runtime fuses into the convolution before them are priced too, which the cap bounds. The tilt
and the latency budget measure the plans they choose (time_tilt.py, latency_budget.py).
Timings are cached per runtime, machine and layer shape under ``~/.cache/graphprune/latency``:
a second prune of the same model times nothing.
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
from ..ops import Ops
from ..util.atomic import write_bytes_atomic
from .measure import cache_root, machine_id
from .op_timing import time_add, time_op
from .placement import CPU, Placement

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
    """Every timeable site of the graph: linears and 1-D, 2-D and 3-D convolutions (grouped ones other
    than depthwise are left to the rest of the model: their group count, not their width, is what a
    plan changes)."""

    out = []
    values = dg.ir.values
    for s in find_sites(dg):
        x, w = values[s.x], values[s.w]
        xd = s.x_dim % x.rank
        op = SiteOp(s.node, s.kind, tuple(x.shape), tuple(w.shape), (s.x, xd), (s.w, s.w_out), s.stride,
                    s.padding, s.dilation, s.groups)
        if s.kind == "conv" and (xd != 1 or not 1 <= len(s.kernel) <= 3 or (s.groups > 1 and not op.depthwise)):
            continue
        out.append(op)
    return out


# ops that write no new tensor (shape arithmetic, reshapes of contiguous data): no traffic anywhere
NO_TRAFFIC = Ops.Reshape | {"aten.squeeze", "aten.unsqueeze", "aten.flatten", "aten.unflatten", "aten.alias",
                            "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Flatten", "onnx.Shape", "onnx.Constant",
                            "onnx.Identity"}
# and in eager torch, where these are strided views (onnxruntime copies their data)
TORCH_VIEWS = frozenset({"aten.permute", "aten.transpose", "aten.t", "aten.expand", "aten.slice", "aten.narrow",
                         "aten.select", "aten.split", "aten.split_with_sizes", "aten.chunk", "aten.unbind"})


def traffic(dg, skip: set[str], runtime: str, atoms: set[int] | None = None) -> tuple[int, int, list]:
    """Elements the graph's other ops write: (all of them, the part no plan changes, and for each
    output a plan can narrow, the product of its fixed dims with the slots of the others). A dim
    varies where its layout holds one of ``atoms`` (the selected groups; None: any atom). Only
    static float tensors of rank >= 2 count (scalars and shape vectors cost nothing worth a plan)."""
    values, solver = dg.ir.values, dg.solver
    free = NO_TRAFFIC | (TORCH_VIEWS if runtime == "torch" else frozenset())
    total, fixed, varying = 0, 0, []
    for n in dg.ir.nodes:
        if n.name in skip or n.op in free:
            continue
        for out in n.outputs:
            v = values.get(out)
            if v is None or v.rank < 2 or not str(v.dtype).startswith(("float", "bfloat")) or not v.is_static:
                continue
            cut = [d for d in range(v.rank)
                   if (held := set(solver.atoms(solver.layout((out, d))))) and (atoms is None or held & atoms)]
            total += math.prod(v.shape)
            if cut:
                varying.append((math.prod(int(v.shape[d]) for d in range(v.rank) if d not in cut),
                                [(out, d) for d in cut]))
            else:
                fixed += math.prod(v.shape)
    return total, fixed, varying


def element_ms(table: "LatencyTable", elements: int) -> float:
    """The marginal time of one more element written, from Adds of n and 2n elements: the per-run
    overhead in both cancels (floored at 0: timing noise). n is the power of two below ``elements``,
    at least 4096, so prunes of models with alike tensors share the cache entries."""
    n = 1 << max(12, int(elements).bit_length() - 1)
    return max(0.0, table.add_time(2 * n) - table.add_time(n)) / n


def _cache_file(runtime: str, where: Placement = CPU) -> Path:
    key = machine_id(runtime, 1, where)
    return cache_root() / "latency" / f"{runtime}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _grid(size: int, step: int) -> list[int]:
    return sorted({max(step, min(size, int(round(size * f / step)) * step)) for f in FRACTIONS} | {size})


class LatencyTable:
    """Measured op times for one runtime on this machine (a PyTorch model's: on its device, in its
    dtype), kept on disk between prunes."""

    def __init__(self, runtime: str, where: Placement = CPU) -> None:
        self.runtime, self.where = runtime, where.on(runtime)
        self.path = _cache_file(runtime, self.where)
        try:
            self.times: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.times = {}
        self.measured = 0  # ops timed by this table (not found in the cache)

    def time(self, op: SiteOp, cin: int, cout: int) -> float:
        key = op.key(cin, cout)
        if key not in self.times:
            self.times[key] = time_op(self.runtime, op, cin, cout, self.where)
            self.measured += 1
        return self.times[key]

    def add_time(self, n: int) -> float:
        key = json.dumps(["add", n])
        if key not in self.times:
            self.times[key] = time_add(self.runtime, n, self.where)
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
                 progress: Callable[[int, int], None] | None = None, groups=None, where: Placement = CPU,
                 only: Callable[[SiteOp], bool] | None = None) -> None:
        self.table, self.full_ms = LatencyTable(runtime, where), full_ms
        self.ops = [op for op in site_ops(dg) if only is None or only(op)]  # only: some layers (cliffs.py)
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
        # Ops timed alone can add up to more than the whole model measured (per-run overheads, a
        # busy machine): the rest is then nothing, never negative (a negative floor is no budget).
        self.rest = max(0.0, full_ms - sum(float(g[-1, -1]) for _, _, g in self.points))
        atoms = None if groups is None else {g.id for g in groups}
        total, self.fixed_elems, self.varying = traffic(dg, {op.node for op in self.ops}, runtime, atoms)
        self.ms_per_elem = 0.0
        if self.varying and self.rest > 0:
            typical = sorted(f * math.prod(int(dg.ir.values[n].shape[d]) for n, d in slots)
                             for f, slots in self.varying)[len(self.varying) // 2]
            self.ms_per_elem = min(element_ms(self.table, typical), self.rest / total)
        self.rest_fixed = self.rest - self.ms_per_elem * total
        self.table.save()

    def rest_ms(self, size: Callable[[tuple[str, int]], int]) -> float:
        """The time outside the timed sites at the widths ``size`` gives (see the module's docstring)."""
        if not self.ms_per_elem:
            return self.rest
        elems = self.fixed_elems + sum(f * math.prod(size(slot) for slot in slots) for f, slots in self.varying)
        return self.rest_fixed + self.ms_per_elem * elems

    def estimate(self, size: Callable[[tuple[str, int]], int]) -> float:
        """Latency (ms) with each slot's kept size given by ``size``."""
        total = self.rest_ms(size)
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
