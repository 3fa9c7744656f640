"""One registry of coupling rules, keyed by canonical op id.

A rule is a function ``rule(node, ctx)`` that states how the node's dim slots
relate, through the :class:`RuleContext`. Whole op families register in one line
with :func:`defelementwise` / :func:`defbroadcasting`. An op with no rule is never
guessed: :func:`apply_rules` freezes every slot it touches and names the op.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..ir import Graph, Node, Ref
from ..reasons import COMPUTED, NOT_CHANNEL, QUANTIZED, SYMBOLIC, UNKNOWN_OP, Reason, site
from ..spaces import SlotKey, Solver
from . import load_all

Rule = Callable[[Node, "RuleContext"], None]
RULES: dict[str, Rule] = {}


@dataclass(frozen=True, slots=True)
class Carry:
    """A constant argument of a node that spells out the size of a slot.

    ``path`` locates it in the node's args: (arg index,) or (arg index, list index).
    Back-ends rewrite it when the slot's size changes.
    """

    node: str
    path: tuple[Any, ...]
    key: SlotKey
    value: int


def register(*ops: str) -> Callable[[Rule], Rule]:
    """Decorator: register ``rule`` for each op id in ``ops``."""

    def deco(rule: Rule) -> Rule:
        for op in ops:
            if op in RULES:
                raise ValueError(f"duplicate coupling rule for op '{op}'")
            RULES[op] = rule
        return rule

    return deco


def defelementwise(*ops: str) -> None:
    """Unary ops that act on each element independently: output dims tie input dims."""

    def rule(node: Node, ctx: RuleContext) -> None:
        ctx.tie_broadcast(node.outputs[0], [r.name for r in ctx.tensor_args(node)[:1]])

    register(*ops)(rule)


def defbroadcasting(*ops: str) -> None:
    """N-ary ops with numpy broadcasting: dims aligned from the right tie."""

    def rule(node: Node, ctx: RuleContext) -> None:
        ctx.tie_broadcast(node.outputs[0], [r.name for r in ctx.tensor_args(node)])

    register(*ops)(rule)


def defopaque_outputs(*ops: str) -> None:
    """Ops that create tensors from constants (arange, zeros): no coupling to inputs.

    Their output sizes come from the op's arguments, which no back-end can track,
    so the output dims are frozen.
    """

    def rule(node: Node, ctx: RuleContext) -> None:
        for out in node.outputs:
            ctx.freeze_value(out, COMPUTED, f"size set by the arguments of {node.where()}")

    register(*ops)(rule)


class RuleContext:
    """What a rule may do: read shapes and args, relate slots.

    A rule states a freeze or inexact verdict as a kind (graphprune.reasons) and a sentence;
    the context adds the op, node, module and source line of the node being processed.
    """

    def __init__(self, graph: Graph, solver: Solver) -> None:
        self.graph = graph
        self.solver = solver
        self.carries: list[Carry] = []
        # Weights the masked original must zero too: an op that keeps state inside (a
        # recurrence) would otherwise feed a pruned unit back into the kept ones.
        self.masked_weights: set[str] = set()
        self._node: Node | None = None
        self.dead = graph.dead_nodes()  # their results reach no output: nothing they compute can differ
        self._users: dict[str, list[Node]] | None = None
        self._producers: dict[str, Node] | None = None

    @property
    def node(self) -> Node | None:
        """The node whose rule runs."""
        return self._node

    @node.setter
    def node(self, node: Node | None) -> None:
        self._node = node
        self.solver.origin = site(node)  # the solver's conflicts name the node too

    # ---- reading ----------------------------------------------------------------------
    def shape(self, value: str | Ref) -> tuple:
        name = value.name if isinstance(value, Ref) else value
        return self.graph.values[name].shape

    def rank(self, value: str | Ref) -> int:
        return len(self.shape(value))

    @staticmethod
    def tensor_args(node: Node) -> list[Ref]:
        return [a for a in node.args if isinstance(a, Ref)]

    @staticmethod
    def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(name, default)

    def where(self) -> str:
        return self.node.where() if self.node else "?"

    def producer(self, value: str | Ref) -> Node | None:
        """The node that makes ``value`` (None for inputs and stored tensors)."""
        if self._producers is None:
            self._producers = self.graph.producers()
        return self._producers.get(value.name if isinstance(value, Ref) else value)

    def stored(self, name: str) -> bool:
        """Whether ``name`` is a stored tensor (a weight, buffer or constant), or a window of one: ImageGPT slices
        its mask buffer twice, bias[:, :, k - q:k, :k]."""
        for _ in range(8):
            if self.graph.values[name].kind in ("param", "buffer", "const"):
                return True
            node = self.producer(name)
            if node is None or node.op not in _VIEWS or not isinstance(node.args[0], Ref):
                return False
            name = node.args[0].name
        return False

    def users(self, value: str | Ref) -> list[Node]:
        """The nodes that read ``value``."""
        if self._users is None:
            self._users = self.graph.consumers()
        return self._users.get(value.name if isinstance(value, Ref) else value, [])

    # ---- slots -------------------------------------------------------------------------
    def s(self, value: str | Ref, dim: int) -> SlotKey:
        name = value.name if isinstance(value, Ref) else value
        rank = len(self.graph.values[name].shape)
        if not -rank <= dim < rank:
            raise IndexError(f"dim {dim} out of range for '{name}' of rank {rank} at {self.where()}")
        return (name, dim % rank)

    def virtual(self, size: int, label: str) -> SlotKey:
        return self.solver.virtual(size, f"{self.node.name if self.node else ''}:{label}")

    # ---- relations ---------------------------------------------------------------------------
    def tie(self, a: SlotKey, b: SlotKey) -> None:
        self.solver.tie(a, b, self.where())

    def tie_dims(self, a: str | Ref, b: str | Ref, dims_a: Iterable[int], dims_b: Iterable[int]) -> None:
        for da, db in zip(dims_a, dims_b):
            self.tie(self.s(a, da), self.s(b, db))

    def tie_broadcast(self, out: str, inputs: Sequence[str]) -> None:
        """Right-aligned broadcasting: each input dim ties the output dim it lines up with."""
        out_rank = self.rank(out)
        for name in inputs:
            rank = self.rank(name)
            for d in range(rank):
                od = out_rank - rank + d
                if od >= 0:
                    self.tie(self.s(name, d), self.s(out, od))

    def concat(self, out: SlotKey, parts: Sequence[SlotKey]) -> None:
        self.solver.concat(out, parts, self.where())

    def factor(self, flat: SlotKey, parts: Sequence[SlotKey], why: str = "") -> None:
        """flat = product of parts; ``why`` says, in a freeze's reason, what the factors mean where they
        cannot line up with how other nodes split the same channels."""
        self.solver.factor(flat, parts, self.where() + (f", {why}" if why else ""))

    def reason(self, kind: str, detail: str) -> Reason:
        """A Reason of ``kind`` located at the node being processed."""
        return Reason(kind, detail, **site(self.node))

    def freeze(self, key: SlotKey, kind: str, detail: str) -> None:
        self.solver.freeze(key, self.reason(kind, detail))

    def freeze_value(self, value: str | Ref, kind: str, detail: str) -> None:
        reason = self.reason(kind, detail)
        for d in range(self.rank(value)):
            self.solver.freeze(self.s(value, d), reason)

    def inexact(self, key: SlotKey, kind: str, detail: str) -> None:
        if self._node is None or self._node.name not in self.dead:
            self.solver.inexact(key, self.reason(kind, detail))

    def hide(self, key: SlotKey, detail: str) -> None:
        """Freeze a slot that is no channel at all (a kernel window, gates): never a group."""
        self.solver.hide(key, self.reason(NOT_CHANNEL, detail))

    def mask_weight(self, value: str | Ref) -> None:
        """The oracle's masked original zeroes ``value``'s pruned positions (not only the
        activations'): for ops whose state never leaves them."""
        self.masked_weights.add(value.name if isinstance(value, Ref) else value)

    def carry(self, key: SlotKey, path: tuple[Any, ...], value: int) -> None:
        """Record that a constant in the node's args spells out key's size. A size read at run time
        (split by counts from data) is no constant a rewrite could change: the slot keeps its size."""
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            self.freeze(key, SYMBOLIC, f"its size {value!r} is computed at run time at {self.where()}")
            return
        self.carries.append(Carry(self.node.name, path, key, value))


def declare_slots(graph: Graph, solver: Solver) -> None:
    for v in graph.values.values():
        for d, size in enumerate(v.shape):
            solver.declare((v.name, d), size if isinstance(size, int) else None)


# ops whose output is a window or a relabelling of their first input (RuleContext.stored)
_VIEWS = frozenset({"aten.slice", "aten.slice_copy", "aten.select", "aten.narrow", "aten.unsqueeze", "aten.alias",
                    "aten.detach", "aten._to_copy", "onnx.Slice", "onnx.Unsqueeze", "onnx.Cast", "onnx.Identity"})

# Integer ops of quantized ONNX graphs: their weights are int8 with scales beside them.
_QUANTIZED = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear",
              "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLSTM", "QGemm", "QAttention"}


def apply_rules(graph: Graph, solver: Solver) -> RuleContext:
    """Run every node's rule; freeze whatever an unknown op touches."""

    load_all()
    ctx = RuleContext(graph, solver)
    for node in graph.nodes:
        ctx.node = node
        rule = RULES.get(node.op)
        if rule is None:
            detail = f"no coupling rule for op {node.op} at {node.where()}"
            kind = UNKNOWN_OP
            if node.op.split(".")[-1] in _QUANTIZED:
                detail += "; the graph is quantized: prune the float model, then quantize it"
                kind = QUANTIZED
            for name in dict.fromkeys(node.inputs + node.outputs):
                ctx.freeze_value(name, kind, detail)
            continue
        rule(node, ctx)
    ctx.node = None
    return ctx
