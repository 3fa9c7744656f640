"""Depth pruning: residual branches whose removal leaves the skip connection.

A *block* is an add ``y = x + b`` whose operand ``b`` is computed from ``x`` by nodes used
for nothing else: removing the block turns the add into ``y = x`` and leaves every node
that only served ``b`` dead (an attention or an MLP sub-layer of a transformer, a residual
CNN block's conv branch). Removal is exact with respect to the masked original in which
``b`` is zeroed, which is how the oracle checks it. Found on the IR alone, so both
front-ends share it; no torch, no onnx here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .ir import Graph
from .ops import Ops


@dataclass(frozen=True)
class Block:
    """A removable residual branch: the add node ``id``, its skip and branch operands, and
    the nodes computed only for the branch (``nodes``, topological order)."""

    id: str  # the add node's name: stable across traces of one model
    skip: str  # IR value kept
    branch: str  # IR value removed (zeroed in the masked original)
    nodes: tuple[str, ...]
    params: tuple[str, ...]  # parameter sources used only by the branch

    def __str__(self) -> str:
        return f"block '{self.id}' ({len(self.nodes)} ops, {len(self.params)} parameter tensors)"


def find_blocks(ir: Graph) -> list[Block]:
    """Every removable residual branch of ``ir``, in graph order."""
    producer = ir.producers()
    consumers = ir.consumers()
    index = {n.name: i for i, n in enumerate(ir.nodes)}
    outputs = set(ir.outputs)
    out: list[Block] = []
    before: set[str] | None = None
    for n in ir.nodes:
        if n.op not in Ops.Add or n.kwargs.get("alpha", 1) != 1:
            continue
        refs = [a.name for a in n.refs()]
        if len(refs) != 2 or refs[0] == refs[1] or not n.outputs:
            continue
        shape = ir.values[n.outputs[0]].shape
        if any(ir.values[r].shape != shape for r in refs):
            continue  # a broadcast add (a bias, a position embedding) is no residual
        for skip, branch in ((refs[0], refs[1]), (refs[1], refs[0])):
            block = _branch(ir, n, skip, branch, producer, consumers, index, outputs)
            if block is not None:
                # its weights: those that die with it (read through a transpose or a cast too)
                before = before if before is not None else live_values(ir, [])
                gone = before - live_values(ir, [block])
                weights = [v for v in gone if ir.values[v].kind == "param"]
                if any(ir.values[v].rank >= 2 for v in weights):  # else a parameter-free sub-expression
                    out.append(Block(block.id, skip, branch, block.nodes,
                                     tuple(sorted(ir.values[v].source or v for v in weights))))
                break
    return out


def _branch(ir: Graph, add, skip: str, branch: str, producer, consumers, index, outputs) -> Block | None:
    if branch not in producer or ir.values[skip].kind not in ("act", "input"):
        return None
    stop = index[add.name]
    # nodes reachable from the skip value before the add ...
    below: set[str] = set()
    todo = [skip]
    while todo:
        for c in consumers.get(todo.pop(), []):
            if c.name not in below and index[c.name] < stop:
                below.add(c.name)
                todo.extend(c.outputs)
    # ... that the branch value depends on
    core: set[str] = set()
    todo = [branch]
    while todo:
        p = producer.get(todo.pop())
        if p is None or p.name in core or p.name not in below:
            continue
        core.add(p.name)
        todo.extend(p.inputs)
    if producer[branch].name not in core:
        return None  # b does not depend on x: an added constant, not a branch
    nodes = [m for m in ir.nodes if m.name in core]
    for m in nodes:
        for o in m.outputs:
            users = consumers.get(o, [])
            if o in outputs or any(u.name not in core and not (o == branch and u is add) for u in users):
                return None  # the branch's values feed something else: removing it changes more
    if sum(1 for c in consumers.get(branch, []) if c is add) != 1 or len(consumers.get(branch, [])) != 1:
        return None
    return Block(add.name, skip, branch, tuple(m.name for m in nodes), ())


def live_values(ir: Graph, removed: Iterable[Block]) -> set[str]:
    """Values still computed once ``removed`` blocks are gone: the adds pass their skip through
    and whatever only served a removed branch (its weights, a mask or rotary table no live
    node reads) is dead."""
    passthrough = {b.id: b.skip for b in removed}
    producer = ir.producers()
    live: set[str] = set()
    todo = list(ir.outputs)
    while todo:
        v = todo.pop()
        if v in live:
            continue
        live.add(v)
        p = producer.get(v)
        if p is None:
            continue
        todo.extend([passthrough[p.name]] if p.name in passthrough else p.inputs)
    return live


def dead_values(ir: Graph, removed: Iterable[Block]) -> set[str]:
    """Activations and weights no longer computed or stored once ``removed`` are gone (empty
    when nothing is removed)."""
    removed = list(removed)
    if not removed:
        return set()
    live = live_values(ir, removed)
    # a value that was dead before any removal (an unused output of a multi-output op) stays as it was
    before = live_values(ir, [])
    return {v for v in before if v not in live}
