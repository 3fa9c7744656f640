"""ONNX outputs past protobuf's 2 GiB keep their weights in external data (graphprune/io/onnx_save.py):
``slim.onnx`` plus ``slim.onnx.data`` beside it, both written or neither. The threshold is lowered
here so that a small model takes the path a 2 GB one takes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import graphprune as gp
from graphprune.io import onnx_export, onnx_save


def _mlp() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8)).eval()
    return model, (torch.randn(4, 32),)


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _external_locations(path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(onnx_save, "EXTERNAL_BYTES", 1)
    monkeypatch.setattr(onnx_export, "EXTERNAL_BYTES", 1)


def test_export_past_the_threshold_writes_the_model_and_its_data_file(tmp_path, small_threshold):
    model, args = _mlp()
    report = gp.export_onnx(model, args, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert _external_locations(tmp_path / "m.onnx") == {"m.onnx.data"}  # found beside the model, by its name
    assert report.max_abs_diff < 1e-4
    with torch.no_grad():
        want = model(*args).numpy()
    np.testing.assert_allclose(_run(tmp_path / "m.onnx", args[0].numpy()), want, rtol=1e-5, atol=1e-5)


def test_pruned_onnx_past_the_threshold_is_external_deterministic_and_equal(tmp_path, monkeypatch):
    model, args = _mlp()
    gp.export_onnx(model, args, tmp_path / "src.onnx")  # under the real threshold: one file
    assert _external_locations(tmp_path / "src.onnx") == set()
    opts = dict(ratio=0.5, round_to=1, measure_latency=False)
    gp.prune_onnx(tmp_path / "src.onnx", tmp_path / "inline.onnx", **opts)
    monkeypatch.setattr(onnx_save, "EXTERNAL_BYTES", 1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        gp.prune_onnx(tmp_path / "src.onnx", tmp_path / name / "slim.onnx", **opts)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["slim.onnx", "slim.onnx.data"]
    for f in ("slim.onnx", "slim.onnx.data"):  # the same input and options: byte-identical files
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert _external_locations(tmp_path / "a" / "slim.onnx") == {"slim.onnx.data"}
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "a" / "slim.onnx", x), _run(tmp_path / "inline.onnx", x))


def test_a_failed_external_save_leaves_neither_file(tmp_path, small_threshold, monkeypatch):

    def half_written(proto, path, **kw):
        with open(f"{path}.data", "wb") as f:  # the data file is written, then the save fails
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", half_written)
    with pytest.raises(OSError, match="disk full"):
        onnx_save.save_onnx(_with_weights(onnx.ModelProto()), tmp_path / "out" / "m.onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def _with_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w"))
    return model
