"""Consumer sites: the ops that contract an activation's channels with a weight.

Calibration and compensation look at a channel where it is *consumed*: the input
columns of a linear map or convolution. Removing channel j there removes column j
of the weight, and what that costs, or how the remaining columns can make up for
it, depends on the input statistics at that op. A site is found from the IR alone
(plain data: no torch, no onnx), for both front-ends.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import DependencyGraph
from ..ir import Node, Ref
from ..ops import Ops

FP64_MAX = 2048  # wider sites keep their Grams, and solve their refits, in float32 (stats.py, refit.py)
# How a site's input is kept for its refit (and OBS): "auto" chooses by rows_route; "gram" / "rows" force a route
ROUTE = "auto"


def rows_route(width: int, samples: int) -> bool:
    """Whether a site of ``width`` features (constant 1 included) keeps its ``samples`` themselves
    rather than Grams (calib/rowspace.py): where the Grams are float32 and hundreds of MB (above
    FP64_MAX features) and calibration has fewer samples than features, the samples are the smaller
    (N x F against two or three F x F) and the row-space solve the cheaper (N^2 F against F^3)."""
    if ROUTE != "auto":
        return ROUTE == "rows"
    return width > FP64_MAX + 1 and samples < width


@dataclass(frozen=True, slots=True)
class Site:
    """One op computing ``y = W x (+ b)`` over the channels of ``x``.

    ``w_in`` / ``w_out`` are the weight dims facing the input and output channels; ``x_dim``
    the channel dim of the input. Convolutions also give their window (kernel, stride,
    padding, dilation) and ``groups``: the input features of a refit are the unfolded
    patches (channel-major, kernel positions inner).
    """

    node: str
    x: str
    w: str  # IR value of the weight
    b: str | None
    w_in: int
    w_out: int
    x_dim: int
    kind: str  # "linear" | "conv"
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    @property
    def window(self) -> int:
        return int(np.prod(self.kernel)) if self.kernel else 1


def _ref(a) -> str | None:
    return a.name if isinstance(a, Ref) else None


def _ints(v, n: int, default: int) -> tuple[int, ...]:
    if v is None:
        return (default,) * n
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    return v if len(v) == n else (v * n)[:n]


# Ops that hand a weight on unchanged where dtype and shape stay: whisper's layers call ``self.weight.to(x.dtype)``
_SAME = {"aten.to", "aten._to_copy", "aten.type_as", "aten.contiguous", "aten.clone", "aten.detach", "aten.alias"}


def _stored(node: Node, dg: DependencyGraph, producers: dict[str, Node], users: dict[str, list]) -> Node:
    """``node`` with each weight it reads through a same-dtype, same-shape cast or copy replaced by the stored
    tensor: where a layer casts its weight to the input's dtype, the cast is its weight (a site the refit
    writes back to the stored tensor). Only a copy this node alone reads: one written in place afterwards
    (``w = W.clone(); w[:, k:].mul_(0)``) is not the stored weight (review)."""
    values, args, changed = dg.ir.values, list(node.args), False
    for i, a in enumerate(args):
        alone = isinstance(a, Ref) and values[a.name].kind == "act" and len(users.get(a.name, ())) == 1
        src = producers.get(a.name) if alone else None
        if src is not None and src.op in _SAME and src.inputs:
            base = values[src.inputs[0]]
            if base.kind in ("param", "buffer", "const") and (base.dtype, base.shape) == (values[a.name].dtype,
                                                                                       values[a.name].shape):
                args[i], changed = Ref(base.name), True
    if not changed:
        return node
    return Node(node.name, node.op, tuple(args), node.kwargs, node.outputs, node.meta)


def _site(node: Node, dg: DependencyGraph) -> Site | None:
    values, op, a = dg.ir.values, node.op, node.args
    weight = lambda name: name is not None and values[name].kind in ("param", "buffer", "const")  # noqa: E731
    if op in Ops.Linear and weight(_ref(a[1])):
        if op == "onnx.Gemm":
            return _gemm_site(node, values)
        b = _ref(a[2]) if len(a) > 2 else _ref(node.kwargs.get("bias"))
        return Site(node.name, a[0].name, a[1].name, b, 1, 0, -1, "linear")
    if op == "aten.addmm" and weight(_ref(a[2])) and values[a[2].name].rank == 2:  # GPT-2's Conv1D: b + x @ W
        return Site(node.name, a[1].name, a[2].name, _ref(a[0]), 0, 1, -1, "linear")
    if op in Ops.MatMul and weight(_ref(a[1])) and values[a[1].name].rank == 2 and not weight(_ref(a[0])):
        return Site(node.name, a[0].name, a[1].name, None, 0, 1, -1, "linear")
    if op in Ops.Conv and weight(_ref(a[1])):
        return _onnx_conv_site(node, values) if op.startswith("onnx.") else _conv_site(node, values)
    return None


def _gemm_site(node: Node, values) -> Site | None:
    a, k = node.args, node.kwargs
    if k.get("transA", 0):
        return None
    trans = bool(k.get("transB", 0))
    b = _ref(a[2]) if len(a) > 2 else None
    if b is not None and values[b].rank != 1:
        b = None  # a 2-D C is no per-output bias
    return Site(node.name, a[0].name, a[1].name, b, 1 if trans else 0, 0 if trans else 1, -1, "linear")


def _conv_site(node: Node, values) -> Site | None:
    a = node.args
    nsp = values[a[1].name].rank - 2
    arg = lambda i, key, default: a[i] if len(a) > i else node.kwargs.get(key, default)  # noqa: E731
    if values[a[0].name].rank != nsp + 2:
        return None  # unbatched convolution
    kernel, dilation, padding = tuple(values[a[1].name].shape[2:]), _ints(arg(5, "dilation", 1), nsp, 1), arg(4, "padding", 0)
    if isinstance(padding, str):  # conv2d(padding="same" / "valid"): the .padding overload
        total = [0] * nsp if padding == "valid" else [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(t % 2 for t in total):
            return None  # "same" with an even kernel pads one more on the right: the unfold cannot
        padding = tuple(t // 2 for t in total)
    return Site(node.name, a[0].name, a[1].name, _ref(arg(2, "bias", None)), 1, 0, 1, "conv",
                kernel, _ints(arg(3, "stride", 1), nsp, 1), _ints(padding, nsp, 0), dilation, int(arg(6, "groups", 1)))


def _onnx_conv_site(node: Node, values) -> Site | None:
    a, k = node.args, node.kwargs
    nsp = values[a[1].name].rank - 2
    pads = k.get("pads")
    if k.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or (pads and list(pads[:nsp]) != list(pads[nsp:])):
        return None  # asymmetric padding: the unfold cannot reproduce it
    return Site(node.name, a[0].name, a[1].name, _ref(a[2]) if len(a) > 2 else None, 1, 0, 1, "conv",
                tuple(values[a[1].name].shape[2:]), _ints(k.get("strides"), nsp, 1),
                _ints(pads[:nsp] if pads else 0, nsp, 0), _ints(k.get("dilations"), nsp, 1), int(k.get("group", 1)))


def find_sites(dg: DependencyGraph) -> list[Site]:
    """Every consumer site of the graph, in graph order; weights must have static shapes."""
    out, producers, users = [], dg.ir.producers(), dg.ir.consumers()
    for node in dg.ir.nodes:
        s = _site(_stored(node, dg, producers, users), dg)
        if s is not None and dg.ir.values[s.w].is_static and dg.ir.values[s.x].is_static:
            out.append(s)
    return out


def column_coords(dg: DependencyGraph, site: Site, gid: int) -> list[np.ndarray]:
    """For each occurrence of group ``gid`` in the site's input channels: the group index of
    every input channel (-1 where the group is absent)."""
    v = dg.ir.values[site.x]
    term = dg.solver.layout((site.x, site.x_dim % v.rank))
    return dg.solver_coords(term, gid)


def sites_by_group(dg: DependencyGraph, sites: list[Site], gids) -> dict[int, list[Site]]:
    """Group id -> the sites whose input channels carry it."""
    wanted = set(gids)
    out: dict[int, list[Site]] = {g: [] for g in wanted}
    for s in sites:
        v = dg.ir.values[s.x]
        for atom in dg.solver.atoms(dg.solver.layout((s.x, s.x_dim % v.rank))):
            if atom in wanted:
                out[atom].append(s)
    return out
