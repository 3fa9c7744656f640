"""The ONNX front-end: same groups as the PyTorch side, clear errors on bad files."""
from __future__ import annotations

import onnx
import pytest
from helpers import tiny_onnx_model

import graphprune as gp
from graphprune.reasons import UNKNOWN_OP
from graphprune.zoo import ZOO, build


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def _prunable(g):
    return sorted((x.size, x.role) for x in g.prunable_groups(("channel", "outer", "inner")))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_onnx_export_has_the_same_prunable_groups_as_pytorch(name, onnx_dir):
    # Frozen groups may differ: the exporter folds computed tensors (RoPE tables) into
    # constants that carry frozen positions, and splits unbind into slices.
    model, args = build(name)
    g_torch = gp.trace(model, args)
    path = onnx_dir / f"{name}.onnx"
    gp.export_onnx(model, args, path)
    # fuse=False: the onnxruntime rewrites change the graph on purpose (a C2f's Split written as one conv per
    # piece leaves its two halves free to differ, where torch.chunk keeps them equal)
    g_onnx = gp.load_onnx(path, fuse=False)
    assert _prunable(g_onnx) == _prunable(g_torch)
    assert len(g_onnx.prunable_groups()) > 0


def test_gemm_chain_groups(tmp_path):
    onnx.save(tiny_onnx_model(), tmp_path / "m.onnx")
    g = gp.load_onnx(tmp_path / "m.onnx")
    (hidden,) = g.prunable_groups()
    assert hidden.size == 8 and sorted((m.name, m.dim) for m in hidden.members) == [("w1", 0), ("w2", 1)]
    assert hidden.affected(5) == [("w1", 0, [5]), ("w2", 1, [5])]


def test_op_without_rule_freezes_with_its_name(tmp_path):
    # LpNormalization is standard ONNX (shapes known, onnxruntime runs it) but has no rule.
    onnx.save(tiny_onnx_model("LpNormalization"), tmp_path / "m.onnx")
    g = gp.load_onnx(tmp_path / "m.onnx")
    assert not g.prunable_groups()
    reasons = [r for grp in g.groups for r in grp.frozen]
    assert any(r.kind == UNKNOWN_OP and r.op == "onnx.LpNormalization" for r in reasons)
    assert any("no coupling rule for op onnx.LpNormalization" in str(r) for r in reasons)


def test_op_nobody_knows_is_a_clear_error(tmp_path):
    onnx.save(tiny_onnx_model("Mystery", domain="com.example"), tmp_path / "m.onnx")
    with pytest.raises(gp.TraceError, match="com.example::Mystery"):
        gp.load_onnx(tmp_path / "m.onnx")


def test_truncated_file_is_a_clear_error(tmp_path):
    onnx.save(tiny_onnx_model(), tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(gp.TraceError, match="not a valid ONNX model"):
        gp.load_onnx(tmp_path / "cut.onnx")


def test_non_onnx_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.onnx").write_text("these are not the weights you are looking for\n")
    with pytest.raises(gp.TraceError, match="ONNX"):
        gp.load_onnx(tmp_path / "notes.onnx")
    with pytest.raises(gp.TraceError, match="does not exist"):
        gp.load_onnx(tmp_path / "missing.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = tiny_onnx_model()
    (tmp_path / "model").mkdir()
    onnx.save(model, tmp_path / "model" / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    g = gp.load_onnx(tmp_path / "model" / "m.onnx")  # inside the folder: fine
    assert len(g.prunable_groups()) == 1
    evil = onnx.load(tmp_path / "model" / "m.onnx", load_external_data=False)
    for init in evil.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes((tmp_path / "model" / "weights.bin").read_bytes())
    onnx.save(evil, tmp_path / "model" / "evil.onnx")
    with pytest.raises(gp.TraceError, match="outside the model's folder"):
        gp.load_onnx(tmp_path / "model" / "evil.onnx")


def test_a_fill_two_layers_share_ties_neither(tmp_path):
    """torch's exporter shares one ones/zeros initializer between unrelated norms (a UNet's GroupNorm as
    Reshape + InstanceNormalization + affine): read as one tensor it tied every layer's channels into one
    group. A repeated-value initializer is one copy per reader; distinct values (a tied weight) stay one."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {f"w{i}": numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"w{i}")
         for i, s in enumerate([(4, 6), (6, 3), (4, 6), (6, 3)], 1)}
    ones = numpy_helper.from_array(np.ones(6, np.float32), "ones")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Mul", ["a", "ones"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["a2"]), helper.make_node("MatMul", ["a2", "w2"], ["ya"]),
             helper.make_node("MatMul", ["x", "w3"], ["b"]), helper.make_node("Mul", ["b", "ones"], ["b1"]),
             helper.make_node("Relu", ["b1"], ["b2"]), helper.make_node("MatMul", ["b2", "w4"], ["yb"]),
             helper.make_node("Add", ["ya", "yb"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              list(w.values()) + [ones])
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    g = gp.load_onnx(str(path))
    sixes = [grp for grp in g.groups if grp.prunable and grp.size == 6]
    assert len(sixes) == 2, g.summary()
    assert {m.name for m in sixes[0].members} & {"w1", "w2"} and {m.name for m in sixes[1].members} & {"w3", "w4"}
