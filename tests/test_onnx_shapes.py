"""Which shapes an ONNX model given no input shapes is analysed and timed at
(graphprune/program/onnx_shapes.py): an image's height and width at a common image size, every
other dynamic dim at 1, and the reviewer's cases that went wrong on the first version."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
import graphprune.frontends.onnx_runtime_rewrites as onnx_runtime_rewrites
import graphprune.program.onnx_program as onnx_program
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.onnx_shapes import TEXT_LENGTH, analysis_tries, image_inputs

RNG = np.random.default_rng(0)


def _w(shape, name, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _save(nodes, inputs, outputs, inits, path, opset: int = 13) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def _tokens(path, out_batch) -> onnx.ModelProto:
    """ids (N, S) -> embedding -> MLP -> y, the output's batch declared ``out_batch``."""
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h"], name="g", axis=0),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="m1"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="m2")]
    return _save(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_batch, "S", 8])],
                 [_w((100, 8), "emb"), _w((8, 32), "w1"), _w((32, 8), "w2")], path, 17)


def test_a_declared_output_batch_of_1_does_not_refuse_the_timing_probe(tmp_path):
    """The timing probe runs a batch of 2; an exporter that wrote the output's batch as 1 must not
    make the analysis at 1 look refused (it runs there)."""
    nodes = [helper.make_node("MatMul", ["h", "w1"], ["a"], name="m1"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="m2")]  # features (N, S, 8): no token ids
    _save(nodes, [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", "S", 8])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", 8])],
          [_w((8, 32), "w1"), _w((32, 8), "w2")], tmp_path / "t.onnx", 17)
    program = OnnxProgram.load(tmp_path / "t.onnx", fuse=True)
    assert program.analysis_dims() == {"h": [1, 1, 8]}
    shapes = [n for n in program.notes if n.startswith("input shapes:")]  # analysed at 1, no size tried after
    assert len(shapes) == 1 and "dims past the batch at 1 (h dim 1 ('S'))" in shapes[0], shapes


def test_only_the_image_takes_the_image_size(tmp_path):
    """An image (N, 3, H, W) beside token ids (N, S): H and W go to 224, S stays at 1."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["gp"], name="gap"),
             helper.make_node("Flatten", ["gp"], ["img"], name="flat"),
             helper.make_node("Gather", ["emb", "ids"], ["te"], name="gemb", axis=0),
             helper.make_node("ReduceMean", ["te"], ["txt"], name="mean", axes=[1], keepdims=0),
             helper.make_node("Add", ["img", "txt"], ["y"], name="join")]
    model = _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                          helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                  [_w((8, 3, 3, 3), "w1"), _w((1000, 8), "emb")], tmp_path / "m.onnx")
    assert image_inputs(model) == {"x": [2, 3]}
    tries = analysis_tries(model, None)
    assert tries.mode == "image" and tries.dims[0] == {"x": [1, 3, 224, 224], "ids": [1, 1]}
    program = OnnxProgram.load(tmp_path / "m.onnx", fuse=True)
    assert program.analysis_dims() == {"x": [1, 3, 224, 224], "ids": [1, 1]}
    assert {k: v.shape for k, v in program.feeds().items()} == {"x": (1, 3, 224, 224), "ids": (1, 1)}


def test_inputs_that_share_a_dim_name_share_its_size(tmp_path):
    """DeepFilterNet's encoder: erb (N, 1, S, 32) reads as a one-channel image, spec (N, 2, S, 96) does not;
    S went to 224 in one and stayed 1 in the other, which ran only because the Add broadcast, so the MACs
    and latency were of inputs the model never sees. Both now take 224, and the note names both."""
    nodes = [helper.make_node("Conv", ["erb", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["spec", "w2"], ["b"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["b"], ["bm"], name="mean", axes=[3], keepdims=1),
             helper.make_node("Add", ["a", "bm"], ["y"], name="join")]
    model = _save(nodes, [helper.make_tensor_value_info("erb", TensorProto.FLOAT, ["N", 1, "S", 32]),
                          helper.make_tensor_value_info("spec", TensorProto.FLOAT, ["N", 2, "S", 96])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "S", 32])],
                  [_w((8, 1, 3, 3), "w1"), _w((8, 2, 3, 3), "w2")], tmp_path / "m.onnx")
    assert image_inputs(model) == {"erb": [2]}
    tries = analysis_tries(model, None)
    assert tries.mode == "image" and tries.dims[0] == {"erb": [1, 1, 224, 32], "spec": [1, 2, 224, 96]}
    program = OnnxProgram.load(tmp_path / "m.onnx", fuse=True)
    program.graph()
    assert program.analysis_dims() == {"erb": [1, 1, 224, 32], "spec": [1, 2, 224, 96]}
    note = tries.note(model, 0, [])
    assert "input_shapes={'erb': (1, 1, 224, 32), 'spec': (1, 2, 224, 96)}" in note, note
    assert "--input-shape erb:1x1x224x32 --input-shape spec:1x2x224x96" in note, note


def test_an_attention_mask_is_not_an_image(tmp_path):
    """(N, 1, S, S) is rank 4, float, one channel: its S is the token ids' S, so it is no image."""
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h"], name="g", axis=0),
             helper.make_node("MatMul", ["h", "wq"], ["q"], name="mq"),
             helper.make_node("Transpose", ["q"], ["qt"], name="t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "qt"], ["s"], name="qk"),
             helper.make_node("Unsqueeze", ["s", "ax1"], ["s4"], name="u"),
             helper.make_node("Add", ["s4", "mask"], ["y"], name="addmask")]
    model = _save(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
                          helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, "S", "S"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "S", "S"])],
                  [_w((100, 16), "emb"), _w((16, 16), "wq"), numpy_helper.from_array(np.array([1], np.int64), "ax1")],
                  tmp_path / "a.onnx")
    assert image_inputs(model) == {}
    tries = analysis_tries(model, None)  # a text: the ids' length and the mask's S, which names it, at 128
    assert tries.mode == "text" and tries.dims[0] == {"ids": [1, TEXT_LENGTH], "mask": [1, 1, TEXT_LENGTH, TEXT_LENGTH]}


def test_token_ids_are_analysed_and_timed_at_a_text_length(tmp_path):
    """Before, a text model's dynamic length was analysed and timed at one token: widths chosen, and a
    speedup reported, for a one-word text. A graph that cannot run at the length falls back to 1."""
    _tokens(tmp_path / "t.onnx", "N")
    program = OnnxProgram.load(tmp_path / "t.onnx", fuse=True)
    assert program.analysis_dims() == {"ids": [1, TEXT_LENGTH]}
    assert {k: v.shape for k, v in program.latency_feeds().items()} == {"ids": (1, TEXT_LENGTH)}
    assert any(f"a common text length ({TEXT_LENGTH} tokens)" in n for n in program.notes)


def test_a_rewrite_taken_back_leaves_no_session_of_it(tmp_path, monkeypatch):
    """After the output check takes the given model back, running the program runs the given model."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", "W"])],
          [_w((8, 3, 3, 3), "w1")], tmp_path / "m.onnx")

    def ruin(model):  # a "rewrite" that changes the function: every weight doubled
        for init in model.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
        return (1, 1)

    monkeypatch.setattr(onnx_runtime_rewrites, "flush_subnormal_weights", ruin)
    program = OnnxProgram.load(tmp_path / "m.onnx", fuse=True)
    program.graph()
    assert any(n.startswith("rewritten for onnxruntime: taken back") for n in program.notes)
    assert sum(n.startswith("input shapes:") for n in program.notes) == 1  # lowered twice, said once
    feeds = program.feeds()
    given = onnx_program.session(onnx.load(str(tmp_path / "m.onnx"))).run(None, feeds)[0]
    np.testing.assert_array_equal(program.run(feeds)[0], given)


def test_a_dynamic_length_left_at_1_says_so(tmp_path):
    """A user's LSTM seizure detector (x: batch, 100, 'time') was analysed and timed at one time step,
    1.7 M MACs where a real recording gives 1 G, without a word; now a note names the dims and the fix."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, "time"])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "time", 3])],
          [_w((6, 16), "w1"), _w((16, 3), "w2")], tmp_path / "s.onnx")
    program = OnnxProgram.load(tmp_path / "s.onnx", fuse=True)
    assert program.analysis_dims() == {"x": [1, 6, 1]}
    note = next(n for n in program.notes if n.startswith("input shapes:"))
    assert "dynamic dims past the batch at 1 (x dim 2 ('time'))" in note and "--input-shape x:1x6x1" in note
    given = OnnxProgram.load(tmp_path / "s.onnx", fuse=True, input_shapes={"x": (1, 6, 50)})
    assert given.analysis_dims() == {"x": [1, 6, 50]} and not any(n.startswith("input shapes:") for n in given.notes)


def test_onnxruntime_errors_are_cut_to_the_node_and_its_cause(tmp_path):
    """A shapes note kept 120 characters of "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code
    returned while running Conv " and lost the node and the cause (openwakeword's melspectrogram)."""
    import onnxruntime as ort

    from graphprune.program.onnx_batches import ort_text

    model = _save([helper.make_node("Conv", ["x", "w1"], ["y"], name="c1")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H2", "W2"])],
                  [_w((8, 3, 5, 5), "w1")], tmp_path / "m.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        sess.run(None, {"x": np.zeros((1, 3, 2, 2), np.float32)}, quiet)  # smaller than the 5x5 kernel
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own type
        raw, text = str(exc), ort_text(exc)
    assert raw.startswith("[ONNXRuntimeError]") and "Status Message:" in raw
    # onnxruntime names the node as its optimiser renamed it (c1 became y_nchwc)
    assert text.startswith("INVALID_ARGUMENT: Conv node '") and "[ONNXRuntimeError]" not in text
    assert text.split("': ", 1)[1] == raw.split("Status Message: ", 1)[1]  # the cause whole


def _features_model(reshaped: bool) -> onnx.ModelProto:
    """x (T, F), both dims dynamic as madmom's converter writes them, into a recurrence whose weight reads 10
    features, through an Unsqueeze (as madmom's networks) and, ``reshaped``, a Reshape first (a path the weight is
    not found by: ONNX shape inference does not check a recurrence's input width, so the graph lowers at any)."""
    rng = np.random.default_rng(0)
    h, f = 12, 10
    inits = {"W": (1, h, f), "R": (1, h, h), "Wout": (h, 3)}
    tensors = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in inits.items()]
    tensors += [numpy_helper.from_array(np.array([1], np.int64), "axes"),
                numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x2"])] if reshaped else []
    nodes += [helper.make_node("Unsqueeze", ["x2" if reshaped else "x", "axes"], ["x3"]),  # (T, 1, F)
              helper.make_node("RNN", ["x3", "W", "R"], ["y"], name="rnn", hidden_size=h),  # (T, 1, 1, H)
              helper.make_node("MatMul", ["y", "Wout"], ["out"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "F"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["T", 1, 1, 3])], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_dynamic_dim_a_weight_fixes_is_analysed_at_that_size(tmp_path):
    """madmom's RNNs declare their features dynamic: analysed at a guessed size (640), the recurrence's tie to
    its weight raised a raw CouplingError (exit 1). The weight it meets says the size: 10."""
    src = tmp_path / "m.onnx"
    onnx.save(_features_model(reshaped=False), src)
    program = OnnxProgram.load(src, fuse=True)
    assert program.analysis_dims() == {"x": [1, 10]}
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.verdict == "PASS" and report.params_after < report.params_before


def test_sizes_that_do_not_fit_at_chosen_shapes_are_a_clear_error(tmp_path):
    """Where no weight is found for the dim (a Reshape first), the sizes tried do not fit: a TraceError that says
    to give the input shapes, not a raw CouplingError (exit 1 from the CLI); given, the model prunes."""
    src = tmp_path / "m.onnx"
    onnx.save(_features_model(reshaped=True), src)
    with pytest.raises(gp.TraceError, match=r"cannot tie dims of sizes \d+ and 10 .*--input-shape"):
        gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, measure_latency=False)
    assert not (tmp_path / "slim.onnx").exists()
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, round_to=1, measure_latency=False,
                           input_shapes={"x": (4, 10)})
    assert report.oracle.verdict == "PASS"


def _frames_model() -> onnx.ModelProto:
    """x (T, F) of frames, both dynamic: a 7-tall convolution over the frames, then a Slice of its output (madmom's
    onset CNN). At T = 1 the convolution's height is negative, and onnx's Slice inference aborts the process."""
    rng = np.random.default_rng(0)
    arr = lambda a, n: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    tensors = [arr(rng.standard_normal((8, 1, 7, 3)).astype(np.float32), "w"), arr(np.zeros(8, np.float32), "b"),
               arr(np.array([0], np.int64), "s"), arr(np.array([-6], np.int64), "e"), arr(np.array([2], np.int64), "ax"),
               arr(np.array([0, 1], np.int64), "ax01"), arr(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Unsqueeze", ["x", "ax01"], ["x4"]),  # (1, 1, T, F)
             helper.make_node("Conv", ["x4", "w", "b"], ["c"], name="conv"),  # (1, 8, T - 6, F - 2)
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Slice", ["r", "s", "e", "ax"], ["sl"], name="slice"),
             helper.make_node("Conv", ["sl", "w2"], ["out"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "F"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, "h", "w"])], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_size_whose_shape_inference_aborts_is_passed_over(tmp_path):
    """At T = 1 onnx's C++ shape inference failed an assertion and aborted the process (exit 134, no message). It
    runs in a child now: the crash is a TraceError, and the analysis goes on to sizes where the frames fit."""
    from graphprune.frontends.onnx_lower import concretize
    with pytest.raises(gp.TraceError, match=r"shape inference crashed \(SIGABRT\) at the input sizes \{'x': \[1, 1\]\}"):
        concretize(_frames_model(), shapes={"x": [1, 1]})
    src = tmp_path / "m.onnx"
    onnx.save(_frames_model(), src)
    report = gp.prune_onnx(src, tmp_path / "slim.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.verdict == "PASS"
    note = next(n for n in report.notes if n.startswith("input shapes:"))
    assert "x 32x32" in note and "the first size that works" in note and "crashed" in note
