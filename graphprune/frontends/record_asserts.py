"""Data reads a recording goes past: assert statements, and branches on the model's own state.

``assert (out[..., a:b] == x).all()`` (demucs' pad1d) reads tensor data into Python, which the recorder
refuses as torch.export does, since a branch on data would be baked into the graph. An assert that holds
computes nothing the program needs (one that fails raises the model's own AssertionError), so on the real
weights it is evaluated and the recording goes on; the nodes only it read are then dropped from the graph,
or their reduction (``all``) would count as a use of the channels it reads.

A branch on values computed from one-element buffers (vector-quantize's ``if self.initted:``) and tensors the
forward makes from Python values (a time grid) is the same for every input: on the real weights the recording
takes the path that state chooses. Refused: a branch on an input or a parameter (whose values the cut
changes), on a larger buffer (the cut may slice it: running statistics), on a buffer the forward writes (the
recorder compares it with the model's after the forward: a buffer filled from the input through a view), on a
tensor that shares an input's or a weight's memory (``x.data``), and on random draws.
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


_RANDOM = ("rand", "normal", "bernoulli", "multinomial", "uniform", "exponential", "poisson", "dropout")


def of_state(node: torch.fx.Node | None, limit: int = 64) -> list[torch.fx.Node] | None:
    """The get_attr nodes (buffers ``b_``, constants ``c_``) the recorded ``node`` is computed from, where it is
    computed from those alone: None where an input, a parameter (``p_``) or a random op is among its first
    ``limit`` ancestors. The recorder then checks what the module docstring asks of those leaves."""
    todo, seen, leaves = [node] if node is not None else [], set(), []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        random = n.op == "call_function" and any(r in str(n.target) for r in _RANDOM)
        if n.op == "placeholder" or len(seen) > limit or random or (n.op == "get_attr" and n.name.startswith("p_")):
            return None
        leaves += [n] if n.op == "get_attr" else []
        todo.extend(n.all_input_nodes)
    return leaves if seen else None


def state_read(recorder, t) -> bool:
    """Whether the recorder's data read of ``t`` is a branch on the model's state (see the module docstring). The
    buffers it read are listed in ``recorder.state``: record() compares them with the model's after the forward."""
    leaves = of_state(recorder.env.get(t) if isinstance(t, torch.Tensor) else None)
    if leaves is None:
        return False
    for n in leaves:
        v = recorder.tensors.get(n.target)
        if v is None or (n.name.startswith("b_") and v.numel() > 1) or (
                n.name.startswith("c_") and v.untyped_storage().data_ptr() in recorder.shared):
            return False
    recorder.state += [n.target for n in leaves if n.name.startswith("b_")]
    return True
