"""Why a channel space is frozen or inexact: structured records instead of strings.

The rules, the solver, the graph and the front-ends record a :class:`Reason` when they
freeze a slot or mark it inexact. ``str(reason)`` is its ``detail``, the sentence users
read in summaries, reports and errors; code reads ``kind`` (one of the constants below)
and the node fields, never the text.

Example:
    >>> from graphprune.reasons import MODEL_IO, Reason
    >>> r = Reason(MODEL_IO, "model input 'x' dim 1", node="x")
    >>> str(r), r.kind == MODEL_IO
    ("model input 'x' dim 1", True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ir import Node

KINDS: dict[str, str] = {}  # the closed set: kind -> what it means


def _kind(name: str, meaning: str) -> str:
    KINDS[name] = meaning
    return name


# ---- frozen: the space keeps every index --------------------------------------------------------
UNKNOWN_OP = _kind("unknown_op", "an op with no coupling rule: every dim it touches is frozen")
QUANTIZED = _kind("quantized", "an integer op of a quantized graph (no rule): prune the float model first")
MODEL_IO = _kind("model_io", "a dim of a model input or output: the model's interface keeps its sizes")
CONSTANT = _kind("constant", "an integer constant indexed along a channel: back-ends slice float weights only")
LIFTED_CONSTANT = _kind("lifted_constant", "a tensor the trace lifted from module state, which no rewrite reaches")
OP_ARGUMENT = _kind("op_argument", "carried only by an op argument (Resize scales), by no tensor the graph computes")
SYMBOLIC = _kind("symbolic", "a dynamic (symbolic) size, or an op relating one to static sizes")
SHAPE_CONFLICT = _kind("shape_conflict", "layouts with no common refinement (a reshape across split boundaries)")
COMPUTED = _kind("computed", "a size, bound or axis the graph computes or an op's arguments set: no back-end "
                             "rewrites it")
INDEXED = _kind("indexed", "a dim indexed by data or at fixed positions (gather, select, embedding rows, argmax)")
SPATIAL = _kind("spatial", "spatial positions a window, padding or sub-pixel shuffle acts on")
POSITIONAL = _kind("positional", "positions whose order matters (causal or triangular masks, flip, roll)")
LAYOUT = _kind("layout", "a dim a shape op lays out in a fixed way: stacked, repeated, tiled, unevenly split, strided")
CHANNEL_MIXING = _kind("channel_mixing", "channels rearranged or normalised across (DepthToSpace, LRN)")
OPAQUE = _kind("opaque", "crosses a module whose forward reads tensor data, recorded as one call: not followed into")
CONTROL_FLOW = _kind("control_flow", "crosses an If/Loop/Scan subgraph, which graphprune does not follow")
RECURRENT_STATE = _kind("recurrent_state", "a recurrence's time steps, or an activation that moves a removed unit")
UNSUPPORTED = _kind("unsupported", "a configuration of a known op that graphprune does not handle (proj_size)")
NOT_CHANNEL = _kind("not_channel", "structure inside a weight that is no channel (kernel window, gates): never a group")
# ---- inexact: prunable, but the pruned model cannot equal the masked original -------------------
NORMALISED = _kind("normalised", "normalised over the dim (layer, RMS or group norm)")
REDUCED = _kind("reduced", "reduced by a mean, variance, max or product over the dim, or a running product")
SOFTMAX = _kind("softmax", "a softmax (or log-softmax, hardmax) along the dim")
SDPA_SCALE = _kind("sdpa_scale", "the default 1/sqrt(head_dim) scale of fused attention")

INEXACT_KINDS = frozenset({NORMALISED, REDUCED, SOFTMAX, SDPA_SCALE})


@dataclass(frozen=True, slots=True)
class Reason:
    """One freeze or inexact verdict: what kind, the sentence users read, and where.

    ``op``, ``node``, ``module`` and ``source`` name the node the verdict comes from (empty
    where none does: a model input, a symbolic size declared before any rule runs).
    """

    kind: str
    detail: str
    op: str = ""
    node: str = ""
    module: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown reason kind {self.kind!r}; the kinds are {sorted(KINDS)}")

    def __str__(self) -> str:
        return self.detail

    @property
    def meaning(self) -> str:
        """What the kind means, in one line."""
        return KINDS[self.kind]

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail, "op": self.op, "node": self.node, "module": self.module,
                "source": self.source}


def site(node: Node | None) -> dict[str, str]:
    """The Reason fields that locate ``node`` (a graphprune.ir.Node; None: nowhere)."""
    if node is None:
        return {}
    return {"op": node.op, "node": node.name, "module": node.meta.module, "source": node.meta.source}


def at(kind: str, detail: str, node: Node | None) -> Reason:
    """A Reason located at ``node``."""
    return Reason(kind, detail, **site(node))
