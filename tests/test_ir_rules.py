"""Coupling rules on hand-built IR graphs: no torch tracing, only graphprune.ir and the solver.

Each graph is a few aten nodes over named values, built as a front-end would lower them; the
expected groups, member sets and positions are worked out from the ops' semantics below.
"""
from __future__ import annotations

from graphprune.graph import DependencyGraph
from graphprune.ir import Graph, Node, Ref, Value


class Builder:
    """A tiny front-end: inputs, parameters and single-output nodes with their shapes."""

    def __init__(self) -> None:
        self.g = Graph(frontend="test")

    def input(self, name: str, *shape: int) -> Ref:
        self.g.add_value(Value(name, shape, kind="input", source=name))
        self.g.inputs.append(name)
        return Ref(name)

    def param(self, name: str, *shape: int) -> Ref:
        self.g.add_value(Value(name, shape, kind="param", source=name))
        return Ref(name)

    def op(self, op: str, shape: tuple, *args) -> Ref:
        out = f"v{len(self.g.nodes)}"
        self.g.add_value(Value(out, shape))
        self.g.nodes.append(Node(out, f"aten.{op}", args, {}, [out]))
        return Ref(out)

    def solve(self, *outputs: Ref) -> DependencyGraph:
        self.g.outputs.extend(o.name for o in outputs)
        return DependencyGraph(self.g)


def members(grp) -> set[tuple[str, int]]:
    return {(m.name, m.dim) for m in grp.members}


def positions(grp, name: str, dim: int) -> list[list[int]]:
    """For each index of the group, the positions it owns along ``name``'s ``dim``."""
    (m,) = [m for m in grp.members if (m.name, m.dim) == (name, dim)]
    return [grp.positions(m, k).tolist() for k in range(grp.size)]


def test_add_ties_both_producers_and_the_consumer():
    # h = a(x) + b(x); y = c(h): a's and b's output rows and c's input columns are one space
    b = Builder()
    x = b.input("x", 2, 4)
    wa, ba, wb, wc = b.param("wa", 6, 4), b.param("ba", 6), b.param("wb", 6, 4), b.param("wc", 3, 6)
    h = b.op("add", (2, 6), b.op("linear", (2, 6), x, wa, ba), b.op("linear", (2, 6), x, wb, None))
    y = b.op("linear", (2, 3), h, wc, None)
    dg = b.solve(y)
    # three spaces carry parameters: the hidden 6, the input's 4 and the output's 3
    by_members = {frozenset(members(g)): g for g in dg.groups}
    assert set(by_members) == {frozenset({("wa", 0), ("ba", 0), ("wb", 0), ("wc", 1)}),
                               frozenset({("wa", 1), ("wb", 1)}), frozenset({("wc", 0)})}
    hidden = dg.group_of("wa", 0)
    assert (hidden.size, hidden.prunable, hidden.role) == (6, True, "channel")
    assert not dg.group_of("wa", 1).prunable and not dg.group_of("wc", 0).prunable  # model input / output
    assert positions(hidden, "wc", 1) == [[k] for k in range(6)]
    assert dg.solver.layout((h.name, 1)) == dg.solver.layout(("wb", 0))


def test_concat_keeps_each_part_its_own_space_at_its_offset():
    # r = cat(p[3], q[5]); y = c(r): c's input columns 0-2 are p's space, 3-7 q's
    b = Builder()
    x = b.input("x", 2, 4)
    wp, wq, wc = b.param("wp", 3, 4), b.param("wq", 5, 4), b.param("wc", 2, 8)
    p, q = b.op("linear", (2, 3), x, wp, None), b.op("linear", (2, 5), x, wq, None)
    r = b.op("cat", (2, 8), [p, q], 1)
    dg = b.solve(b.op("linear", (2, 2), r, wc, None))
    gp_, gq = dg.group_of("wp", 0), dg.group_of("wq", 0)
    assert gp_.id != gq.id and (gp_.size, gq.size) == (3, 5)
    assert members(gp_) == {("wp", 0), ("wc", 1)} and members(gq) == {("wq", 0), ("wc", 1)}
    assert positions(gp_, "wc", 1) == [[0], [1], [2]]
    assert positions(gq, "wc", 1) == [[3], [4], [5], [6], [7]]
    assert len(dg.groups_of("wc", 1)) == 2
    assert len(dg.prunable_groups()) == 2


def test_view_factorises_into_heads_and_head_dim():
    # h[6] viewed as (2, 3) and back: rows of w are (head, dim), outer-major
    b = Builder()
    x = b.input("x", 1, 4)  # batch 1: the view targets spell no batch size
    w, wo = b.param("w", 6, 4), b.param("wo", 5, 6)
    h = b.op("linear", (1, 6), x, w, None)
    split = b.op("view", (1, 2, 3), h, [1, 2, 3])
    hv = b.op("relu", (1, 2, 3), split)
    y = b.op("linear", (1, 5), b.op("view", (1, 6), hv, [1, 6]), wo, None)
    dg = b.solve(y)
    heads, dims = dg.groups_of("w", 0)
    if heads.size != 2:
        heads, dims = dims, heads
    assert (heads.size, heads.role, dims.size, dims.role) == (2, "outer", 3, "inner")
    assert members(heads) == members(dims) == {("w", 0), ("wo", 1)}
    assert positions(heads, "w", 0) == [[0, 1, 2], [3, 4, 5]]  # a head is a block of 3 rows
    assert positions(dims, "wo", 1) == [[0, 3], [1, 4], [2, 5]]  # a head_dim index recurs once per head
    assert dg.solver.layout((hv.name, 1)) == dg.solver.layout((split.name, 1))  # relu ties dim by dim
    # the view's target spells both sizes, so a back-end can rewrite them
    assert {(c.path, c.value) for c in dg.carries if c.node == split.name} == {((1, 1), 2), ((1, 2), 3)}


def test_view_whose_blocks_do_not_line_up_freezes_both_sides():
    # (4, 6) seen as (6, 4): no common refinement of 4x6 and 6x4, so nothing in it may move
    b = Builder()
    x = b.input("x", 3, 4)
    w1, w2 = b.param("w1", 24, 4), b.param("w2", 2, 24)
    h = b.op("linear", (3, 24), x, w1, None)
    regroup = b.op("view", (3, 6, 4), b.op("view", (3, 4, 6), h, [3, 4, 6]), [3, 6, 4])
    y = b.op("linear", (3, 2), b.op("view", (3, 24), regroup, [3, 24]), w2, None)
    dg = b.solve(y)
    assert dg.prunable_groups() == []
    # w1's rows are (4, 6) and w2's columns (6, 4); every factor is frozen naming the second view
    assert [g.size for g in dg.groups_of("w1", 0)] == [4, 6] and [g.size for g in dg.groups_of("w2", 1)] == [6, 4]
    for grp in dg.groups_of("w1", 0) + dg.groups_of("w2", 1):
        assert any(f"node '{regroup.name}'" in str(r) for r in grp.frozen), grp.frozen


def test_transpose_swaps_which_dim_is_contracted():
    # ht = h^T (6, 2); y = wm @ ht: wm's columns contract h's features, not the batch
    b = Builder()
    x = b.input("x", 2, 4)
    w1, wm = b.param("w1", 6, 4), b.param("wm", 5, 6)
    h = b.op("linear", (2, 6), x, w1, None)
    ht = b.op("transpose", (6, 2), h, 0, 1)
    y = b.op("matmul", (5, 2), wm, ht)
    dg = b.solve(y)
    hidden = dg.group_of("w1", 0)
    assert members(hidden) == {("w1", 0), ("wm", 1)} and hidden.prunable and hidden.size == 6
    assert dg.solver.layout((ht.name, 0)) == dg.solver.layout((h.name, 1))
    assert dg.solver.layout((ht.name, 1)) == dg.solver.layout((h.name, 0)) == dg.solver.layout(("x", 0))
    assert members(dg.group_of("wm", 0)) == {("wm", 0)} and not dg.group_of("wm", 0).prunable  # output rows


def test_matmul_ties_query_and_key_features_and_carries_value_features():
    # s = q @ k^T contracts q's and k's features; o = s @ v keeps v's features to wo
    b = Builder()
    x = b.input("x", 2, 4)
    wq, wk, wv, wo = b.param("wq", 6, 4), b.param("wk", 6, 4), b.param("wv", 5, 4), b.param("wo", 3, 5)
    q, k, v = (b.op("linear", (2, n), x, w, None) for n, w in ((6, wq), (6, wk), (5, wv)))
    s = b.op("matmul", (2, 2), q, b.op("transpose", (6, 2), k, 0, 1))
    o = b.op("matmul", (2, 5), s, v)
    dg = b.solve(b.op("linear", (2, 3), o, wo, None))
    qk, vo = dg.group_of("wq", 0), dg.group_of("wv", 0)
    assert members(qk) == {("wq", 0), ("wk", 0)} and qk.size == 6
    assert members(vo) == {("wv", 0), ("wo", 1)} and vo.size == 5
    assert positions(qk, "wk", 0) == [[j] for j in range(6)]  # query feature j meets key feature j
    assert {g.id for g in dg.prunable_groups()} == {qk.id, vo.id}


def test_a_reduction_no_output_reads_leaves_its_channels_exact():
    """A mean over channels whose result reaches no output (nn.MultiheadAttention's head-averaged weights where the
    caller drops them) cannot make the pruned model differ; one that updates a buffer in place is live."""
    b = Builder()
    x, w = b.input("x", 2, 4), b.param("w", 6, 4)
    h = b.op("linear", (2, 6), x, w)
    b.op("mean", (2,), h, [1])  # dead: read by nothing
    dg = b.solve(b.op("linear", (2, 3), b.op("relu", (2, 6), h), b.param("w2", 3, 6)))
    assert dg.ir.dead_nodes() == {"v1"}
    assert [(g.size, g.exact) for g in dg.prunable_groups()] == [(6, True)]

    b = Builder()
    x, w, mem = b.input("x", 2, 4), b.param("w", 6, 4), b.param("mem", 2)
    h = b.op("linear", (2, 6), x, w)
    b.op("copy_", (2,), mem, b.op("mean", (2,), h, [1]))  # a buffer written in place: its input is live
    dg = b.solve(b.op("linear", (2, 3), b.op("relu", (2, 6), h), b.param("w2", 3, 6)))
    assert dg.ir.dead_nodes() == set()
    assert [(g.size, g.exact) for g in dg.prunable_groups()] == [(6, False)]


def test_an_in_place_dunder_op_is_live():
    """``view &= mask`` records as ``__iand__``: an in-place write whose name does not end in ``_``; it and what
    feeds it are live (review: the first version took it for dead)."""
    b = Builder()
    x, w = b.input("x", 2, 4), b.param("w", 6, 4)
    h = b.op("linear", (2, 6), x, w)
    b.op("__iand__", (2, 6), b.input("keep", 2, 6), b.op("gt", (2, 6), h, 0.0))
    b.solve(b.op("linear", (2, 3), h, b.param("w2", 3, 6)))
    assert b.g.dead_nodes() == set()


def test_nothing_is_dead_in_a_graph_without_outputs():
    """A model whose outputs no trace could list (an object pytree does not flatten) has no outputs in the IR:
    every node is not thereby dead (review: a LayerNorm'd group read as exact)."""
    b = Builder()
    b.op("mean", (2,), b.op("linear", (2, 6), b.input("x", 2, 4), b.param("w", 6, 4)), [1])
    assert b.g.dead_nodes() == set()
