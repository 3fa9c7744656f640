"""The op-family table (graphprune/ops.py).

Every member has a coupling rule; families that name different computations share no op; and
each module that reads a family still finds what the family names in a model built here: an
attention head (kinds), a residual block (blocks), a consumer site (calib.sites), a BatchNorm
scale (importance), the zero-keeping ops on a removed branch (backends.torch_depth). The
expectations come from how each model is built, never from the code under test.
"""
from __future__ import annotations

import copy
import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import graphprune as gp
from graphprune.backends.torch_depth import ZeroBranch, remove_blocks
from graphprune.blocks import find_blocks
from graphprune.calib.sites import find_sites
from graphprune.importance.base import ScoreContext
from graphprune.importance.magnitude import bn_scale
from graphprune.kinds import attention_sites
from graphprune.ops import Ops, aten, families
from graphprune.rules import load_all
from graphprune.rules.registry import RULES

# families that say what an op computes: an op is at most one of them
DISJOINT = ("Linear", "MatMul", "Einsum", "Conv", "Attention", "Softmax", "BatchNorm", "Add", "Sub", "Scale", "Neg",
            "Mask", "Cast", "Copy", "Dropout", "Movement")


# ---- the table ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(families()))
def test_every_member_has_a_coupling_rule(name):
    load_all()
    family = families()[name]
    assert family
    # and transformers' custom ops (torch.library), which a trace records as they are (MoE's grouped_mm_fallback)
    assert all(op.split(".")[0] in ("aten", "onnx", "transformers") for op in family), sorted(family)
    assert sorted(family - RULES.keys()) == []


def test_families_that_name_different_computations_do_not_overlap():
    fams = families()
    assert set(DISJOINT) <= set(fams)
    for a, b in itertools.combinations(DISJOINT, 2):
        assert not fams[a] & fams[b], (a, b, sorted(fams[a] & fams[b]))


def test_property_families_hold_nothing_that_breaks_the_property():
    # a bias, another operand or a normalisation turns a zeroed branch into something nonzero
    makes_nonzero = Ops.Add | Ops.Sub | Ops.Linear | Ops.Conv | Ops.BatchNorm | Ops.Softmax | Ops.Attention
    assert not Ops.KeepsZero & makes_nonzero
    # the score walk stops at the first product or softmax: passing over one would pair the wrong ops
    assert not Ops.ScorePath & (Ops.MatMul | Ops.Einsum | Ops.Softmax | Ops.Attention)


@pytest.mark.parametrize("name", ["Conv", "MatMul"])
def test_a_rule_registers_its_family_aten_spelling_from_the_table(name):
    load_all()
    family = families()[name]
    ops = aten(family)
    assert ops and all(op.startswith("aten.") for op in ops)
    assert set(ops) | {op for op in family if not op.startswith("aten.")} == family
    assert len({RULES[op] for op in ops}) == 1  # one rule for the family's aten members


# ---- kinds: attention heads found through Attention, Softmax, BatchedMatMul, ScorePath --------

BUF_N = 5


class EagerAttention(nn.Module):
    """Attention without transformers: q.k product -> ``pre`` -> softmax -> ``post`` -> product with v.
    ``fold`` puts the heads into the batch dim (for bmm, which takes rank-3 operands only)."""

    def __init__(self, heads: int, head_dim: int, pre: str, post: str, product: str) -> None:
        super().__init__()
        e = heads * head_dim
        self.heads, self.pre, self.post, self.product = heads, pre, post, product
        self.q, self.k, self.v, self.o = (nn.Linear(e, e) for _ in range(4))
        self.register_buffer("bias", torch.randn(BUF_N, BUF_N))
        self.register_buffer("mask", torch.ones(BUF_N, BUF_N, dtype=torch.bool).tril().logical_not())

    def mm(self, a, b):
        if self.product == "einsum":
            return torch.einsum("...ij,...jk->...ik", a, b)
        if self.product == "bmm":
            return torch.bmm(a, b)
        return a @ b

    def forward(self, x):
        b, n, e = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.product == "bmm":
            q, k, v = (t.reshape(b * self.heads, n, -1) for t in (q, k, v))
        s = self.mm(q, k.transpose(-1, -2))
        s = {"div": lambda: s / 2.0, "mul": lambda: s * 0.5, "add": lambda: s + self.bias,
             "sub": lambda: s - self.bias, "masked_fill": lambda: s.masked_fill(self.mask, -1e4),
             "double": lambda: s.double()}[self.pre]()
        a = torch.softmax(s, -1)
        a = {"none": lambda: a, "type_as": lambda: a.type_as(q), "dropout": lambda: nn.functional.dropout(a, 0.1, True),
             "clone": lambda: a.clone()}[self.post]()
        y = self.mm(a, v)
        return self.o(y.view(b, self.heads, n, -1).transpose(1, 2).reshape(b, n, e))


class FusedAttention(EagerAttention):
    def forward(self, x):
        b, n, e = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, scale=0.5)
        return self.o(y.transpose(1, 2).reshape(b, n, e))


def _op_of(graph, node: str) -> str:
    return next(n.op for n in graph.ir.nodes if n.name == node)


def _head_sizes(graph) -> list[int]:
    return sorted(g.size for g in graph.groups if g.kind == "head")


@pytest.mark.parametrize("pre,post,product,op", [
    ("div", "none", "matmul", "aten.div"), ("mul", "none", "matmul", "aten.mul"),
    ("add", "none", "matmul", "aten.add"), ("sub", "none", "matmul", "aten.sub"),
    ("masked_fill", "none", "matmul", "aten.masked_fill"), ("double", "type_as", "matmul", "aten.type_as"),
    ("div", "dropout", "matmul", "aten.dropout"), ("div", "clone", "matmul", "aten.clone"),
    ("div", "none", "einsum", "aten.einsum"), ("div", "none", "bmm", "aten.bmm")])
def test_attention_heads_found_without_transformers(pre, post, product, op):
    heads, head_dim = 3, 4
    model = EagerAttention(heads, head_dim, pre, post, product).eval()
    batch = 1 if product == "bmm" else 2  # heads folded into a batch dim of size 1
    graph = gp.trace(model, (torch.randn(batch, BUF_N, heads * head_dim),))
    assert op in {n.op for n in graph.ir.nodes}  # the model exercises the member it is meant to
    assert len(attention_sites(graph)) == 1
    assert _head_sizes(graph) == [heads]
    assert sorted(g.size for g in graph.groups if g.kind == "head_dim") == [head_dim, head_dim]  # q.k and v


def test_fused_attention_heads():
    model = FusedAttention(4, 2, "div", "none", "matmul").eval()
    graph = gp.trace(model, (torch.randn(2, BUF_N, 8),))
    assert {n.op for n in graph.ir.nodes} & Ops.Attention
    assert _head_sizes(graph) == [4]


@pytest.mark.parametrize("pre,op", [("div", "onnx.Div"), ("mul", "onnx.Mul")])
def test_onnx_attention_heads(pre, op, tmp_path):
    model = EagerAttention(2, 4, pre, "none", "matmul").eval()
    gp.export_onnx(model, (torch.randn(2, BUF_N, 8),), tmp_path / "att.onnx")
    graph = gp.load_onnx(tmp_path / "att.onnx")
    assert {"onnx.MatMul", "onnx.Softmax", op} <= {n.op for n in graph.ir.nodes}
    assert _head_sizes(graph) == [2]


# ---- blocks and the residual stream: Add ----------------------------------------------------

class Residual(nn.Module):
    def __init__(self, e: int = 8) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(4, e), nn.Linear(e, 3)
        self.f = nn.Sequential(nn.Linear(e, 16), nn.ReLU(), nn.Linear(16, e))
        self.g = nn.Sequential(nn.Linear(e, 16), nn.ReLU(), nn.Linear(16, e))

    def forward(self, x):
        h = self.inp(x)
        h = h + self.f(h)
        h += self.g(h)  # in place: aten.add_
        return self.out(h)


def test_residual_blocks_and_hidden_stream_through_add(tmp_path):
    model = Residual().eval()
    x = torch.randn(2, 4)
    graph = gp.trace(model, (x,))
    assert {"aten.add", "aten.add_"} <= {n.op for n in graph.ir.nodes}
    want = [sorted(f"{name}.{p}" for p, _ in getattr(model, name).named_parameters()) for name in ("f", "g")]
    assert [list(b.params) for b in find_blocks(graph.ir)] == want
    # inp, f and g each write the stream, and the adds sum it
    assert graph.group_of("inp.weight", 0).kind == "hidden"

    gp.export_onnx(model, (x,), tmp_path / "res.onnx")
    onnx_graph = gp.load_onnx(tmp_path / "res.onnx")
    blocks = find_blocks(onnx_graph.ir)
    assert len(blocks) == 2
    assert {_op_of(onnx_graph, b.id) for b in blocks} == {"onnx.Add"}


class _FrozenBatchNorm(torch.nn.Module):
    """DETR's and torchvision's frozen BatchNorm: four buffers, applied as x * scale + bias."""

    def __init__(self, n: int) -> None:
        super().__init__()
        for k in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(k, torch.rand(n) + 0.5)

    def forward(self, x):
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + 1e-5).rsqrt()
        return x * scale + (self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale)


def test_a_batchnorm_written_as_a_scale_and_bias_is_no_residual_stream():
    """Each op on the buffers alone counted as a weight creating the conv's channels, and the final add
    summed them: 'hidden', so the default targets never cut DETR's ResNet backbone (its MACs fell 1.2%)."""
    for norm in (torch.nn.BatchNorm2d, _FrozenBatchNorm):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), norm(16), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3)).eval()
        graph = gp.trace(model, (torch.randn(2, 3, 16, 16),))
        assert graph.group_of("0.weight", 0).kind == "ffn", norm


class _PositionsFromABuffer(torch.nn.Module):
    """BERT-style embeddings whose position ids are an integer buffer (ALBERT, ELECTRA)."""

    def __init__(self) -> None:
        super().__init__()
        self.word, self.pos = torch.nn.Embedding(50, 16), torch.nn.Embedding(12, 16)
        self.register_buffer("position_ids", torch.arange(12)[None])
        self.norm, self.out = torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)

    def forward(self, ids):
        return self.out(self.norm(self.word(ids) + self.pos(self.position_ids[:, :ids.shape[1]])))


def test_a_lookup_at_an_integer_buffer_still_creates_its_channels():
    """Index buffers are data, not weights: with ops on weights alone creating nothing, the position table's
    lookup at an int buffer stopped counting, the embedding stream lost its second writer and turned 'ffn',
    and the default call cut ALBERT's embeddings through their LayerNorm (a reviewer's find)."""
    graph = gp.trace(_PositionsFromABuffer().eval(), (torch.randint(0, 50, (2, 8)),))
    assert graph.group_of("word.weight", 1).kind == "hidden"


# ---- consumer sites: Linear, MatMul, Conv -----------------------------------------------------

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_sites_plain_grouped_depthwise(dim, groups):
    model = nn.Sequential(CONV[dim](4, 8, 3, padding=1, groups=groups), nn.ReLU(), CONV[dim](8, 6, 1)).eval()
    graph = gp.trace(model, (torch.randn(2, 4, *(5,) * dim),))
    sites = find_sites(graph)
    assert [(s.kind, s.groups, s.kernel) for s in sites] == [("conv", groups, (3,) * dim), ("conv", 1, (1,) * dim)]
    assert [graph.ir.values[s.w].source for s in sites] == ["0.weight", "2.weight"]


def test_onnx_grouped_conv_site(tmp_path):
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 6, 1)).eval()
    gp.export_onnx(model, (torch.randn(2, 4, 5, 5),), tmp_path / "conv.onnx")
    graph = gp.load_onnx(tmp_path / "conv.onnx")
    sites = find_sites(graph)
    assert [(_op_of(graph, s.node), s.kind, s.groups) for s in sites] == [("onnx.Conv", "conv", 2),
                                                                         ("onnx.Conv", "conv", 1)]


class Products(nn.Module):
    """Four ways to multiply by a weight: a Linear (weight stored out x in), and raw (in x out)
    weights through matmul, mm and addmm (GPT-2's Conv1D)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.w, self.w2, self.w3 = (nn.Parameter(torch.randn(6, 6)) for _ in range(3))
        self.b = nn.Parameter(torch.randn(6))

    def forward(self, x):
        z = torch.relu(self.fc(x))
        z = torch.relu(z @ self.w)
        z = torch.relu(torch.mm(z, self.w2))
        return torch.addmm(self.b, z, self.w3)


def test_weight_product_sites(tmp_path):
    model = Products().eval()
    x = torch.randn(3, 4)
    graph = gp.trace(model, (x,))
    assert {"aten.linear", "aten.matmul", "aten.mm", "aten.addmm"} <= {n.op for n in graph.ir.nodes}
    # the weight dim facing the input: dim 1 of a Linear's (out, in), dim 0 of a raw (in, out)
    want = [("fc.weight", 1), ("w", 0), ("w2", 0), ("w3", 0)]
    assert [(graph.ir.values[s.w].source, s.w_in) for s in find_sites(graph)] == want

    gp.export_onnx(model, (x,), tmp_path / "products.onnx")
    graph = gp.load_onnx(tmp_path / "products.onnx")
    sites = find_sites(graph)
    assert {_op_of(graph, s.node) for s in sites} <= Ops.Linear | Ops.MatMul
    assert [(s.kind, s.w_in) for s in sites] == [("linear", w_in) for _, w_in in want]


# ---- BatchNorm scales -------------------------------------------------------------------------

def _bn_scores(graph, tensors: dict, bn_weight: str) -> tuple[np.ndarray, list[str]]:
    ctx = ScoreContext(graph, tensors)
    (group,) = [g for g in graph.groups if bn_weight in {m.name for m in g.members}]
    return bn_scale(ctx, [group])[group.id], ctx.notes


def test_bn_scale_reads_batchnorm_weights():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1)).eval()
    gamma = torch.tensor([0.5, -2.0, 0.1, 3.0, -0.25, 1.0])
    with torch.no_grad():
        model[1].weight.copy_(gamma)
    graph = gp.trace(model, (torch.randn(2, 3, 6, 6),))
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    score, notes = _bn_scores(graph, tensors, "1.weight")
    np.testing.assert_allclose(score, gamma.abs().numpy(), rtol=1e-6)
    assert notes == []  # no fallback to l2


def test_bn_scale_reads_onnx_batchnormalization(tmp_path):
    rng = np.random.default_rng(0)
    gamma = np.asarray([0.5, -2.0, 0.1, 3.0, -0.25, 1.0], dtype=np.float32)
    arrays = {"w1": rng.standard_normal((6, 3, 3, 3)), "s": gamma, "beta": rng.standard_normal(6),
              "mean": rng.standard_normal(6), "var": rng.random(6) + 0.5, "w2": rng.standard_normal((4, 6, 1, 1))}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "s", "beta", "mean", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4, 4])],
                              [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "bn.onnx")
    g = gp.load_onnx(tmp_path / "bn.onnx")
    score, notes = _bn_scores(g, arrays, "s")
    np.testing.assert_allclose(score, np.abs(gamma), rtol=1e-6)
    assert notes == []


# ---- depth: a removed branch read through zero-keeping ops (KeepsZero, Add, Scale) -------------

class LayerScaled(nn.Module):
    """Two parallel sub-layers summed, transposed, scaled by a layer scale and transposed back:
    every op between the sub-layers and the residual add runs in the top module's forward."""

    def __init__(self, e: int = 8) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(4, e), nn.Linear(e, 3)
        self.a, self.b = nn.Linear(e, e), nn.Linear(e, e)
        self.ls = nn.Parameter(torch.full((e, 1), 0.5))

    def forward(self, x):
        h = self.inp(x)
        branch = self.ls * (self.a(h) + self.b(h)).transpose(1, 2)
        return self.out(h + branch.transpose(1, 2))


def test_branch_removed_through_zero_keeping_ops():
    model = LayerScaled().eval()
    x = torch.randn(2, 5, 4)
    graph = gp.trace(model, (x,))
    (block,) = find_blocks(graph.ir)
    with torch.no_grad():
        want = model.out(model.inp(x))  # the block's branch contributes nothing
    pruned = copy.deepcopy(model)
    remove_blocks(pruned, graph, [block], (x,))
    assert isinstance(pruned.a, ZeroBranch) and isinstance(pruned.b, ZeroBranch)
    assert "ls" not in dict(pruned.named_parameters())  # read by the scaling only: no parameter left
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), want)
