"""Assert statements on tensor values while recording a forward.

``assert (out[..., a:b] == x).all()`` (demucs' pad1d) reads tensor data into Python, which the recorder
refuses as torch.export does, since a branch on data would be baked into the graph. An assert that holds
computes nothing the program needs (one that fails raises the model's own AssertionError), so on the real
weights it is evaluated and the recording goes on; the nodes only it read are then dropped from the graph,
or their reduction (``all``) would count as a use of the channels it reads.
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
