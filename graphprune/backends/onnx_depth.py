"""Remove residual branches from an ONNX graph: the add becomes an Identity of its skip
operand, and every node and initializer that only served the branch is dropped."""
from __future__ import annotations

import onnx


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node of ``graph`` or of any subgraph nested in it (an If
    branch may read an outer value without listing it as an input)."""
    used = set()
    for n in graph.node:
        used.update(i for i in n.input if i)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= used_names(sub)
    return used


def remove_blocks_onnx(model: onnx.ModelProto, dg, blocks) -> None:
    """Rewrite ``model`` (the copy being pruned) in place without ``blocks``."""
    if not blocks:
        return
    g = model.graph
    out_of = {n.name: n.outputs[0] for n in dg.ir.nodes}
    by_output = {n.output[0]: n for n in g.node if n.output}
    for b in blocks:
        node = by_output[out_of[b.id]]
        node.op_type, node.domain = "Identity", ""
        del node.input[:]
        node.input.append(b.skip)
        del node.attribute[:]
    outputs = {o.name for o in g.output}
    while True:  # drop nodes whose outputs nobody reads, until none is left
        used = used_names(g) | outputs
        keep = [n for n in g.node if any(o in used for o in n.output if o)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    drop_unused_initializers(g)


def drop_unused_initializers(g: onnx.GraphProto, among: set[str] | None = None) -> None:
    """Remove the initializers (of ``among``, or any) and Constant nodes no node or output reads any more."""
    used = used_names(g) | {o.name for o in g.output}
    gone = {i.name for i in g.initializer if i.name not in used and (among is None or i.name in among)}
    inits = [i for i in g.initializer if i.name not in gone]
    del g.initializer[:]
    g.initializer.extend(inits)
    # old exporters list initializers as graph inputs too: a removed one must not become a required feed
    inputs = [i for i in g.input if i.name not in gone]
    del g.input[:]
    g.input.extend(inputs)
    for n in [n for n in g.node if n.op_type == "Constant" and (among is None or n.output[0] in among)
              and n.output[0] not in used]:
        g.node.remove(n)
