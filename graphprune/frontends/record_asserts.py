"""Data reads a recording goes past: assert statements, and branches on the model's own state.

``assert (out[..., a:b] == x).all()`` (demucs' pad1d) reads tensor data into Python, which the recorder
refuses as torch.export does, since a branch on data would be baked into the graph. An assert that holds
computes nothing the program needs (one that fails raises the model's own AssertionError), so on the real
weights it is evaluated and the recording goes on; the nodes only it read are then dropped from the graph,
or their reduction (``all``) would count as a use of the channels it reads.

A branch on values computed from buffers and constants alone (vector-quantize's ``if self.initted:``,
torchdiffeq's time grid) is the same for every input: on the real weights the recording takes the path that
state chooses. A parameter's values change with the cut and an input's with the input: a branch on either
is refused.
"""
from __future__ import annotations

import linecache

import torch

from ..util.torch_compat import is_pure_op

_READS = {"is_nonzero", "_local_scalar_dense", "item"}  # how bool(t) reads a tensor


def asserted(op: str, where: str | None) -> bool:
    """Whether data read by ``op`` ('aten.is_nonzero.default') at the user's line ``where`` ('File "f", line n,
    in g') is read by an assert statement."""
    if not where or op.split(".")[1] not in _READS:
        return False
    file, _, rest = where[len('File "'):].partition('", line ')
    return linecache.getline(file, int(rest.split(",")[0])).lstrip().startswith("assert ")


def drop_asserted(graph: torch.fx.Graph, nodes: list) -> None:
    """Erase the asserted nodes and what only they read (pure ops: an in-place one may write elsewhere)."""
    todo, gone = [n for n in nodes if n is not None], set()
    while todo:
        n = todo.pop()
        if n in gone or n.users or n.op != "call_function" or not is_pure_op(n.target):
            continue
        gone.add(n)
        inputs = list(n.all_input_nodes)
        graph.erase_node(n)
        todo.extend(inputs)


def of_state(node: torch.fx.Node | None, limit: int = 64) -> bool:
    """Whether the recorded ``node`` is computed from buffers and constants alone (see the module docstring):
    no placeholder (an input) and no parameter (``p_`` get_attr) within its first ``limit`` ancestors."""
    todo, seen = [node] if node is not None else [], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder" or len(seen) > limit or (n.op == "get_attr" and n.name.startswith("p_")):
            return False
        todo.extend(n.all_input_nodes)
    return bool(seen)
