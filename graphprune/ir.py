"""The graph IR: plain data shared by every front-end and back-end.

It deliberately imports neither torch nor onnx: front-ends lower their graphs into
these classes, the coupling rules read them, and back-ends map results back through
the names kept here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

Dim = Union[int, str]  # a static size, or a symbolic name (dynamic axis)


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to a tensor value inside a node's argument structure."""

    name: str


@dataclass(slots=True)
class Value:
    """A tensor in the graph.

    kind is one of "input", "param", "buffer", "const", "act" (an activation
    produced by a node). ``source`` names what the value stands for outside the
    graph: the parameter/buffer path for params and buffers, the input name for
    inputs.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    kind: str = "act"
    source: str | None = None
    # Small integer constants (reshape targets, split sizes, slice bounds), flattened:
    # rules read them, back-ends rewrite them. None for everything else.
    data: tuple[int, ...] | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """Front-end facts about a node, for messages and back-ends; the solver never reads them."""

    module: str = ""  # the owning module's path ("" for the top module and for ONNX nodes)
    module_type: str = ""  # its class name
    source: str = ""  # the source line, or "onnx node 'name'"
    modules: tuple[str, ...] = ()  # every enclosing module's path, outermost first (depth pruning)
    note: str = ""  # a front end's word on the node (why a module was recorded as one call), for its reasons

    def items(self):
        """(field, value) pairs, for code that lists a node's facts (graph export)."""
        return ((f, getattr(self, f)) for f in ("module", "module_type", "source", "modules", "note"))


@dataclass(slots=True)
class Node:
    """One op application.

    ``op`` is a canonical op id such as "aten.conv2d" or "onnx.Conv". ``args`` and
    ``kwargs`` keep the op's own argument structure with tensors replaced by
    :class:`Ref`, so rules can read scalar arguments by position. ``outputs`` lists
    the names of the values the node produces (several for split/unbind).
    ``meta`` holds front-end facts for messages and back-ends (:class:`NodeMeta`: owning
    module path, source line); the solver never reads it.
    """

    name: str
    op: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[str]
    meta: NodeMeta = field(default_factory=NodeMeta)
    # inputs, computed once: every analysis pass walks them (args are never changed in place)
    _inputs: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def refs(self) -> Iterator[Ref]:
        """Every tensor reference in args/kwargs, in order."""
        yield from _walk_refs(self.args)
        yield from _walk_refs(tuple(self.kwargs.values()))

    @property
    def inputs(self) -> list[str]:
        if self._inputs is None:
            self._inputs = [r.name for r in self.refs()]
        return self._inputs

    def where(self) -> str:
        """A human-readable location for error messages."""
        loc = f"node '{self.name}' (op {self.op}"
        if self.meta.module:
            loc += f", in module '{self.meta.module}'"
        if self.meta.source:
            loc += f", at {self.meta.source}"
        return loc + ")"


def _walk_refs(obj: Any) -> Iterator[Ref]:
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _walk_refs(item)


@dataclass(slots=True)
class Graph:
    """A topologically ordered list of nodes over named values."""

    values: dict[str, Value] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # source path (param/buffer FQN) -> every alias path of the same storage (tied weights)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    frontend: str = ""

    def add_value(self, value: Value) -> Value:
        if value.name in self.values:
            raise ValueError(f"duplicate value name '{value.name}'")
        self.values[value.name] = value
        return value

    def params(self) -> list[Value]:
        """Tensors stored with the model (parameters, buffers, float constants), whose
        dims pruning slices. Integer constants are sizes and indices, not channels."""
        return [v for v in self.values.values()
                if v.kind in ("param", "buffer") or (v.kind == "const" and v.dtype.startswith(("float", "bfloat")))]

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {name: [] for name in self.values}
        for n in self.nodes:
            for name in dict.fromkeys(n.inputs):
                users.setdefault(name, []).append(n)
        return users

    def dead_nodes(self) -> set[str]:
        """Names of the nodes whose results reach no graph output and no state: the attention weights
        ``nn.MultiheadAttention`` averages and returns where the caller drops them. An in-place op (a
        name ending in ``_``: a buffer's update), a node with no outputs, one that reads a buffer (batch
        norm in training updates its statistics) and whatever feeds them are live."""
        if not self.outputs:
            return set()  # outputs no trace could list (an object pytree does not flatten): nothing is known dead
        live: set[str] = set(self.outputs)
        dead: set[str] = set()
        for n in reversed(self.nodes):
            leaf = n.op.rpartition(".")[2]  # in place: add_, copy_, and the dunders __iand__, __ior__, ...
            effect = (leaf.endswith("_") and not leaf.endswith("__") or leaf.startswith("__i") or not n.outputs
                      or any(i in self.values and self.values[i].kind == "buffer" for i in n.inputs))
            if effect or any(o in live for o in n.outputs):
                live.update(n.inputs)
            else:
                dead.add(n.name)
        return dead

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts
