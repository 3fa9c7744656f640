"""What a model shows the world, whose channels no plan may change: its inputs, its outputs, and the
values its forward computes and then drops.

A dropped value is the end of a branch no output reads: UperNet's auxiliary head, whose class scores
transformers computes on every call and reads only for a training loss. Nothing the oracle compares
shows its channels, so without a freeze they were cut (5 classes to 4) and the loss failed on the
first labels passed. Only the end of a branch of its own counts (back to an op with weights, every value
on the way read by nothing else) and only a node's sole output: an unused item of a multi-output op (a
Split's piece, an LSTM's last state) or an unread view of a live tensor ends no branch.

Plain IR reading: no torch, no onnx.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .reasons import MODEL_IO, Reason, at

if TYPE_CHECKING:
    from .ir import Graph
    from .spaces import Solver


def freeze_boundaries(graph: "Graph", solver: "Solver", users: dict[str, list]) -> None:
    """Freeze every dim of the model's inputs, outputs and dropped values (see the module docstring)."""
    made = {o: n for n in graph.nodes for o in n.outputs}
    for name in graph.inputs:
        for d in range(graph.values[name].rank):
            solver.freeze((name, d), Reason(MODEL_IO, f"model input '{name}' dim {d}", node=name))
    for name in graph.outputs:
        for d in range(graph.values[name].rank):
            solver.freeze((name, d), at(MODEL_IO, f"model output '{name}' dim {d}", made.get(name)))
    outputs = set(graph.outputs)
    for name, node in made.items():
        v = graph.values.get(name)
        if (v is None or name in outputs or users.get(name) or len(node.outputs) != 1 or v.kind != "act"
                or not str(v.dtype).startswith(("float", "bfloat")) or not _dead_branch(graph, node, made, users)):
            continue
        for d in range(v.rank):
            solver.freeze((name, d), at(MODEL_IO, f"dropped value '{name}' dim {d}: the forward computes it and "
                                                  "returns nothing of it (an auxiliary head for a loss)", node))


def _dead_branch(graph: "Graph", node, made: dict, users: dict[str, list], hops: int = 16) -> bool:
    """Whether ``node`` ends a branch of its own: back along its one activation input, each value read by
    nothing else, to an op with weights. An unread view of a live tensor, or ``copy_``'s result (the
    tensor it wrote into lives on), ends none: freezing those would freeze channels that do flow on."""
    for _ in range(hops):
        if any(graph.values[i].kind in ("param", "buffer") for i in node.inputs if i in graph.values):
            return True
        acts = [i for i in node.inputs if i in graph.values and graph.values[i].kind == "act"]
        if len(acts) != 1 or len(users.get(acts[0], ())) != 1 or acts[0] not in made:
            return False
        node = made[acts[0]]
    return False
