"""Views of a DependencyGraph for people: the groups table (``graph.summary()``, ``graphprune inspect``)
and the op graph as networkx (``graph.to_networkx()``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .util.tables import table

if TYPE_CHECKING:
    from .graph import DependencyGraph
    from .ir import Graph


def op_digraph(ir: "Graph"):
    """Value nodes and op nodes, edges along data flow."""
    import networkx as nx

    dg = nx.DiGraph()
    for v in ir.values.values():
        dg.add_node(v.name, kind=v.kind, shape=v.shape, source=v.source)
    for n in ir.nodes:
        dg.add_node(n.name, kind="op", op=n.op, **{k: v for k, v in n.meta.items() if v})
        for i in dict.fromkeys(n.inputs):
            dg.add_edge(i, n.name)
        for o in n.outputs:
            if o != n.name:
                dg.add_edge(n.name, o)
    return dg


def groups_table(dg: "DependencyGraph", limit: int | None = 60, width: int | None = 90) -> str:
    """The groups as a table: the first ``limit`` (None: all), reasons cut at ``width`` characters (None: whole)."""
    rows = []
    limit = len(dg.groups) if limit is None else limit
    for g in dg.groups[:limit]:
        first = g.members[0]
        state = "prunable" if g.prunable else "frozen"
        why = str(g.frozen[0] if g.frozen else (g.inexact[0] if g.inexact else ""))
        rows.append([g.id, g.size, g.kind, g.role, state + ("" if g.exact else "*"), len(g.members),
                     f"{first.name}[{first.dim}]", why[:width]])
    text = table(["group", "size", "kind", "role", "state", "members", "first member", "reason"], rows)
    if len(dg.groups) > limit:
        text += f"\n... {len(dg.groups) - limit} more groups (summary(limit=None) lists all, width=None whole reasons)"
    n_p = sum(g.prunable for g in dg.groups)
    return text + f"\n{len(dg.groups)} groups, {n_p} prunable (* = not oracle-exact: crosses a channel normalisation)"
